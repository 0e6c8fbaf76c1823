"""Schedules: the derived end_step, and refusing schedules that would not reach their target."""

import pytest

from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.libs.schedule import pruning_steps, resolve_schedule, sparsity_at, to_tfmot
from pruneflow.tasks.specs.config import ConstantSchedule, PolynomialDecaySchedule


def test_omitted_end_step_is_the_runs_last_step():
    # ceil(n_train / batch) * epochs, e.g. 3500 images, batch 32, 6 epochs
    resolved = resolve_schedule(ConstantSchedule(target_sparsity=0.5), steps_per_epoch=110, epochs=6)
    assert resolved.end_step == 660


@pytest.mark.parametrize("kind", [ConstantSchedule, PolynomialDecaySchedule])
def test_omitted_end_step_is_the_last_pruning_step_so_the_final_sparsity_is_reached(kind):
    """2 epochs of 58 steps, pruning every 10: the last pruning step is 110, not 116."""
    schedule = kind(frequency=10, **({"target_sparsity": 0.7} if kind is ConstantSchedule else {"final_sparsity": 0.7}))
    resolved = resolve_schedule(schedule, steps_per_epoch=58, epochs=2)
    assert resolved.end_step == 110 and list(pruning_steps(resolved, 116))[-1] == 110
    assert sparsity_at(resolved, 110) == pytest.approx(0.7)
    with pytest.raises(PruneflowError, match="final_sparsity 0.7 is reached only at end_step=116"):
        resolve_schedule(PolynomialDecaySchedule(final_sparsity=0.7, frequency=10, end_step=116), 58, 2)  # as written


def test_a_polynomial_decay_with_one_pruning_step_is_refused():
    schedule = PolynomialDecaySchedule(final_sparsity=0.7, begin_step=10, frequency=10)
    with pytest.raises(PruneflowError, match=r"the only pruning step inside the run is step 10 .*constant schedule"):
        resolve_schedule(schedule, steps_per_epoch=6, epochs=3)
    assert resolve_schedule(ConstantSchedule(target_sparsity=0.7, begin_step=10, frequency=10), 6, 3).end_step == 10


def test_explicit_end_step_is_kept():
    schedule = PolynomialDecaySchedule(final_sparsity=0.8, end_step=330, frequency=10)
    assert resolve_schedule(schedule, 110, 6).end_step == 330


def test_pruning_steps_follow_tfmot_rule():
    # Steps seen are 1..total; step 0 never prunes.
    assert list(pruning_steps(ConstantSchedule(target_sparsity=0.5, end_step=-1, frequency=3), 10)) == [3, 6, 9]
    assert list(pruning_steps(ConstantSchedule(target_sparsity=0.5, begin_step=4, end_step=8, frequency=2), 20)) == [4, 6, 8]


def test_default_tfmot_frequency_on_a_short_run_is_refused():
    schedule = ConstantSchedule(target_sparsity=0.8, frequency=100)
    with pytest.raises(PruneflowError, match="no pruning step falls inside the run: the run has 60 training steps"):
        resolve_schedule(schedule, steps_per_epoch=20, epochs=3)


def test_begin_step_after_the_run_is_refused():
    with pytest.raises(PruneflowError, match="begin_step=500"):
        resolve_schedule(ConstantSchedule(target_sparsity=0.5, begin_step=500), 10, 2)


def test_polynomial_decay_that_stops_short_of_final_sparsity_is_refused():
    # end_step beyond the run: the last pruning step only reaches part of the way.
    schedule = PolynomialDecaySchedule(initial_sparsity=0.2, final_sparsity=0.8, end_step=1000)
    with pytest.raises(PruneflowError, match="final_sparsity 0.8 is reached only at end_step=1000"):
        resolve_schedule(schedule, 10, 5)
    # end_step inside the run but not on a pruning step (frequency 7 from 0 skips 50).
    off_grid = PolynomialDecaySchedule(final_sparsity=0.8, end_step=50, frequency=7)
    with pytest.raises(PruneflowError, match="multiple of frequency"):
        resolve_schedule(off_grid, 10, 6)


def test_sparsity_at_matches_tfmot():
    from pruneflow.tasks.core.runtime import tf

    schedule = PolynomialDecaySchedule(initial_sparsity=0.1, final_sparsity=0.9, begin_step=5, end_step=105, power=2)
    tfmot_schedule = to_tfmot(schedule)
    for step in (5, 17, 55, 104, 105, 200):
        _, expected = tfmot_schedule(tf.constant(step, dtype=tf.int64))
        assert sparsity_at(schedule, step) == pytest.approx(float(expected), abs=1e-6)


def test_to_tfmot_needs_a_resolved_schedule():
    with pytest.raises(ValueError, match="resolve_schedule"):
        to_tfmot(ConstantSchedule(target_sparsity=0.5))


def test_to_tfmot_carries_every_parameter():
    built = to_tfmot(ConstantSchedule(target_sparsity=0.6, begin_step=2, end_step=-1, frequency=5)).get_config()
    assert built["config"] == {"target_sparsity": 0.6, "begin_step": 2, "end_step": -1, "frequency": 5}


def test_a_sweep_target_changes_only_the_final_sparsity():
    from pruneflow.tasks.libs.schedule import at_target

    constant = ConstantSchedule(target_sparsity=0.8, begin_step=5, end_step=50, frequency=5)
    assert at_target(constant, 0.5) == constant.model_copy(update={"target_sparsity": 0.5})
    decay = PolynomialDecaySchedule(initial_sparsity=0.5, final_sparsity=0.8, end_step=100, frequency=10)
    assert at_target(decay, 0.95).final_sparsity == 0.95 and at_target(decay, 0.95).initial_sparsity == 0.5
    assert at_target(decay, 0.3).initial_sparsity == 0.3  # never start above the target
