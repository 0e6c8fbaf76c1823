"""Pruning schedules: fill in the run's length, refuse schedules that would not prune, aim at a
target, build TFMOT's."""

from __future__ import annotations

from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.specs.config import ConstantSchedule, PolynomialDecaySchedule, Schedule


def pruning_steps(schedule: Schedule, total_steps: int) -> range:
    """The training steps of a run of `total_steps` at which TFMOT updates the masks.

    TFMOT increments its step counter before checking it, so the steps seen are 1..total_steps;
    a step prunes iff begin <= step <= end (or end == -1) and (step - begin) % frequency == 0.
    """
    last = total_steps if schedule.end_step == -1 else min(schedule.end_step, total_steps)
    first = max(schedule.begin_step, 1)
    offset = (first - schedule.begin_step) % schedule.frequency
    if offset:
        first += schedule.frequency - offset
    return range(first, last + 1, schedule.frequency)


def sparsity_at(schedule: Schedule, step: int) -> float:
    """The sparsity the schedule asks for at `step` (TFMOT's formula)."""
    if isinstance(schedule, ConstantSchedule):
        return schedule.target_sparsity
    progress = (step - schedule.begin_step) / (schedule.end_step - schedule.begin_step)
    progress = min(1.0, max(0.0, progress))
    return schedule.final_sparsity + (schedule.initial_sparsity - schedule.final_sparsity) * (
        1.0 - progress
    ) ** schedule.power


def resolve_schedule(schedule: Schedule, steps_per_epoch: int, epochs: int) -> Schedule:
    """Return the schedule with end_step filled in, refusing one that cannot reach its target.

    An omitted end_step becomes the last step of the run, steps_per_epoch * epochs, at which
    TFMOT prunes (begin_step plus a multiple of frequency), so the final sparsity is reached
    inside the run. A schedule whose pruning steps all fall outside the run (TFMOT's default
    frequency of 100 on a short run) or whose end_step, as written, stops the last pruning
    step short of the final sparsity would leave the model less sparse than asked, silently;
    it is refused here, before any training.

    Raises:
        PruneflowError: naming the schedule field to change.
    """
    total_steps = steps_per_epoch * epochs
    run = f"the run has {total_steps} training steps ({epochs} epochs x {steps_per_epoch} steps)"
    if schedule.end_step is None:
        schedule = schedule.model_copy(update={"end_step": _last_pruning_step(schedule, total_steps, run)})
    steps = pruning_steps(schedule, total_steps)
    if not steps:
        raise PruneflowError(
            f"pruning: no pruning step falls inside the run: {run}, but pruning starts at "
            f"begin_step={schedule.begin_step}, prunes every frequency={schedule.frequency} steps "
            f"and stops at end_step={schedule.end_step}. Lower begin_step or frequency, or train longer."
        )
    reached = sparsity_at(schedule, steps[-1])
    if reached < schedule.final_sparsity - 1e-6:
        raise PruneflowError(
            f"pruning: final_sparsity {schedule.final_sparsity} is reached only at end_step="
            f"{schedule.end_step}, but the last pruning step inside the run is step {steps[-1]} "
            f"(sparsity {reached:.4f}); {run}. Make end_step at most {total_steps} and equal to "
            f"begin_step + a multiple of frequency ({schedule.frequency})."
        )
    return schedule


def _last_pruning_step(schedule: Schedule, total_steps: int, run: str) -> int:
    """Where an omitted end_step goes: the run's last step at which TFMOT prunes (the run's
    last step itself when none does, which resolve_schedule then refuses with its reason).

    Raises:
        PruneflowError: a polynomial decay with a single pruning step in the run, at
            begin_step, where it prunes to initial_sparsity only.
    """
    steps = pruning_steps(schedule.model_copy(update={"end_step": total_steps}), total_steps)
    if not steps:
        return total_steps
    if isinstance(schedule, PolynomialDecaySchedule) and steps[-1] <= schedule.begin_step:
        raise PruneflowError(
            f"pruning: the only pruning step inside the run is step {steps[-1]} (begin_step={schedule.begin_step}, "
            f"frequency={schedule.frequency}); {run}. A polynomial decay needs a later one to go from initial_sparsity "
            "to final_sparsity: lower frequency, train longer, or use a constant schedule."
        )
    return steps[-1]


def at_target(schedule: Schedule, target: float) -> Schedule:
    """The schedule aimed at `target`: same steps and shape, another final sparsity (for a sweep)."""
    if isinstance(schedule, ConstantSchedule):
        return schedule.model_copy(update={"target_sparsity": target})
    return schedule.model_copy(
        update={"final_sparsity": target, "initial_sparsity": min(schedule.initial_sparsity, target)}
    )


def to_tfmot(schedule: Schedule):
    """Build the TFMOT schedule object; the schedule must be resolved (end_step set)."""
    from pruneflow.tasks.core.runtime import tfmot

    if schedule.end_step is None:
        raise ValueError("resolve_schedule() must fill end_step before building the TFMOT schedule")
    if isinstance(schedule, PolynomialDecaySchedule):
        return tfmot.sparsity.keras.PolynomialDecay(
            initial_sparsity=schedule.initial_sparsity,
            final_sparsity=schedule.final_sparsity,
            begin_step=schedule.begin_step,
            end_step=schedule.end_step,
            power=schedule.power,
            frequency=schedule.frequency,
        )
    return tfmot.sparsity.keras.ConstantSparsity(
        target_sparsity=schedule.target_sparsity,
        begin_step=schedule.begin_step,
        end_step=schedule.end_step,
        frequency=schedule.frequency,
    )
