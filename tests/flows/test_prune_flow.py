"""The pruning flow end to end on tiny real data, against a real (temporary) Prefect server."""

import json

import pytest

from pruneflow.flows.prune import prune_flow
from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.core.store import ArtifactStore
from pruneflow.tasks.report.summary import ARTIFACT_KEY, RunSummary
from pruneflow.tasks.specs.config import parse_config
from pruneflow.tasks.specs.formats import KERAS, display_name
from pruneflow.tasks.unkeyed.progress import PROGRESS_KEY
from tests.helpers.graph import STAGES, deployable_files
from tests.helpers.prefect import artifacts_of, stage_states


def test_flow_prunes_strips_checks_measures_and_reports(prefect_server, config_dict):
    # The default formats, and the two that keep int8's accuracy: a float fallback and 16x8.
    config_dict["export"]["formats"] = ["float32", "float32_sparse", "int8", "int8_sparse", "int8_fallback", "int16x8"]
    config_dict["export"]["layer_errors"] = True
    config = parse_config(config_dict)
    state = prune_flow(config, return_state=True)
    assert state.is_completed(), state.message
    summary: RunSummary = state.result()
    flow_run_id = state.state_details.flow_run_id

    assert stage_states(flow_run_id) == {stage: "Completed" for stage in ["check_inputs", *STAGES, "publish_report"]}
    assert summary.schedule.end_step == 10  # derived: ceil(40 / 8) * 2 epochs
    assert summary.measured_sparsity == pytest.approx(0.5, abs=0.01)
    assert all(t.passed for t in summary.sanity.tensors) and len(summary.sanity.tensors) == 3
    assert summary.sizes.pruned.zip_bytes < summary.sizes.baseline.zip_bytes
    assert summary.sizes.pruned.nonzero_weights < summary.sizes.baseline.nonzero_weights
    assert summary.baseline.examples == summary.pruned.examples == 12
    assert summary.baseline.accuracy >= 0.9
    assert set(summary.stage_seconds) == {"check_inputs", *STAGES, "report"}

    on_disk = json.loads((summary.run_dir / "summary.json").read_text())
    assert on_disk == json.loads(summary.model_dump_json())
    assert summary.run_dir.parent == config.output_root / "runs"
    store = ArtifactStore(root=config.output_root / "artifacts")
    for stage in STAGES:  # every stage stored one intact, content-addressed folder
        [folder] = [entry for entry in (store.root / stage).iterdir() if not entry.name.startswith(".")]
        assert {entry.name for entry in (store.root / stage).glob(".*")} == {f".lock-{folder.name}"}, stage
        assert store.problem(stage, folder.name) is None, stage
    assert summary.pruned_model == store.root / "strip" / summary.pruned_model.parent.name / "pruned.h5"
    for produced in ("manifest.parquet", "labels.json", "train.tfrecord", "test.tfrecord"):
        assert list((store.root / "prepare_dataset").glob(f"*/{produced}")), produced
    assert list((store.root / "prune_train").glob("*/logs/metrics/events.out.tfevents.*"))
    assert not list(store.root.rglob(".tmp-*")) and not list(store.root.rglob(".work-*")), "scratch left behind"

    artifacts = artifacts_of(flow_run_id)
    assert "test accuracy" in artifacts[ARTIFACT_KEY].data
    assert f"{summary.sizes.zip_ratio:.2f}x smaller" in artifacts[ARTIFACT_KEY].data
    assert f"tensorboard --logdir {summary.training.tensorboard_logs}" in artifacts[ARTIFACT_KEY].data
    progress = artifacts[PROGRESS_KEY]  # updated at each epoch end while prune_train ran
    assert (progress.type, progress.data) == ("progress", 100.0)
    assert progress.description.startswith("Prune-training: epoch 2 of 2, val accuracy ")
    table = json.loads(artifacts[f"{ARTIFACT_KEY}-table"].data)  # table artifacts are stored as JSON
    assert [row["metric"] for row in table][:2] == ["test accuracy", "test loss"]

    # The deployable files: the Keras .h5 and every TFLite format of the pruned model, the
    # dense ones of the baseline; each measured on the file itself and timed.
    files = [(f.model, f.format) for f in summary.deployables]
    assert set(files) == deployable_files(config.export.formats) and len(files) == len(set(files))
    first_pruned = [model for model, _ in files].index("pruned")  # the baseline's files, then the pruned model's
    assert files[0] == ("baseline", KERAS) and files[first_pruned] == ("pruned", KERAS)  # each model's .h5 first
    assert all(model == "pruned" for model, _ in files[first_pruned:])
    for file in summary.deployables:
        assert file.path.stat().st_size == file.raw_bytes, file.format
        assert 0 < file.latency_median_ms <= file.latency_p90_ms and 0 <= file.accuracy <= 1
    pruned = {f.format: f for f in summary.deployables if f.model == "pruned"}
    assert pruned["float32"].agreement == pruned["float32_sparse"].agreement == 1.0
    assert pruned["float32"].accuracy == pytest.approx(summary.pruned.accuracy)
    assert pruned["float32_sparse"].raw_bytes < pruned["float32"].raw_bytes
    assert pruned["int8"].zip_bytes < pruned["float32"].zip_bytes and pruned["int8"].zip_ratio > summary.sizes.zip_ratio
    assert all(t.sparsity >= 0.49 for e in summary.exports for f in e.files for t in f.sparsity)
    for batch in (1, 32):  # each file timed at batch 1 and at export.latency_batch
        assert len([t for t in summary.latency.timings if t.batch == batch]) == len(files), batch
    assert summary.latency.machine
    assert "XNNPACK's sparse kernels cannot apply" in summary.latency.sparse_kernels
    rows = json.loads(artifacts[f"{ARTIFACT_KEY}-files"].data)
    assert [row["format"] for row in rows] == [display_name(fmt) for _, fmt in files]
    assert f"{pruned['int8'].zip_bytes:,} ({pruned['int8'].zip_ratio:.2f}x)" in artifacts[ARTIFACT_KEY].data
    # The int8 file's error by layer: every quantized op of the model, worst first, in the report and plotted.
    errors = summary.quantization_errors
    assert errors.images == 12 and {e.op for e in errors.layers} >= {"CONV_2D", "FULLY_CONNECTED"}
    assert [e.rmse for e in errors.layers] == sorted((e.rmse for e in errors.layers), reverse=True)
    assert f"| {errors.layers[0].layer} " in artifacts[ARTIFACT_KEY].data.split("## int8 error by layer")[1]
    assert (summary.run_dir / "layer_errors.png").stat().st_size > 0
    # The int8 calibration stated; the fallback file's float layers named, with the accuracies that chose them.
    assert "int8 calibrated on 16 training images, 8 per class of 2 (a class-balanced draw, seed 0)." \
        in artifacts[ARTIFACT_KEY].data
    fallback = next(f.fallback for e in summary.exports for f in e.files if f.format == "int8_fallback")
    assert fallback.rule == "auto, within 0.5 points" and fallback.reference - fallback.accuracy <= 0.005
    assert f"TFLite int8, float fallback keeps {', '.join(fallback.layers) or 'no layer'}" in artifacts[ARTIFACT_KEY].data
    assert pruned["int16x8"].agreement >= 0.9 and pruned["int8_fallback"].accuracy > 0


def test_bad_data_fails_the_input_check_before_any_stage(prefect_server, config_dict, tiny_data, tmp_path):
    (tmp_path / "val.csv").write_text("filename,label\n" + f"{tiny_data / 'img' / 'val_000.jpg'},unknown\n")
    config_dict["dataset"]["val_csv"] = str(tmp_path / "val.csv")
    state = prune_flow(parse_config(config_dict), return_state=True)
    assert state.is_failed()
    with pytest.raises(PruneflowError, match="label\\(s\\) unknown never appear in the train split"):
        state.result()
    assert stage_states(state.state_details.flow_run_id) == {"check_inputs": "Failed"}


def test_unreachable_schedule_is_refused_before_any_training(prefect_server, config_dict):
    config_dict["pruning"] = {"kind": "constant", "target_sparsity": 0.8, "frequency": 100}
    state = prune_flow(parse_config(config_dict), return_state=True)
    assert state.is_failed()
    with pytest.raises(PruneflowError, match="no pruning step falls inside the run"):
        state.result()
    assert stage_states(state.state_details.flow_run_id) == {"check_inputs": "Failed"}
    assert not (parse_config(config_dict).output_root / "artifacts" / "prune_train").exists()  # nothing trained


def test_prune_training_progress_shows_in_the_ui_while_it_runs(prefect_server, config_dict, tmp_path):
    """A run held at the end of its first epoch (of 2) shows 50% in its progress artifact, on the server."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    from tests.flows.test_faults import Cli, write_config

    def latest_progress():
        with get_client(sync_client=True) as client:
            return client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[PROGRESS_KEY])), sort=ArtifactSort.CREATED_DESC,
                limit=1,
            )[0]

    release = tmp_path / "release"
    run = Cli(write_config(config_dict, tmp_path), PRUNEFLOW_INJECT_FAULT="wait@1", PRUNEFLOW_FAULT_RELEASE=str(release))
    try:
        run.wait_for("pruneflow: waiting")
        progress = latest_progress()
        assert progress.data == 50.0 and progress.description.startswith("Prune-training: epoch 1 of 2")
        release.touch()
        assert run.finish() == 0, run.output[-3000:]
    finally:
        run.stop()
    assert latest_progress().data == 100.0
