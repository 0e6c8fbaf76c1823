"""Channel pruning in a run: the baseline narrowed, fine-tuned under the schedule, magnitude-pruned,
exported and measured like any other model."""

import json

import pytest

from pruneflow.flows.prune import prune_flow
from pruneflow.tasks.report.summary import ARTIFACT_KEY
from pruneflow.tasks.libs.models import load_model
from pruneflow.tasks.specs.config import parse_config
from tests.helpers.data import make_config_dict
from tests.helpers.graph import CHANNEL_STAGES, deployable_files
from tests.helpers.prefect import artifacts_of, stage_states


def test_a_run_removes_channels_then_prunes_the_narrowed_model_and_measures_it(prefect_server, config_dict):
    config = parse_config({**config_dict, "channel_pruning": {"fraction": 0.5}})
    state = prune_flow(config, return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    assert stage_states(state.state_details.flow_run_id) == {
        stage: "Completed" for stage in ["check_inputs", *CHANNEL_STAGES, "publish_report"]
    }
    baseline, pruned = load_model(config.model.baseline), load_model(summary.pruned_model)
    widths = {layer.name: layer.kernel.shape[-1] for layer in pruned.layers if hasattr(layer, "kernel")}
    assert widths == {
        layer.name: layer.kernel.shape[-1] // 2 if layer is not baseline.layers[-1] else layer.kernel.shape[-1]
        for layer in baseline.layers if hasattr(layer, "kernel")
    }
    channels = summary.channels
    assert channels.params_ratio < 0.6 and channels.flops_ratio < 0.6
    assert all(t.passed for t in summary.sanity.tensors)
    assert summary.sizes.pruned.raw_bytes < summary.sizes.baseline.raw_bytes / 2

    # Timed at batch 1 and at the larger batch, each file against the baseline's in its format;
    # the pruned model's FLOPs ratio beside its speed-ups.
    files = {(d.model, d.format): d for d in summary.deployables}
    assert set(files) == deployable_files(["int8"])
    for (model, fmt), file in files.items():
        timing = summary.latency.batched(model, fmt)
        assert (file.batch, file.batch_median_ms) == (32, timing.median_ms) and timing.runs == 5
        assert file.batch_speedup == summary.latency.batched("baseline", fmt).median_ms / timing.median_ms
        assert file.flops_ratio == (channels.flops_ratio if model == "pruned" else 1.0)
    report = artifacts_of(state.state_details.flow_run_id)[ARTIFACT_KEY].data
    assert "| batch 32 speed-up |" in report.replace("  ", " ").replace("  ", " ")
    [hidden] = [layer for layer in baseline.layers if getattr(layer, "units", 0) == 32]
    assert f"| {hidden.name} " in report and "| 32 -> 16 " in report  # the hidden Dense layer, halved
    assert f"{channels.flops_ratio:.2f}x its FLOPs" in report
    assert "the model's output (the classifier's classes)" in report  # the classifier, left whole


def test_channels_combine_with_2_by_4_sparsity_and_quantization_aware_training_on_a_keras_3_baseline(
    prefect_server, keras3_baseline, tiny_data, tmp_path
):
    config = parse_config(make_config_dict(
        tiny_data, keras3_baseline, tmp_path / "outputs", channel_pruning={"fraction": 0.4},
        layers={"m_by_n": [2, 4], "keep_first_conv": True}, export={"formats": ["int8_qat"], "latency_batch": 1},
    ))
    state = prune_flow(config, return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    pruned = [g for g in summary.channels.plan.groups if g.removed]
    assert pruned and all(len(g.kept) % 4 == 0 for g in pruned)  # the next layers' inputs fit 2:4
    assert summary.sanity.structure == "2:4 (m_by_n)" and all(t.passed and not t.structure_violations for t in summary.sanity.tensors)
    # The QAT file, and no Keras 3 file of the pruned model: its shapes are not the baseline's.
    assert {(d.model, d.format) for d in summary.deployables if d.model == "pruned"} == {
        ("pruned", "keras_h5"), ("pruned", "int8_qat")
    }
    assert summary.deployable("int8_qat").agreement >= 0.9  # the int8 file computes what its QAT model does


def test_a_sweep_over_channel_fractions_alone_and_with_sparsity_promotes_within_the_gate(prefect_server, config_dict):
    from pruneflow.flows.sweep import sweep_flow
    from pruneflow.tasks.decide.history import read_history, runs_summary

    config = parse_config({**config_dict, "sweep": {
        "targets": [0.0, 0.5], "channel_fractions": [0.5], "max_accuracy_drop": 100.0, "min_sparsity": 0.5,
    }, "export": {**config_dict["export"], "latency_batch": 1}})
    state = sweep_flow(config, return_state=True)
    assert state.is_completed(), state.message
    results = state.result().results
    assert [r.point for r in results] == [(0.0, 0.5), (0.5, 0.5)]
    assert [r.measured_sparsity for r in results] == pytest.approx([0.0, 0.5], abs=0.01)
    assert all(r.channels.params_ratio < 0.6 for r in results)
    # Channels alone pass the gate below min_sparsity: their gain is in speed.
    assert state.result().chosen is not None
    promoted = json.loads((config.output_root / "promoted" / "metrics.json").read_text())
    assert promoted["channel_fraction"] == 0.5
    promoted_config = json.loads((config.output_root / "promoted" / "config.json").read_text())
    assert promoted_config["channel_pruning"]["fraction"] == 0.5
    history = read_history(config.output_root / "history")
    assert sorted(set(zip(history["target"], history["channel_fraction"]))) == [(0.0, 0.5), (0.5, 0.5)]
    assert history["flops_ratio"].lt(0.6).all()
    [run] = runs_summary(history).itertuples()  # what `pruneflow history` shows of the promoted file
    assert (run.channel_fraction, run.targets) == (0.5, 2)
    [run_dir] = (config.output_root / "runs").iterdir()
    assert "0.50 + channels 0.50" in (run_dir / "sweep.md").read_text() and (run_dir / "sweep.png").stat().st_size
