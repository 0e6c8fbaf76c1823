"""Sweep pieces on their own: target schedules, the gate, and the history's regression check."""

from datetime import datetime, timedelta, timezone

import pandas as pd

from tasks.config import ConstantSchedule, PolynomialDecaySchedule
from tasks.sweep import at_target, regressions, runs_summary


def test_a_target_changes_only_the_final_sparsity():
    constant = ConstantSchedule(target_sparsity=0.8, begin_step=5, end_step=50, frequency=5)
    assert at_target(constant, 0.5) == constant.model_copy(update={"target_sparsity": 0.5})
    decay = PolynomialDecaySchedule(initial_sparsity=0.5, final_sparsity=0.8, end_step=100, frequency=10)
    assert at_target(decay, 0.95).final_sparsity == 0.95 and at_target(decay, 0.95).initial_sparsity == 0.5
    assert at_target(decay, 0.3).initial_sparsity == 0.3  # never start above the target


def history(*runs):
    """Rows as the sweep appends them: (run id, [(target, accuracy, zip bytes, promoted)])."""
    start = datetime(2026, 11, 1, 2, tzinfo=timezone.utc)
    return pd.DataFrame([
        {"flow_run_id": run_id, "started": start + timedelta(days=day), "target": target, "config_digest": digest,
         "accuracy": accuracy, "zip_bytes": size, "promoted": promoted}
        for day, (run_id, rows, *other) in enumerate(runs) for digest in [other[0] if other else "nightly"]
        for target, accuracy, size, promoted in rows
    ])


def test_a_promoted_model_less_accurate_or_larger_than_the_last_is_a_regression():
    runs = runs_summary(history(
        ("mon", [(0.5, 0.97, 1000, False), (0.8, 0.96, 600, True)]),
        ("tue", [(0.5, 0.97, 1000, False), (0.8, 0.958, 600, True)]),  # -0.2 points: within tolerance
        ("wed", [(0.5, 0.95, 1000, True), (0.8, 0.90, 600, False)]),  # larger model promoted
        ("thu", [(0.5, 0.93, 1000, True)]),  # 2 points less accurate
        ("fri", [(0.5, 0.80, 1000, False)]),  # nothing promoted
        ("sat", [(0.5, 0.50, 9000, True)], "someone's manual run of another config"),
        ("sun", [(0.5, 0.93, 1000, True)]),  # compared with thu: fri promoted nothing
    ))
    assert list(runs["target"].fillna(0)) == [0.8, 0.8, 0.5, 0.5, 0, 0.5, 0.5]
    found = regressions(runs, tolerance=0.5)
    assert set(found) == {"wed", "thu", "fri"}
    assert found["wed"] == "accuracy 0.9500, down 0.80 points from 0.9580; size 1,000 B zipped, up from 600 B"
    assert found["thu"].startswith("accuracy 0.9300, down 2.00 points")
    assert found["fri"] == "no model passed the gate (the run before promoted one)"
