"""A baseline that Keras 3 wrote, pruned end to end: translated once, pruned in tf_keras, handed back
as a Keras 3 file that plain Keras loads with the pruned model's outputs and zeros."""

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from pruneflow.flows.cli import main
from pruneflow.flows.prune import prune_flow
from pruneflow.flows.sweep import sweep_flow
from pruneflow.tasks.core.layout import OutputLayout
from pruneflow.tasks.core.store import ArtifactStore
from pruneflow.tasks.libs import keras3
from pruneflow.tasks.specs.config import parse_config
from pruneflow.tasks.specs.formats import FORMATS, KERAS3
from tests.helpers.data import make_config_dict
from tests.helpers.graph import KERAS3_STAGES
from tests.helpers.prefect import stage_states


def test_a_keras_3_baseline_is_pruned_handed_back_as_a_keras_3_file_and_promoted_with_it(
    prefect_server, mlflow_server, keras3_baseline, tiny_data, tmp_path
):
    config = parse_config(make_config_dict(tiny_data, keras3_baseline, tmp_path / "outputs"))
    state = prune_flow(config, return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    assert stage_states(state.state_details.flow_run_id) == {
        stage: "Completed" for stage in ["check_inputs", *KERAS3_STAGES, "publish_report"]
    }
    assert all(t.passed for t in summary.sanity.tensors) and len(summary.sanity.tensors) == 5  # three Conv2D, two Dense

    handed = {(f.model, f.format): f for f in summary.deployables if f.format == KERAS3}
    assert set(handed) == {("baseline", KERAS3), ("pruned", KERAS3)}
    pruned_file = handed[("pruned", KERAS3)]
    assert pruned_file.path.name == FORMATS[KERAS3].file and pruned_file.agreement == 1.0
    assert pruned_file.accuracy == pytest.approx(summary.pruned.accuracy)
    kernels = [t for e in summary.exports for f in e.files if f.format == KERAS3 for t in f.sparsity]
    assert len(kernels) == 5 and all(t.passed and t.sparsity >= 0.49 for t in kernels)
    assert keras3.written_by_keras3(pruned_file.path)
    assert KERAS3 in (summary.run_dir / "summary.json").read_text()

    # A sweep of the same target, with no TFLite file, reuses every stage but the exports, the
    # translation included, and promotes the Keras 3 file (the smallest left) beside the Keras
    # model, registered with it. The next sweep measures that champion again, in Keras 3.
    sweep = parse_config({
        **make_config_dict(tiny_data, keras3_baseline, tmp_path / "outputs"),
        "export": {"formats": []},
        # Size decides: the same tiny file timed twice differs by more than 10 % on a busy machine.
        "sweep": {"targets": [0.5], "max_accuracy_drop": 100.0, "min_sparsity": 0.0, "champion_min_speedup": 0.99},
        "registry": {"tracking_uri": mlflow_server, "experiment": "keras3", "model_name": "keras3"},
    })
    outcome = sweep_flow(sweep)
    assert outcome.decision.promote and outcome.chosen[1].format == KERAS3, outcome.decision
    store = ArtifactStore(root=config.output_root / "artifacts")
    assert len([entry for entry in (store.root / "translate_baseline").iterdir() if not entry.name.startswith(".")]) == 1
    promoted = OutputLayout(root=config.output_root).promoted
    assert {entry.name for entry in promoted.iterdir()} == {"model.keras", "model.h5", "config.json", "metrics.json"}
    metrics = json.loads((promoted / "metrics.json").read_text())
    assert metrics["keras3"]["file"] == "model.keras" and metrics["keras3"]["accuracy"] == pytest.approx(
        summary.pruned.accuracy)
    assert keras3.written_by_keras3(promoted / "model.keras")
    from mlflow import MlflowClient

    registry = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    (version,) = registry.search_model_versions("name = 'keras3'")
    assert {f.path for f in registry.list_artifacts(version.run_id, "promoted")} == {
        f"promoted/{name}" for name in ("model.keras", "model.h5", "config.json", "metrics.json")
    }
    version_folder = promoted.resolve().name
    again = sweep_flow(sweep)
    champion = again.decision.champion
    assert (champion.format, champion.version) == (KERAS3, version_folder)
    assert champion.accuracy == pytest.approx(summary.pruned.accuracy)
    assert champion.zip_bytes == outcome.chosen[1].zip_bytes and not again.decision.promote

    # In a fresh process, plain Keras 3 loads the file; it holds the zeros and gives the tf_keras
    # pruned model's outputs.
    from pruneflow.tasks.libs.models import load_model

    batch = np.random.default_rng(0).uniform(0, 1, (8, 16, 16, 3)).astype("float32")
    np.save(tmp_path / "batch.npy", batch)
    np.save(tmp_path / "expected.npy", load_model(summary.pruned_model)(batch, training=False).numpy())
    script = (
        "import sys, numpy as np, keras\n"
        "m = keras.saving.load_model(sys.argv[1])\n"
        "print(float(np.max(np.abs(np.asarray(m(np.load(sys.argv[2]))) - np.load(sys.argv[3])))))\n"
        "k = [w.numpy() for l in m.layers for w in l.weights if w.name == 'kernel']\n"
        "print(min(float(np.mean(v == 0)) for v in k), len(k))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(pruned_file.path), str(tmp_path / "batch.npy"), str(tmp_path / "expected.npy")],
        capture_output=True, text=True, check=True,
    )
    difference, kernel_line = done.stdout.strip().splitlines()[-2:]
    assert float(difference) <= keras3.OUTPUT_ATOL
    least, count = kernel_line.split()
    assert float(least) >= 0.49 and int(count) == 5


def test_sensitivity_2_by_4_and_quantization_aware_training_work_on_a_keras_3_baseline(
    prefect_server, keras3_baseline, tiny_data, tmp_path
):
    # Sensitivity: each prunable layer of the translated model measured, its proposal written.
    config = {**make_config_dict(tiny_data, keras3_baseline, tmp_path / "outputs"), "sensitivity": {"sparsities": [0.5]}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["sensitivity", str(path), "--target", "0.3"]) == 0
    (folder,) = [p for p in (tmp_path / "outputs" / "runs").iterdir() if (p / "sensitivity.json").is_file()]
    report = json.loads((folder / "sensitivity.json").read_text())
    assert len(report["layers"]) == 5 and report["proposal"]["reached"] >= 0.3  # three Conv2D, two Dense

    # 2:4 on every pruned layer (the first convolution, 3 input channels, left dense), then
    # quantization-aware training into int8: the zeros survive in the int8 file and in the Keras 3
    # file handed back.
    structured = {**config, "layers": {"m_by_n": [2, 4], "keep_first_conv": True},
                  "export": {**config["export"], "formats": ["int8_qat"], "qat_epochs": 1}}
    summary = prune_flow(parse_config(structured))
    assert all(t.passed and t.sparsity == pytest.approx(0.5, abs=0.01) for t in summary.sanity.tensors)
    assert len(summary.sanity.tensors) == 4
    files = {f.format: f for f in summary.deployables if f.model == "pruned"}
    assert {"int8_qat", KERAS3} <= set(files) and files[KERAS3].agreement == 1.0
    kernels = [t for e in summary.exports for f in e.files if f.format in ("int8_qat", KERAS3) for t in f.sparsity]
    assert len(kernels) == 8 and all(t.passed for t in kernels)
