"""A real, temporary Prefect server for the flow tests (Prefect's test harness), and the artifact
stores of one run and of one sweep of the default test config, to seed a test's first run from."""

import shutil
from pathlib import Path

import pytest

from tests.helpers.data import make_config_dict
from tests.helpers.session import made_once

# The targets of stored_sweep.
SWEPT = (0.3, 0.6)


@pytest.fixture(scope="session")
def prefect_server():
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    # The temporary server takes 12-18 s to start on 2 cores; the default wait is 20 s.
    with prefect_test_harness(server_startup_timeout=90):
        # Flow-run heartbeats let a long-lived server spot runs whose process died; nothing here
        # watches for them (tests/deployments does, on its own server), and each flow run waits
        # up to a second at its end for the heartbeat thread to stop, as a `pruneflow` command's
        # runs on its temporary server do not (pruneflow.flows.cli.run_settings).
        with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            yield


@pytest.fixture(scope="session")
def stored(prefect_server, tiny_data, tiny_baseline, tmp_path_factory):
    """The artifact store of one complete run of the default test config, made once in the session."""
    from pruneflow.flows.prune import prune_flow
    from pruneflow.tasks.specs.config import parse_config

    def make(folder: Path) -> None:
        state = prune_flow(parse_config(make_config_dict(tiny_data, tiny_baseline, folder / "outputs")), return_state=True)
        assert state.is_completed(), state.message

    return made_once(tmp_path_factory, "stored", make) / "outputs" / "artifacts"


@pytest.fixture(scope="session")
def stored_sweep(prefect_server, tiny_data, tiny_baseline, tmp_path_factory):
    """The artifact store of one sweep of the default test config over SWEPT, made once in the session."""
    from pruneflow.flows.sweep import sweep_flow
    from pruneflow.tasks.specs.config import parse_config

    def make(folder: Path) -> None:
        config_dict = make_config_dict(tiny_data, tiny_baseline, folder / "outputs")
        state = sweep_flow(
            parse_config({**config_dict, "sweep": {"targets": list(SWEPT), "max_accuracy_drop": 100.0}}), return_state=True
        )
        assert state.is_completed(), state.message

    return made_once(tmp_path_factory, "stored-sweep", make) / "outputs" / "artifacts"


def seeder(stored: Path):
    """Give a config's output root what `stored` holds: the stores are content-addressed, so a run
    of the config that made it finds every stage's artifact there (and a test need not train again
    to have a first run). Promotions and history are not artifacts: the root starts without them."""
    from pruneflow.tasks.core.store import ArtifactStore
    from pruneflow.tasks.specs.config import parse_config

    def seed(config_dict) -> ArtifactStore:
        root = parse_config(config_dict).output_root / "artifacts"
        shutil.copytree(stored, root, ignore=shutil.ignore_patterns(".lock-*", ".work-*", ".file-digests*"))
        return ArtifactStore(root=root)

    return seed


@pytest.fixture
def seed(stored):
    """seeder(stored): what a first run of the default test config stored."""
    return seeder(stored)


@pytest.fixture
def seed_sweep(stored_sweep):
    """seeder(stored_sweep): what a sweep of the default test config over SWEPT stored."""
    return seeder(stored_sweep)
