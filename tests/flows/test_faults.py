"""Faults around the artifact store: a run killed mid-write, two runs at once, a full or read-only disk.

The runs here are real `pruneflow run` processes (or the command in-process) against the test
Prefect server; the disks are real file systems (a small tmpfs, a read-only bind mount).
"""

import json
import os
import signal
from pathlib import Path

import yaml

from pruneflow.flows.cli import main
from pruneflow.tasks.core.store import ArtifactStore
from tests.helpers.cli import Cli
from tests.helpers.disks import fill_disk, read_only, small_disk
from tests.helpers.graph import STAGES
from tests.helpers.prefect import latest_flow_run_id, stage_states


def write_config(config_dict, tmp_path, name="run.yaml", **changes) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({**config_dict, **changes}))
    return path


def assert_store_intact(output_root: Path) -> ArtifactStore:
    """Each stage holds whole, verified folders and no temporary leftovers."""
    store = ArtifactStore(root=output_root / "artifacts")
    for stage in STAGES:
        keys = [entry.name for entry in (store.root / stage).iterdir() if not entry.name.startswith(".")]
        assert keys, stage
        assert all(store.problem(stage, key) is None for key in keys), stage
        assert not list((store.root / stage).glob(".tmp-*")) and not list((store.root / stage).glob(".old-*")), stage
    return store


def test_a_run_killed_mid_write_leaves_nothing_a_later_run_accepts(prefect_server, config_dict, tmp_path):
    config_dict["training"]["epochs"] = 3
    path = write_config(config_dict, tmp_path)
    killed = Cli(path, PRUNEFLOW_INJECT_FAULT="hang@1")
    try:
        killed.wait_for("pruneflow: hanging")  # inside prune_train's temporary folder, after epoch 1
        os.kill(killed.process.pid, signal.SIGKILL)
        assert killed.finish() == -signal.SIGKILL
    finally:
        killed.stop()
    train = Path(config_dict["output_root"]) / "artifacts" / "prune_train"
    [leftover] = train.glob(".tmp-*")  # what the killed writer was filling
    key = leftover.name.split("-")[1]
    assert not (train / key).exists()  # nothing under the real key for a later run to accept
    assert (train / f".work-{key}").is_dir()  # the epoch-1 checkpoint

    assert main(["run", str(path)]) == 0
    store = assert_store_intact(Path(config_dict["output_root"]))
    trained = json.loads((store.folder("prune_train", key) / "result.json").read_text())
    assert trained["resumed_from_epoch"] == 1 and trained["epochs"] == 3
    assert not (train / f".work-{key}").exists()


def test_two_runs_of_one_config_at_once_produce_each_artifact_once(prefect_server, config_dict, tmp_path):
    path = write_config(config_dict, tmp_path)
    release = tmp_path / "release"
    first = Cli(path, PRUNEFLOW_INJECT_FAULT="wait@1", PRUNEFLOW_FAULT_RELEASE=str(release))
    second = None
    try:
        first.wait_for("pruneflow: waiting")  # holds prune_train's lock, mid-write
        second = Cli(path)
        second.wait_for("prune_train: another run is producing")
        release.touch()
        assert first.finish() == 0, first.output[-3000:]
        assert second.finish() == 0, second.output[-3000:]
    finally:
        first.stop()
        if second is not None:
            second.stop()
    debug_log = Path(second.output.split("Debug log: ")[1].split()[0])  # the run's log lines, the console's aside
    assert "prune_train: reusing what the other run stored" in debug_log.read_text()
    summaries = [json.loads(Path(cli.output.split("Summary: ")[1].split()[0]).read_text()) for cli in (first, second)]
    assert summaries[0]["pruned_model"] == summaries[1]["pruned_model"]
    assert summaries[0]["training"] == summaries[1]["training"]  # the second run's result is the first's
    store = assert_store_intact(Path(config_dict["output_root"]))
    for stage in STAGES:  # one folder per stage: nothing produced twice, nothing replaced
        assert len([entry for entry in (store.root / stage).iterdir() if not entry.name.startswith(".")]) == 1


def snapshot(output_root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(output_root)): p.read_bytes() for p in sorted(output_root.rglob("*")) if p.is_file()}


def test_a_full_disk_stops_the_run_clearly_and_keeps_the_previous_results(prefect_server, config_dict, tmp_path, capsys):
    with small_disk(tmp_path / "disk", 24 << 20) as disk:
        config_dict["output_root"] = str(disk / "outputs")
        assert main(["run", str(write_config(config_dict, tmp_path))]) == 0
        before = snapshot(disk / "outputs")
        fill_disk(disk, leave=48 << 10)
        capsys.readouterr()
        changed = write_config(config_dict, tmp_path, "sparser.yaml", pruning={**config_dict["pruning"], "target_sparsity": 0.7})
        assert main(["run", str(changed)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("pruneflow: error: cannot write the prune_train artifact: no space left on the device holding")
        assert "Free some space, or set output_root to a writable folder" in err and "Traceback" not in err
        after = snapshot(disk / "outputs")
        assert {name: after[name] for name in before} == before  # every earlier file, byte for byte
        assert_store_intact(disk / "outputs")
        assert not list((disk / "outputs" / "artifacts" / "prune_train").glob(".tmp-*"))


def test_a_read_only_output_folder_stops_the_run_clearly_and_keeps_the_previous_results(
    prefect_server, config_dict, tmp_path, capsys
):
    output_root = Path(config_dict["output_root"])
    assert main(["run", str(write_config(config_dict, tmp_path))]) == 0
    before = snapshot(output_root)
    capsys.readouterr()
    changed = write_config(config_dict, tmp_path, "sparser.yaml", pruning={**config_dict["pruning"], "target_sparsity": 0.7})
    with read_only(output_root):
        assert main(["run", str(changed)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pruneflow: error: cannot write into output_root: {output_root} is not writable")
    assert "Traceback" not in err
    # Refused by the first check, before any stage: what the code did, where the mount alone would
    # keep the files as they were whatever the code tried.
    assert stage_states(latest_flow_run_id()) == {"check_inputs": "Failed"}
    assert snapshot(output_root) == before
