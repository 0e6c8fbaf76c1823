"""A real, temporary Prefect server for the flow tests (Prefect's test harness)."""

import pytest


@pytest.fixture(scope="session")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    # The temporary server takes 12-18 s to start on 2 cores; the default wait is 20 s.
    with prefect_test_harness(server_startup_timeout=90):
        yield
