"""`pruneflow sensitivity`: every selected layer measured as its own cached task run, the proposal
written as a config that a run takes as it is."""

import json

import pytest
import yaml

from pruneflow.flows.cli import main
from pruneflow.tasks.specs.config import load_config
from tests.helpers.prefect import artifacts_of, latest_flow_run_id, task_runs


def test_sensitivity_measures_each_selected_layer_and_its_proposal_runs(prefect_server, config_dict, tmp_path, capfd):
    path = tmp_path / "run.yaml"
    config_dict["layers"] = {"exclude": ["dense_1"]}
    config_dict["sensitivity"] = {"sparsities": [0.5, 0.9]}
    path.write_text(yaml.safe_dump(config_dict))
    assert main(["sensitivity", str(path), "--target", "0.6"]) == 0
    out, err = capfd.readouterr()
    # The scan's progress on the console, a line per layer (the command's stderr, not a terminal here).
    assert [line for line in err.splitlines() if line.startswith("sensitivity: ")] == [
        "sensitivity: layer 1 of 2 measured (conv2d)", "sensitivity: layer 2 of 2 measured (dense)"
    ]
    first = latest_flow_run_id()
    measured = [name for name, state, _ in task_runs(first) if name.startswith("layer_sensitivity")]
    assert len(measured) == 2  # conv2d and dense; dense_1 excluded
    assert "pruneflow-sensitivity" in artifacts_of(first)
    run_dir = tmp_path / "outputs" / "runs"
    (folder,) = [p for p in run_dir.iterdir() if (p / "sensitivity.json").is_file()]
    report = json.loads((folder / "sensitivity.json").read_text())
    assert [layer["layer"] for layer in report["layers"]] == ["conv2d", "dense"]
    assert report["proposal"]["reached"] >= 0.6
    assert (folder / "sensitivity.png").stat().st_size > 10_000
    header = (folder / "sensitivity.md").read_text().splitlines()[0]
    assert [cell.strip() for cell in header.strip("|").split("|")] == ["layer", "weights", "drop at 0.5", "drop at 0.9", "proposed"]
    assert "Proposed per-layer sparsities reach" in out

    proposed = load_config(folder / "proposed-config.yaml")
    proposal = report["proposal"]["sparsity"]
    assert proposed.layers.sparsity == {layer: s for layer, s in proposal.items() if s > 0}
    assert proposed.layers.exclude == ["dense_1", *(layer for layer, s in proposal.items() if s == 0)]
    # Measured again: every layer's task run is reused from the store.
    assert main(["sensitivity", str(path), "--target", "0.6"]) == 0
    again = [state for name, state, _ in task_runs(latest_flow_run_id()) if name.startswith("layer_sensitivity")]
    assert again == ["Cached", "Cached"]
    # The proposed config is a run config: each layer pruned to its proposed sparsity.
    capfd.readouterr()
    assert main(["run", str(folder / "proposed-config.yaml")]) == 0
    summary_path = capfd.readouterr().out.split("Summary: ")[1].split()[0]
    summary = json.loads(open(summary_path).read())
    targets = {t["layer"]: t["target"] for t in summary["sanity"]["tensors"]}
    assert targets == {layer: s for layer, s in proposal.items() if s > 0}


@pytest.mark.parametrize("command, expected", [
    ("sensitivity", "prunes every layer to the same m/n: there is no per-layer sparsity to propose"),
    ("sweep", "sweep: layers.m_by_n [2, 4] prunes every layer to exactly 0.5, so there is no sparsity to sweep"),
])
def test_2_by_4_has_no_sparsity_to_measure_or_sweep(prefect_server, config_dict, tmp_path, capsys, command, expected):
    config_dict["layers"] = {"m_by_n": [2, 4], "keep_first_conv": True}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config_dict))
    assert main([command, str(path)]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
