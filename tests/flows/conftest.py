"""A real, temporary Prefect server for the flow tests (Prefect's test harness), and the artifact
store of one complete run of the default test config, to seed re-runs from."""

import shutil

import pytest

from tests.helpers.data import make_config_dict


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
    """The artifact store of one complete run of the default test config, made once per process."""
    from pruneflow.flows.prune import prune_flow
    from pruneflow.tasks.specs.config import parse_config

    config = parse_config(make_config_dict(tiny_data, tiny_baseline, tmp_path_factory.mktemp("stored") / "outputs"))
    state = prune_flow(config, return_state=True)
    assert state.is_completed(), state.message
    return config.output_root / "artifacts"


@pytest.fixture
def seed(stored):
    """Give a config's output root what a first run of the default test config stored: the stores
    are content-addressed, so a re-run of that config in it finds every stage's artifact (and a
    test need not train once more to have a first run)."""
    from pruneflow.tasks.core.store import ArtifactStore
    from pruneflow.tasks.specs.config import parse_config

    def seed(config_dict) -> ArtifactStore:
        root = parse_config(config_dict).output_root / "artifacts"
        shutil.copytree(stored, root, ignore=shutil.ignore_patterns(".lock-*", ".work-*", ".file-digests*"))
        return ArtifactStore(root=root)

    return seed
