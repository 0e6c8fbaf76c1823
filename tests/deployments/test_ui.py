"""In a real browser: the `manual` deployment's custom-run form, a run started from it, its page."""

import json
import os
import shutil
from pathlib import Path

import pytest
from prefect import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    DeploymentFilter,
    DeploymentFilterId,
)
from prefect.settings import PREFECT_API_URL, temporary_settings

from pruneflow.deployments.gpu import REPO
from pruneflow.tasks.specs.config import RunConfig, load_config, parse_config
from pruneflow.tasks.specs.formats import KERAS3
from tests.helpers.graph import KERAS3_STAGES
from tests.helpers.polling import wait_until
from tests.helpers.prefect import stage_states

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = REPO / "test-outputs"
# As the machine's own browser probe runs it: no sandbox (root), no GPU, no background traffic.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium package")
        pytest.skip("no Chromium here; `apt-get install chromium` to run the browser test")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def flow_run_ids(deployment_id) -> set:
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
    return {run.id for run in runs}


def test_custom_run_form_starts_a_run_that_completes(live, browser):
    defaults = load_config(live.config)  # the deployments' default run: the form's defaults
    with temporary_settings(updates={PREFECT_API_URL: live.api}), get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("prune/manual")
        before = flow_run_ids(deployment.id)

        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"http://127.0.0.1:{live.port}/deployments/deployment/{deployment.id}/run", wait_until="networkidle")
        # The form is generated from the config model: sections, descriptions, defaults, the
        # schedule type as a choice.
        sections = RunConfig.model_fields
        for text in ("Dataset", sections["dataset"].description, "Pruning", "Constant sparsity",
                     "Polynomial decay", sections["training"].description):
            assert page.get_by_text(text, exact=True).first.is_visible(), text
        # The defaults are filled in after the page loads; submitting before that sends an
        # incomplete form, which the UI refuses.
        page.wait_for_function(
            "() => [...document.querySelectorAll('textarea, input')].some(e => e.value.endsWith('train.csv'))",
            timeout=60_000,
        )
        failed_requests = []
        page.on("response", lambda r: r.status >= 400 and failed_requests.append(f"{r.status} {r.request.method} {r.url}"))
        page.get_by_role("button", name="Submit").click()  # waits until the button is enabled
        # One press makes one run, once the server has it. (On SQLite the server sometimes
        # answered 503 under load, and the test pressed again; on PostgreSQL it must not need to.)
        try:
            started = wait_until(lambda: flow_run_ids(deployment.id) - before, 60, "a flow run of the deployment")
        except TimeoutError:
            started = set()
        if not started:
            SCREENSHOTS.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / "ui-submit-no-run.png"), full_page=True)
            pytest.fail(f"Submit created no flow run in 60 s; failed requests: {failed_requests}")
        assert len(started) == 1, started
        assert not [failed for failed in failed_requests if failed.startswith("5")], failed_requests
        [flow_run_id] = started
        flow_run = wait_until(
            lambda: (run := client.read_flow_run(flow_run_id)).state.is_final() and run, 300,
            "the run started from the UI final", every=1,
        )
        assert flow_run.state.is_completed(), flow_run.state.message
        # The form's default baseline was written by Keras 3: translated, pruned, handed back.
        got = stage_states(flow_run_id)
        assert {stage: got[stage] for stage in KERAS3_STAGES} == dict.fromkeys(KERAS3_STAGES, "Completed")
        # What ran is the config file the deployments were applied with, as the form sent it.
        assert parse_config(flow_run.parameters["config"]) == defaults
        # The worker's run wrote its summary, and the server holds the report the UI shows.
        [summary] = Path(defaults.output_root).glob("runs/*/summary.json")
        summary = json.loads(summary.read_text())
        assert summary["measured_sparsity"] == pytest.approx(defaults.pruning.final_sparsity, abs=0.01)
        assert summary["sizes"]["pruned"]["zip_bytes"] < summary["sizes"]["baseline"]["zip_bytes"]
        assert KERAS3 in {file["format"] for file in summary["deployables"] if file["model"] == "pruned"}
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
        report = next(artifact for artifact in artifacts if artifact.key == "pruneflow-summary").data
        assert f"{summary['sizes']['zip_ratio']:.2f}x smaller" in report

        page.goto(f"http://127.0.0.1:{live.port}/runs/flow-run/{flow_run_id}", wait_until="networkidle")
        page.get_by_text("Completed").first.wait_for()
        SCREENSHOTS.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "ui-finished-run.png"))
        assert (SCREENSHOTS / "ui-finished-run.png").stat().st_size > 10_000
        page.close()


def a_completed_sweep(live, config_dict):
    """A sweep flow run completed on the live server: the one an earlier test of this module's
    group ran (tests/deployments/test_server.py), or, run alone, one started now."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.deployments import run_deployment

    with get_client(sync_client=True) as client:
        sweep = client.read_deployment_by_name("sweep/manual")
        done = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[sweep.id])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.COMPLETED]))),
        )
    if done:
        return done[0].id
    config_dict["sweep"] = {"targets": [0.3, 0.6], "max_accuracy_drop": 100.0}
    # _sync: the browser fixture runs an event loop in this thread (Playwright), which run_deployment
    # would otherwise take as a call from async code.
    started = run_deployment("sweep/manual", parameters={"config": config_dict}, timeout=0, _sync=True)
    with get_client(sync_client=True) as client:
        flow_run = wait_until(
            lambda: (run := client.read_flow_run(started.id)).state.is_final() and run, 300, "the sweep final", every=1
        )
    assert flow_run.state.is_completed(), flow_run.state.message
    return flow_run.id


def test_a_sweeps_plot_shows_on_its_artifact_page(live, browser, config_dict):
    with temporary_settings(updates={PREFECT_API_URL: live.api}), get_client(sync_client=True) as client:
        flow_run_id = a_completed_sweep(live, config_dict)
        [plot] = [
            artifact for artifact in client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
            ) if artifact.key == "pruneflow-sweep-plot"
        ]
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"http://127.0.0.1:{live.port}/artifacts/artifact/{plot.id}", wait_until="networkidle")
    image = page.locator("img[src^='data:image/png;base64,']").first
    image.wait_for(timeout=30_000)
    # Decoded by the browser: the plot's own pixels (matplotlib's figure is wider than 600 px).
    assert page.wait_for_function("img => img.complete && img.naturalWidth", arg=image.element_handle(), timeout=30_000).json_value() > 600
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "ui-sweep-plot.png"))
    page.close()
