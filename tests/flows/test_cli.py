"""The `pruneflow` command: user errors without tracebacks, a config run, the demo's promise."""

import json
import logging
import re

import pytest
import yaml

from pruneflow.flows.cli import main
from pruneflow.tasks.libs import keras3
from pruneflow.tasks.specs.config import load_config
from pruneflow.tasks.specs.formats import KERAS, KERAS3
from tests.helpers.prefect import latest_flow_run_id, run_logs, stage_states


def test_invalid_config_exits_2_naming_the_field(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"dataset": {}, "pruning": {"kind": "constant", "target_sparsity": 2}}))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pruneflow: error: {path}: invalid configuration")
    assert "pruning.target_sparsity: Input should be less than 1" in err
    assert "Traceback" not in err


def test_unknown_command_is_a_usage_error(capsys):
    assert main(["prune-everything"]) == 2
    assert "No such command" in capsys.readouterr().err


def test_run_prints_the_comparison(prefect_server, config_dict, tmp_path, capsys):
    config_dict["export"]["layer_errors"] = True
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config_dict))
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "| test accuracy" in out and "| zip-deflated (bytes)" in out
    summary_path = out.split("Summary: ")[1].split()[0]
    summary = json.loads(open(summary_path).read())
    assert summary["sanity"]["expected"] == 0.5
    worst = summary["quantization_errors"]["layers"][0]  # the config exports int8: its worst layer named
    assert f"validation images), worst: {worst['layer']} {worst['rmse']:.3f}" in out
    # 16 calibration images of two classes: 8 of each, fewer than the 10 a class that a warning asks for.
    assert "int8 calibrated on 16 training images, 8 per class of 2 (a class-balanced draw, seed 0). Warning: int8 " \
        "calibration has fewer than 10 images of 2 class(es) ('bottom' 8, 'top' 8): activation ranges may not cover " \
        "them; raise export.representative_images to at least 20." in out


def test_refresh_runs_every_stage_again(prefect_server, seed, config_dict, tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config_dict))
    seed(config_dict)  # what a first run stored
    assert main(["run", str(path)]) == 0
    assert set(stage_states(latest_flow_run_id()).values()) == {"Cached", "Completed"}
    assert main(["run", str(path), "--refresh"]) == 0
    assert set(stage_states(latest_flow_run_id()).values()) == {"Completed"}


@pytest.mark.slow
def test_demo_prunes_mnist_to_80_percent_and_ships_int8_files_10x_smaller_within_a_point(prefect_server, tmp_path, capfd):
    workdir = tmp_path / "demo"
    assert main(["demo", "--workdir", str(workdir)]) == 0
    # What a person reads (not a terminal here): one line per event, the tables once, where it all is.
    out, err = capfd.readouterr()
    shown = [line for line in (err + out).splitlines() if not line.startswith("|")]
    assert len(shown) <= 60, "\n".join(shown)
    assert "Prune-training: epoch 8 of 8 in " in err and re.search(r"^prune_train: built in \d+\.\d s$", err, re.M)
    assert "Sparsity of the pruned kernels" not in err + out and re.search(r"^Debug log: .+/debug\.log$", out, re.M)
    assert len(list((workdir / "data" / "images").glob("*.jpg"))) == 5000
    assert keras3.written_by_keras3(workdir / "baseline.keras") and (workdir / "pruneflow.yaml").is_file()
    [summary_path] = (workdir / "outputs" / "runs").glob("*/summary.json")
    summary = json.loads(summary_path.read_text())
    assert summary["counts"] == {"train": 3500, "val": 750, "test": 750}
    assert summary["measured_sparsity"] == pytest.approx(0.8, abs=0.005)
    # The zeros compress, the weights left do not: the pruned .h5 zips smaller by at least half the
    # ratio of the weights left, counted in the files themselves (on the demo 5.0x fewer, zipped 3.06x).
    # Nearly all of the CNN's weights are in the pruned kernels: at least 95 %, or 1 / (1 - 0.8 x 0.95) fewer.
    sizes = summary["sizes"]
    fewer = sizes["baseline"]["nonzero_weights"] / sizes["pruned"]["nonzero_weights"]
    assert sizes["zip_ratio"] >= 0.5 * fewer and fewer >= 1 / (1 - 0.8 * 0.95)
    assert abs(summary["accuracy_change"]) <= 2.0
    assert summary["baseline"]["accuracy"] >= 0.9
    # The files to deploy: int8 after quantization-aware training, at least 10x smaller than the
    # baseline .h5 compressed alike, its own accuracy in its runtime within a point of the
    # baseline's; int8 after post-training quantization, in TFLite and in ONNX, 10x smaller with xz.
    files = {f["format"]: f for f in summary["deployables"] if f["model"] == "pruned"}
    demo = load_config(workdir / "pruneflow.yaml")
    assert set(files) == {KERAS, KERAS3, *demo.export.formats} and {"int8_qat", "onnx_int8"} <= set(files)
    # The Keras 3 baseline comes back as a Keras 3 file: the pruned model's accuracy, its zeros kept.
    assert files[KERAS3]["accuracy"] == pytest.approx(summary["pruned"]["accuracy"]) and files[KERAS3]["agreement"] == 1.0
    qat, ptq, onnx = files["int8_qat"], files["int8"], files["onnx_int8"]
    assert qat["zip_ratio"] >= 10.0 and ptq["xz_ratio"] >= 10.0 and onnx["xz_ratio"] >= 10.0
    for file in (qat, ptq, onnx):
        assert 100 * (summary["baseline"]["accuracy"] - file["accuracy"]) <= 1.0 and file["agreement"] >= 0.99


def test_a_user_error_shows_no_traceback_anywhere_in_the_terminal(prefect_server, config_dict, tmp_path):
    """What a person at a terminal sees: Prefect's own run logs included, not only our last line."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from prefect.settings import PREFECT_API_URL

    config_dict["model"]["baseline"] = str(tmp_path / "gone.h5")
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config_dict))
    done = subprocess.run(
        [sys.executable, "-m", "pruneflow.flows.cli", "run", str(path)], cwd=Path(__file__).parents[2],
        env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 2
    # Once on the console, as the command's last line; once in the run's log, on the task that raised it.
    [said] = [line for line in (done.stdout + done.stderr).splitlines() if "gone.h5" in line]
    assert said.startswith(f"pruneflow: error: {tmp_path / 'gone.h5'}: model file not found")
    assert done.stderr.splitlines()[-1] == said and len(done.stderr.splitlines()) <= 3, done.stderr  # 1 here
    assert "Traceback" not in done.stdout + done.stderr and "PruneflowError" not in done.stdout + done.stderr
    [logged] = run_logs(latest_flow_run_id(), "gone.h5")
    assert logged.task_run_id is not None and logged.level == logging.ERROR
    assert "Traceback" not in logged.message


def test_a_model_with_layers_tfmot_cannot_prune_runs_end_to_end_and_reports_them(prefect_server, config_dict, tmp_path, capsys):
    """Rescaling first, BatchNorm and a depthwise convolution: pruned where TFMOT can, exported,
    each file's kernels checked, and every layer left dense reported by class."""
    from pruneflow.tasks.core.runtime import keras
    from pruneflow.tasks.libs.models import save_model
    from tests.helpers.data import IMAGE_SIZE

    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3)), keras.layers.Rescaling(2.0, offset=-1.0),
        keras.layers.Conv2D(8, 3, activation="relu"), keras.layers.BatchNormalization(),
        keras.layers.DepthwiseConv2D(3, activation="relu"), keras.layers.Flatten(),
        keras.layers.Dense(2, activation="softmax"),
    ])
    config_dict["model"]["baseline"] = str(save_model(model, tmp_path / "rescaling.h5"))
    config_dict["layers"] = {"sparsity": {"dense": 0.7}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config_dict))
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Layers: 2 pruned; left dense: TFMOT cannot prune it: BatchNormalization x1, DepthwiseConv2D x1, Rescaling x1" in out
    summary = json.loads(open(out.split("Summary: ")[1].split()[0]).read())
    assert {t["layer"]: t["target"] for t in summary["sanity"]["tensors"]} == {"conv2d": 0.5, "dense": 0.7}
    (exported,) = [file for export in summary["exports"] for file in export["files"]]  # int8, the config's one format
    assert {t["layer"]: t["passed"] for t in exported["sparsity"]} == {"conv2d": True, "dense": True}
    assert "| share of the weights pruning reaches |" in out


def test_a_run_whose_every_stage_is_stored_imports_no_tensorflow(prefect_server, seed, config_dict, tmp_path):
    import os
    import subprocess
    import sys

    from pruneflow.deployments.gpu import REPO

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config_dict))
    seed(config_dict)  # every stage stored, as a first run leaves it
    # The same command again, in a process of its own, on a temporary server of its own, as a user runs it.
    probe = (
        "import sys\nfrom pruneflow.flows.cli import main\ncode = main(['run', sys.argv[1]])\n"
        "print('tensorflow imported:', 'tensorflow' in sys.modules)\nsys.exit(code)"
    )
    env = {name: value for name, value in os.environ.items() if name != "PREFECT_API_URL"}
    done = subprocess.run(
        [sys.executable, "-c", probe, str(path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "tensorflow imported: False" in done.stdout
    summary_path = done.stdout.split("Summary: ")[1].split()[0]
    seconds = json.loads(open(summary_path).read())["stage_seconds"]
    assert {"imports", "server start (waited)", "check_inputs", "prune_train"} <= set(seconds)


def test_the_pruneflow_command_ends_with_its_exit_code_all_it_printed_and_its_server_stopped(
    prefect_server, seed, config_dict, tmp_path
):
    """The console script ends its process without Python's teardown (pruneflow.flows.cli.console)."""
    import os
    import subprocess
    import sys
    import urllib.error
    import urllib.request
    from pathlib import Path

    from pruneflow.deployments.gpu import REPO

    command = str(Path(sys.executable).with_name("pruneflow"))
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config_dict))
    seed(config_dict)  # every stage stored, as a first run leaves it
    env = {name: value for name, value in os.environ.items() if name != "PREFECT_API_URL"}
    done = subprocess.run([command, "run", str(path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    last = r"\nSeconds: imports .*, report \d+\.\d, the rest of the flow run \d+\.\d; in all \d+\.\d\n$"
    assert re.search(last, done.stdout), done.stdout[-500:]
    log = Path(re.search(r"^Debug log: (.+)$", done.stdout, re.M).group(1))  # Prefect's run log lines went there
    [port] = set(re.findall(r"View at http://127\.0\.0\.1:(\d+)/", log.read_text()))
    with pytest.raises(urllib.error.URLError):  # its temporary server was stopped
        urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=5)

    path.write_text(yaml.safe_dump({**config_dict, "training": {**config_dict["training"], "epochs": 0}}))
    failed = subprocess.run([command, "run", str(path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert failed.returncode == 2
    assert failed.stderr.startswith(f"pruneflow: error: {path}: invalid configuration"), failed.stderr[-2000:]
    assert "training.epochs" in failed.stderr
