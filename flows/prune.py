"""The pruning flow: check the inputs, prepare, evaluate the baseline, prune to the schedule, report.

Each stage stores its output in the artifact store under a key derived from its code and the
contents of its inputs, and reuses it when it is there: a re-run (the next night's, or one
started from the UI) runs only the stages whose inputs changed.
"""

from __future__ import annotations

from prefect import flow

from pruneflow.flows.graph import prepare, prune_to, start_run
from pruneflow.flows.running import stage_clock
from pruneflow.tasks.report.summary import RunSummary, publish_report
from pruneflow.tasks.specs.config import RunConfig


@flow(name="prune")
def prune_flow(config: RunConfig) -> RunSummary:
    """Prune the baseline under the configured schedule and compare it with the baseline."""
    with stage_clock() as seconds:
        run = start_run(config)
        start = prepare(config, run)
        outcome = prune_to(config, start, run.inputs.schedule)
    summary = RunSummary(
        **dict(outcome), run_dir=run.run_dir, config=config, classes=start.dataset.classes,
        counts=start.dataset.counts, stage_seconds=seconds,
    )
    return publish_report(summary)
