"""Imports without the garbage collector: it comes back on, and what they made is frozen."""

import gc

import pytest

from pruneflow.tasks.core.imports import imports_without_gc


def test_imports_without_gc_turn_the_collector_back_on_and_freeze_what_they_made():
    frozen = gc.get_freeze_count()
    with pytest.raises(ValueError), imports_without_gc():
        assert not gc.isenabled()
        made = [[] for _ in range(1000)]
        with imports_without_gc():  # an import inside the block (TensorFlow's, in a command's)
            pass
        assert not gc.isenabled()  # the inner block left the collector to the outer one
        raise ValueError("an import failed")
    assert gc.isenabled()
    assert gc.get_freeze_count() >= frozen + len(made)
    gc.unfreeze()  # the rest of the test session collects as usual
