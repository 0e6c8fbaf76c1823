"""Fault injection's own rules: where a fault may fire, and which target's training it hits."""

import pytest

from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.unkeyed.faults import POINTS, fault_callbacks, fault_point, parse_fault


def test_a_fault_fires_at_an_epoch_or_at_a_promotion_point_and_anything_else_is_refused(monkeypatch):
    assert parse_fault("io_error@2") == ("io_error", "2")
    assert parse_fault("hang@promote:linked") == ("hang", "promote:linked")
    for spec in ("io_error@0", "io_error@promote:later", "melt@1", "io_error"):
        with pytest.raises(PruneflowError, match=r"expected <kind>@<epoch> or <kind>@<point>.*promote:aliased"):
            parse_fault(spec)
    monkeypatch.setenv("PRUNEFLOW_INJECT_FAULT", "io_error@promote:linked")
    fault_point(POINTS[0])  # another point: nothing
    with pytest.raises(OSError, match="injected by PRUNEFLOW_INJECT_FAULT at promote:linked"):
        fault_point("promote:linked")
    assert fault_callbacks(0.5) == []  # a promotion fault never fires in training


def test_a_training_fault_hits_only_the_listed_targets(monkeypatch):
    monkeypatch.setenv("PRUNEFLOW_INJECT_FAULT", "invalid_data@1")
    assert len(fault_callbacks(0.3)) == 1  # no list: every target
    monkeypatch.setenv("PRUNEFLOW_FAULT_TARGETS", "0.6,0.8")
    assert fault_callbacks(0.3) == [] and len(fault_callbacks(0.6)) == 1 and len(fault_callbacks(0.8)) == 1
