"""The sweep's search: Optuna proposes the points, each one the cached graph; the Pareto front."""

import json

import pytest

from pruneflow.flows.sweep import sweep_flow
from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.decide.gate import candidates, pareto_front
from pruneflow.tasks.libs.outcome import Point
from pruneflow.tasks.specs.config import parse_config
from tests.helpers.prefect import task_runs

# A grid of three points, fewer than the budget: the search prunes all three. Two of them (SWEPT) are
# stored by the session's sweep (a trial without a stop rule is the grid's graph): one model is trained.
SEARCH = {"trials": 4, "startup_fraction": 0.5, "sparsity": [0.3, 0.6], "step": 0.15, "stop_after_epochs": None}


def beats(a, b) -> bool:
    """Whether file `a` dominates file `b`: at least as accurate and as small, better in one."""
    return a.accuracy >= b.accuracy and a.zip_bytes <= b.zip_bytes and (a.accuracy > b.accuracy or a.zip_bytes < b.zip_bytes)


def trainings(root) -> set[str]:
    """The prune_train artifacts in a store: one folder per point trained."""
    return {p.name for p in (root / "artifacts" / "prune_train").iterdir() if not p.name.startswith(".")}


def test_a_search_returns_a_front_no_file_beats_and_its_rerun_is_served_from_the_cache(
    prefect_server, seed_sweep, config_dict
):
    config_dict = {**config_dict, "sweep": {"search": SEARCH, "max_accuracy_drop": 100.0, "min_sparsity": 0.0}}
    seed_sweep(config_dict)
    config = parse_config(config_dict)
    seeded = trainings(config.output_root)
    state = sweep_flow(config, return_state=True)
    assert state.is_completed(), state.message
    outcome = state.result()
    trials = outcome.trials
    assert [t.number for t in trials] == list(range(1, len(trials) + 1))
    completed = [t for t in trials if t.outcome == "completed"]
    assert {t.outcome for t in trials} <= {"completed", "repeat"}
    # Each point once (a repeat is answered from its first trial), every point of the grid: the budget is larger.
    assert [t.point for t in completed] == list(dict.fromkeys(t.point for t in trials))
    assert sorted(t.point for t in completed) == [Point(0.3), Point(0.45), Point(0.6)]
    assert [r.point for r in outcome.results] == [Point(0.3), Point(0.45), Point(0.6)]
    assert len(seeded) == 2 and len(trainings(config.output_root)) == 3  # 0.3 and 0.6 stored: only 0.45 trained
    for trial in trials:
        result = next(r for r in outcome.results if r.point == trial.point)
        assert trial.val_accuracy == result.training.final_val_accuracy
        assert trial.zip_bytes == min(f.zip_bytes for _, f in candidates([result]))

    files = candidates(outcome.results)
    front = pareto_front(outcome.results)
    assert front and all(not beats(other, f) for _, f in front for _, other in files)
    on_front = [f for _, f in front]
    assert all(any(beats(f, other) for f in on_front) for _, other in files if other not in on_front)
    assert outcome.chosen in front  # the gate chooses from the front: the smallest file, all pass here
    [run_dir] = (config.output_root / "runs").iterdir()
    recorded = json.loads((run_dir / "sweep.json").read_text())
    assert len(recorded["front"]) == len(front) and [t["outcome"] for t in recorded["trials"]] == [t.outcome for t in trials]
    assert f"Search: {len(trials)} trials; 3 points pruned (0 stopped early)" in (run_dir / "sweep.md").read_text()

    # The same search again: the same points proposed, every training served from the store.
    before = trainings(config.output_root)
    again = sweep_flow(config, return_state=True)
    assert again.is_completed(), again.message
    assert [t.point for t in again.result().trials] == [t.point for t in trials]
    assert trainings(config.output_root) == before
    states = [state for name, state, _ in task_runs(again.state_details.flow_run_id) if name == "prune_train"]
    assert states and set(states) == {"Cached"}


def test_search_settings_that_cannot_work_are_refused_with_the_field(config_dict):
    with pytest.raises(PruneflowError, match="stop_after_epochs is 2, but training.epochs is 2"):
        parse_config({**config_dict, "sweep": {"search": {"stop_after_epochs": 2}}})
    with pytest.raises(PruneflowError, match=r"sparsity \[0.9, 0.5\]: the lowest value comes first"):
        parse_config({**config_dict, "sweep": {"search": {"sparsity": [0.9, 0.5]}}})


def test_a_stopped_trial_is_told_as_pruned_and_reported_with_its_epoch(tmp_path):
    import optuna

    from pruneflow.flows.search import describe, record
    from pruneflow.tasks.libs.artifacts import TrainedModel
    from pruneflow.tasks.libs.outcome import Point, StoppedTarget
    from pruneflow.tasks.report.summary import render_search

    study = optuna.create_study(directions=["maximize", "minimize"])
    training = TrainedModel(folder=tmp_path, epochs=1, resumed_from_epoch=0, steps=5, seconds=1.0,
                            final_val_accuracy=0.5, stopped_after_epoch=1, reference_val_accuracy=1.0)
    stopped = record(study, study.ask(), 1, Point(0.9), StoppedTarget(point=Point(0.9), training=training), repeat=False)
    failed = record(study, study.ask(), 2, Point(0.8), RuntimeError("out of memory"), repeat=False)
    assert [t.state.name for t in study.trials] == ["PRUNED", "FAIL"]
    assert (stopped.outcome, stopped.stopped_after_epoch, stopped.val_accuracy) == ("stopped", 1, 0.5)
    assert failed.outcome == "failed" and failed.val_accuracy is None
    text = render_search([stopped, failed])
    assert text.startswith("Search: 2 trials; 1 points pruned (1 stopped early), 0 proposed again, 1 failed.")
    assert "| stopped after epoch 1 " in text
    again = record(study, study.ask(), 3, Point(0.9), StoppedTarget(point=Point(0.9), training=training), repeat=True)
    assert (again.outcome, again.stopped_after_epoch) == ("repeat", 1)  # proposed again: not counted as pruned twice
    text = render_search([stopped, failed, again])
    assert text.startswith("Search: 3 trials; 1 points pruned (1 stopped early), 1 proposed again")
    assert "| repeat (stopped after epoch 1) " in text
    assert [describe(t) for t in (stopped, failed, again)] == [
        "Trial 1: sparsity 0.9: stopped after epoch 1, val accuracy 0.5000 out of the gate's reach",
        "Trial 2: sparsity 0.8: failed",
        "Trial 3: sparsity 0.9: stopped after epoch 1, val accuracy 0.5000 out of the gate's reach (proposed "
        "before: not run again)",
    ]


def test_proposals_fall_on_the_search_grid_within_its_ranges():
    import optuna

    from pruneflow.flows.search import grid_size, propose
    from pruneflow.tasks.specs.config import SearchConfig

    search = SearchConfig(sparsity=(0.5, 0.9), channel_fraction=(0.0, 0.25), step=0.1)
    assert grid_size(search) == 5 * 3
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    points = {propose(study.ask(), search) for _ in range(200)}
    assert {p.target for p in points} == {0.5, 0.6, 0.7, 0.8, 0.9}  # both ends included, nothing between steps
    assert {p.channels for p in points} == {0.0, 0.1, 0.2}  # 0.25 is not on the grid: 0.2 is its last step
