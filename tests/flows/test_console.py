"""What a person sees while a command runs: one line per event in a log, a live line per
training in a terminal, the rest in the run's debug.log."""

import io
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import yaml

from pruneflow.deployments.gpu import REPO
from pruneflow.flows.console import QUICK, ConsoleProgress

# What a sweep's command prints at its end that is a table (Markdown rows), not a line of its own.
TABLE_ROW = re.compile(r"^\|")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")


def events(lines: list[tuple[str, dict]]) -> list[str]:
    out = io.StringIO()
    shown = ConsoleProgress(out, live=False)
    for kind, fields in lines:
        shown(kind, dict(fields))
    return out.getvalue().splitlines()


def test_in_a_log_each_event_is_a_line_naming_its_target_and_quick_or_reused_stages_none():
    assert events([
        ("points", {"point": None, "labels": ["0.3", "0.6"]}),
        ("stage", {"point": None, "name": "prepare_dataset", "state": "running"}),
        ("stage", {"point": None, "name": "prepare_dataset", "state": "built", "seconds": 2.04}),
        ("stage", {"point": "0.6", "name": "strip", "state": "built", "seconds": QUICK / 2}),
        ("stage", {"point": "0.6", "name": "strip", "state": "reused", "seconds": 2.0}),
        ("batch", {"point": "0.6", "title": "Prune-training", "epoch": 1, "epochs": 3, "batch": 5, "batches": 10, "seconds": 1.0}),
        ("epoch", {"point": "0.6", "title": "Prune-training", "epoch": 1, "epochs": 3, "seconds": 2.0, "val_accuracy": 0.91234}),
        ("epoch", {"point": "0.6", "title": "Prune-training", "epoch": 3, "epochs": 3, "seconds": 2.0, "val_accuracy": None}),
        ("layer", {"point": None, "name": "conv", "done": 2, "total": 5}),
    ]) == [
        "Sweep: 2 targets (0.3, 0.6)",
        "prepare_dataset: built in 2.0 s",
        "target 0.6 (2 of 2): Prune-training: epoch 1 of 3 in 2.0 s, val accuracy 0.9123, ~4 s left",
        "target 0.6 (2 of 2): Prune-training: epoch 3 of 3 in 2.0 s",
        "sensitivity: layer 2 of 5 measured (conv)",
    ]


def sweep_config(config_dict, tmp_path, targets) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**config_dict, "sweep": {"targets": targets, "max_accuracy_drop": 100.0, "min_sparsity": 0.0}}))
    return path


def command(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("pruneflow")), *args]


def test_a_two_target_sweep_in_a_log_prints_its_progress_and_its_end_in_few_lines(
    prefect_server, seed_sweep, config_dict, tmp_path
):
    from prefect.settings import PREFECT_API_URL

    seed_sweep(config_dict)  # 0.3 stored; 0.45 trains
    done = subprocess.run(
        command("sweep", str(sweep_config(config_dict, tmp_path, [0.3, 0.45]))), cwd=REPO, capture_output=True,
        text=True, timeout=300, env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    printed = (done.stderr + done.stdout).splitlines()
    lines = [line for line in printed if not TABLE_ROW.match(line)]
    assert len(lines) <= 60, "\n".join(lines)
    epochs = config_dict["training"]["epochs"]
    assert "Sweep: 2 targets (0.3, 0.45)" in lines
    assert [line for line in lines if line.startswith("target 0.45 (2 of 2): Prune-training: epoch ")] == [
        line for line in lines if re.fullmatch(rf"target 0\.45 \(2 of 2\): Prune-training: epoch \d of {epochs} in .*", line)
    ] and len([line for line in lines if "Prune-training: epoch" in line]) == epochs  # 0.3's training was stored
    assert re.search(r"^target 0\.45 \(2 of 2\): prune_train: built in \d+\.\d s$", "\n".join(lines), re.M)
    for noise in ("Finished in state", "View at", "fully_quantize", "cuInit", "Sparsity of the pruned kernels", "Epoch 1/"):
        assert noise not in done.stderr + done.stdout, noise
    run_folder = re.fullmatch(r"Run folder: (.+) \(sweep\.json, sweep\.md, sweep\.png, debug\.log\)", printed[-1])
    debug = Path(run_folder.group(1)) / "debug.log"
    assert "Sparsity of the pruned kernels in model_int8.tflite" in debug.read_text()  # the tables are kept there
    assert not list((tmp_path / "outputs" / "logs").iterdir())  # moved, not copied


def test_in_a_terminal_the_stage_and_the_training_show_live(prefect_server, seed, config_dict, tmp_path):
    from prefect.settings import PREFECT_API_URL

    seed(config_dict)
    config_dict["training"] = {**config_dict["training"], "epochs": 3}  # trains again, on a terminal
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config_dict))
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        command("run", str(path)), cwd=REPO, stdin=follower, stdout=follower, stderr=follower,
        env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "COLUMNS": "160"}, close_fds=True,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert process.wait(timeout=300) == 0
    seen = ANSI.sub("", b"".join(chunks).decode(errors="replace"))
    assert "running prune_train" in seen  # the stage running, live
    assert re.search(r"Prune-training, epoch [123] of 3 .*\d+/\d+ ~\d+ s left", seen)  # batches, time left
    assert "Prune-training: epoch 3 of 3 in " in seen and "Summary: " in seen
