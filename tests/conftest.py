"""Shared fixtures: an isolated Prefect home, a tiny real image dataset and a tiny trained baseline."""

import atexit
import os
import shutil
import tempfile

# Before prefect is imported anywhere: keep its database, results and telemetry out of the
# user's home and off the network. Removed at exit, after Prefect's own exit handlers (registered
# later, so run earlier) have stopped its temporary server.
_PREFECT_TMP = tempfile.mkdtemp(prefix="pruneflow-test-prefect-")
atexit.register(shutil.rmtree, _PREFECT_TMP, True)
os.environ["PREFECT_HOME"] = _PREFECT_TMP
os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = os.path.join(_PREFECT_TMP, "results")
os.environ["DO_NOT_TRACK"] = "1"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"

from pathlib import Path  # noqa: E402

# Prefect sets up its log handlers when its main module is first imported, binding them to the
# sys.stderr of that moment: do it now, not inside a test whose output pytest captures and
# then closes.
import prefect.main  # noqa: E402,F401
import pytest  # noqa: E402

from tests.helpers.data import make_config_dict, write_tiny_dataset  # noqa: E402
from tests.helpers.models import train_tiny_baseline  # noqa: E402
from tests.helpers.session import made_once  # noqa: E402

# Fixtures that start real services: a Prefect server (and, for `live`, a work pool, the
# deployments and a worker), an MLflow server. A test using one is marked `services`, so `make test-fast` can
# leave it out; tests that start a server, a browser or a Dask cluster by themselves carry
# the marker explicitly.
SERVICE_FIXTURES = {"prefect_server", "live", "mlflow_server"}


# `make test` runs the tests in three processes (pytest-xdist, --dist loadgroup): the deployment
# tests share one server, so they all go to one process, in order; the others are shared out.
DEPLOYMENTS = Path(__file__).with_name("deployments")


@pytest.hookimpl(tryfirst=True)  # before xdist's, which reads the group marks into the test ids
def pytest_collection_modifyitems(items):
    for item in items:
        if SERVICE_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.services)
        if DEPLOYMENTS in item.path.parents:
            item.add_marker(pytest.mark.xdist_group("deployments"))
        # The tests of one model variant (tests/tasks/conftest.py trains it in a session fixture)
        # go to one process, so that each variant is trained once, not once per process.
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "pruned_variant" in callspec.params:
            kind, suffix = callspec.params["pruned_variant"]
            item.add_marker(pytest.mark.xdist_group(f"variant-{kind}{suffix}"))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Folder with train/val/test CSVs over 16x16 RGB JPEGs of two learnable classes (one for the
    session: tests that change images copy it first)."""
    return made_once(tmp_path_factory, "data", write_tiny_dataset)


@pytest.fixture(scope="session")
def tiny_baseline(tmp_path_factory, tiny_data) -> Path:
    """A small CNN trained on the tiny dataset, saved as .h5 (one for the session)."""
    model = made_once(tmp_path_factory, "model", lambda folder: train_tiny_baseline(tiny_data, folder / "baseline.h5"))
    return model / "baseline.h5"


@pytest.fixture(scope="session")
def keras3_baseline(tmp_path_factory, tiny_data) -> Path:
    """The tiny dataset's classifier as users make one today: built, trained and saved by Keras 3, a
    functional model with Keras 3's own operations and activations (hard_silu, `x * 2.0`); one for
    the session."""
    from pruneflow.tasks.demo import train_baseline
    from pruneflow.tasks.specs.config import parse_config
    from tests.helpers.keras3_models import build_keras3

    def make(folder: Path) -> None:
        config = parse_config(make_config_dict(tiny_data, folder / "baseline.keras", folder / "unused"))
        train_baseline(config, epochs=4, out_path=folder / "baseline.keras",
                       build_model=lambda: build_keras3("functional_with_ops"))

    return made_once(tmp_path_factory, "keras3-model", make) / "baseline.keras"


@pytest.fixture
def config_dict(tiny_data, tiny_baseline, tmp_path) -> dict:
    """A valid run config (as a mapping) over the tiny dataset; tests change what they need."""
    return make_config_dict(tiny_data, tiny_baseline, tmp_path / "outputs")


@pytest.fixture
def deterministic_ops():
    """TensorFlow's op determinism on for one test that compares two computations (on a GPU, or
    another CPU's threads, sums may otherwise be added in another order), off again after it."""
    from pruneflow.tasks.core.runtime import tf
    from tensorflow.python.framework import config  # disable_op_determinism is not in tf.config's public API

    tf.config.experimental.enable_op_determinism()
    yield
    config.disable_op_determinism()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> str:
    """A real `mlflow server` on 127.0.0.1 (SQLite backend, local artifact folder), stopped by
    PID at the end; its tracking URI. Tests keep apart by experiment and model names."""
    import urllib.request

    from pruneflow.deployments.local import PREFECT, Process
    from pruneflow.flows.server import free_port
    from tests.helpers.polling import wait_until

    home, port = tmp_path_factory.mktemp("mlflow"), free_port()
    mlflow = str(Path(PREFECT).with_name("mlflow"))
    server = Process("mlflow", [
        mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}", "--artifacts-destination", str(home / "artifacts"),
    ], {
        **os.environ,
        # MLflow's job runner (seven huey consumer processes, for its GenAI jobs) tripled the
        # server's start-up CPU (23 s against 7 s on 2 cores); the registry uses none of it.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }, home / "server.log").start()
    uri = f"http://127.0.0.1:{port}"
    try:
        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2):
                    return True
            except OSError:
                if not server.running():
                    raise TimeoutError("the server exited") from None
                return False

        try:
            wait_until(healthy, 120, "mlflow server's /health")
        except TimeoutError as error:
            pytest.fail(f"mlflow server did not start ({error}):\n{(home / 'server.log').read_text()[-3000:]}")
        yield uri
    finally:
        server.stop()
        assert not server.running()
