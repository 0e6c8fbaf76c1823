"""Caching and retries: a re-run does only what changed; a failed stage resumes where it stopped."""

import contextlib
import json
import shutil

import pytest

from pruneflow.flows.prune import prune_flow
from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.core.stage import TRAINING_TAG
from pruneflow.tasks.specs.config import parse_config
from tests.helpers.graph import PER_TARGET, PREPARED, STAGES, deployable_files, takes
from tests.helpers.prefect import stage_states, task_runs

# The stages that make, evaluate or time the exported files: what a change of formats reruns.
EXPORTS = takes("export", "exports", "baseline_exports", "pruned_exports")
# The Keras 3 hand-back (it takes the `original` Keras 3 file): for a tf_keras baseline its part of
# the export spec is empty whatever export.formats says, so its key never changes with them.
HAND_BACK = takes("original")
# The int8 layer errors and the float fallback: the tests' configs leave layer_errors off and ask for
# no int8_fallback, so their parts of the spec are empty whatever export.formats says too.
INT8_ANALYSIS = {"quantization_error", "export_fallback_pruned"}


def states(state) -> dict[str, str]:
    return stage_states(state.state_details.flow_run_id)


def run(config_dict):
    state = prune_flow(parse_config(config_dict), return_state=True)
    assert state.is_completed(), state.message
    return state


@contextlib.contextmanager
def gpu_slots():
    """The server given one GPU slot, as `python -m pruneflow.deployments.gpu` gives it, for the block."""
    from prefect import get_client

    from pruneflow.deployments.gpu import ensure_training_limit

    ensure_training_limit(1)
    try:
        yield
    finally:
        with get_client(sync_client=True) as client:
            client.delete_concurrency_limit_by_tag(TRAINING_TAG)


def test_identical_rerun_is_all_cached_and_trains_nothing(prefect_server, config_dict):
    with gpu_slots():
        first = run(config_dict)
        got = states(first)
        assert all(got[stage] == "Completed" for stage in STAGES)
        second = run(config_dict)
    got = states(second)
    assert {stage: got[stage] for stage in STAGES} == {stage: "Cached" for stage in STAGES}
    assert got["publish_report"] == "Completed"  # each run publishes its own report
    assert second.result().pruned == first.result().pruned
    # On a server with GPU slots a training stage takes one (its tag), unless what it would train is stored.
    assert training_tags(first) == {"prune_train": [TRAINING_TAG], "quantize_train": [TRAINING_TAG]}
    assert training_tags(second) == {"prune_train": [], "quantize_train": []}


def training_tags(state) -> dict[str, list[str]]:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
    return {run.name.rsplit("-", 1)[0]: sorted(run.tags) for run in runs if run.name.split("-")[0].endswith("train")}


def test_new_sparsity_reruns_training_and_after_but_not_data_or_baseline(seed, config_dict):
    seed(config_dict)
    config_dict["pruning"] = {**config_dict["pruning"], "target_sparsity": 0.7}
    state = run(config_dict)
    got = states(state)
    assert {s: got[s] for s in PREPARED} == {s: "Cached" for s in PREPARED}
    assert {s: got[s] for s in PER_TARGET} == {s: "Completed" for s in PER_TARGET}
    assert state.result().measured_sparsity == pytest.approx(0.7, abs=0.02)
    # A server without GPU slots has none to give: the trainings ran untagged.
    assert training_tags(state) == {"prune_train": [], "quantize_train": []}


def test_what_shapes_no_artifact_reruns_nothing_even_with_the_data_and_model_moved(
    seed, config_dict, tiny_data, tiny_baseline, tmp_path
):
    seed(config_dict)
    data = shutil.copytree(tiny_data, tmp_path / "moved-data")
    baseline = shutil.copy(tiny_baseline, tmp_path / "renamed-baseline.h5")
    config_dict["dataset"] |= {f"{split}_csv": str(data / f"{split}.csv") for split in ("train", "val", "test")}
    config_dict["model"] = {"baseline": str(baseline), "trust_custom_code": True}
    config_dict["training"] = {**config_dict["training"], "retries": 5, "retry_delay_seconds": 1}
    config_dict["sweep"] = {"targets": [0.9], "max_accuracy_drop": 3.0}
    got = states(run(config_dict))
    assert {s: got[s] for s in STAGES} == {s: "Cached" for s in STAGES}


def test_a_new_batch_size_reruns_what_batches_but_not_the_dataset(seed, config_dict):
    seed(config_dict)
    config_dict["dataset"] = {**config_dict["dataset"], "batch_size": 4}
    got = states(run(config_dict))
    # Before training, the stages that take no batch size (converting a model reads no batches);
    # training and everything after it change.
    unbatched = set(PREPARED) - takes("batch_size")
    assert unbatched >= {"prepare_dataset", "export_baseline"}
    assert {s: got[s] for s in STAGES} == {s: "Cached" if s in unbatched else "Completed" for s in STAGES}


def test_a_new_sanity_tolerance_reruns_the_sanity_checks_only(seed, config_dict):
    seed(config_dict)
    got = states(run({**config_dict, "sanity_tolerance": 0.02}))
    # The pruned model's exports check their files against the sanity report (the baseline's take
    # none); the files they make are the same, so nothing after them reruns.
    checks = takes("tolerance", "sanity") & set(PER_TARGET)
    assert checks >= {"sanity_check", "export_pruned"}
    assert {s: got[s] for s in STAGES} == {s: "Completed" if s in checks else "Cached" for s in STAGES}


def test_export_settings_rerun_the_exports_and_latency_settings_the_latency_only(seed, config_dict):
    seed(config_dict)
    export = {**config_dict["export"], "latency_runs": 7}
    got = states(run({**config_dict, "export": export}))
    assert {s: got[s] for s in STAGES} == {s: "Completed" if s in takes("latency") else "Cached" for s in STAGES}
    # A TFLite format and an ONNX one instead of int8: each conversion stage's formats change.
    formats = ["float32_sparse", "onnx"]
    state = run({**config_dict, "export": {**export, "formats": formats}})
    got = states(state)
    rerun = EXPORTS - HAND_BACK - INT8_ANALYSIS
    assert {s: got[s] for s in STAGES} == {s: "Completed" if s in rerun else "Cached" for s in STAGES}
    files = [(f.model, f.format) for f in state.result().deployables]
    assert set(files) == deployable_files(formats) and len(files) == len(set(files))


def test_another_baseline_content_reruns_everything_after_the_dataset(seed, config_dict, tmp_path):
    from pruneflow.tasks.libs.models import load_model, save_model

    seed(config_dict)
    model = load_model(config_dict["model"]["baseline"])
    weights = model.get_weights()
    weights[-1] = weights[-1] + 0.01  # the last bias, nudged: same architecture, other content
    model.set_weights(weights)
    config_dict["model"] = {"baseline": str(save_model(model, tmp_path / "nudged.h5"))}
    got = states(run(config_dict))
    assert {s: got[s] for s in STAGES} == {s: "Cached" if s == "prepare_dataset" else "Completed" for s in STAGES}


def test_editing_one_image_invalidates_everything_downstream(seed, config_dict, tiny_data, tmp_path):
    data = shutil.copytree(tiny_data, tmp_path / "data")
    for split in ("train", "val", "test"):
        config_dict["dataset"][f"{split}_csv"] = str(data / f"{split}.csv")
    seed(config_dict)
    from pruneflow.tasks.core.runtime import tf

    image = data / "img" / "train_007.jpg"
    pixels = tf.io.decode_jpeg(tf.io.read_file(str(image)))
    tf.io.write_file(str(image), tf.io.encode_jpeg(255 - pixels))  # the same image, inverted
    got = states(run(config_dict))
    assert {s: got[s] for s in STAGES} == {s: "Completed" for s in STAGES}


@pytest.mark.parametrize("damage", ["delete", "corrupt"])
def test_a_damaged_artifact_reruns_its_stage_and_not_what_came_before(seed, config_dict, damage, caplog):
    store = seed(config_dict)
    [folder] = (store.root / "strip").glob("[!.]*")  # the strip stage's artifact
    if damage == "delete":
        shutil.rmtree(folder)
    else:
        (folder / "pruned.h5").write_bytes(b"garbage")
    got = states(run(config_dict))
    before = STAGES[: STAGES.index("strip")]
    assert {s: got[s] for s in before} == {s: "Cached" for s in before}
    assert got["strip"] == "Completed"
    assert store.problem("strip", folder.name) is None
    if damage == "corrupt":
        assert "strip: stored artifact unusable" in caplog.text and "does not match its recorded digest" in caplog.text


def test_transient_failure_is_retried_and_resumes_from_the_checkpoint(prefect_server, config_dict, monkeypatch):
    monkeypatch.setenv("PRUNEFLOW_INJECT_FAULT", "resource_exhausted@1")
    config_dict["training"] = {**config_dict["training"], "epochs": 3, "retries": 2, "retry_delay_seconds": 0}
    state = run(config_dict)
    [(_, train_state, attempts)] = [run for run in task_runs(state.state_details.flow_run_id) if run[0] == "prune_train"]
    assert (train_state, attempts) == ("Completed", 2)
    summary = state.result()
    assert summary.training.resumed_from_epoch == 1  # the retry trained epochs 2 and 3 only
    assert len(json.loads(summary.training.history.read_text())["loss"]) == 3
    assert summary.measured_sparsity == pytest.approx(0.5, abs=0.01)


def test_invalid_data_is_not_retried(prefect_server, config_dict, monkeypatch):
    monkeypatch.setenv("PRUNEFLOW_INJECT_FAULT", "invalid_data@1")
    config_dict["training"] = {**config_dict["training"], "retries": 2, "retry_delay_seconds": 0}
    state = prune_flow(parse_config(config_dict), return_state=True)
    assert state.is_failed()
    with pytest.raises(PruneflowError, match="invalid training data"):
        state.result()
    [(_, train_state, attempts)] = [run for run in task_runs(state.state_details.flow_run_id) if run[0] == "prune_train"]
    assert (train_state, attempts) == ("Failed", 1)


def test_flow_retry_reuses_finished_stages_and_resumes_training(prefect_server, config_dict, monkeypatch):
    # No task retry: the failure reaches the flow, whose retry (the UI's Retry) re-runs the body.
    monkeypatch.setenv("PRUNEFLOW_INJECT_FAULT", "resource_exhausted@1")
    config_dict["training"] = {**config_dict["training"], "epochs": 3, "retries": 0}
    state = prune_flow.with_options(retries=1)(parse_config(config_dict), return_state=True)
    assert state.is_completed(), state.message
    runs = task_runs(state.state_details.flow_run_id)
    by_stage = {}
    for name, state_name, _ in runs:
        by_stage.setdefault(name, []).append(state_name)
    assert {s: by_stage[s] for s in PREPARED} == {s: ["Completed", "Cached"] for s in PREPARED}
    assert by_stage["prune_train"] == ["Failed", "Completed"]
    after = STAGES[STAGES.index("prune_train") + 1 :]
    assert {s: by_stage[s] for s in after} == {s: ["Completed"] for s in after}
