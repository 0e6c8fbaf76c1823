"""pruneflow's own Prefect events, for automations to act on (pruneflow.deployments.alerts turns them into messages).

`pruneflow.sweep.regressed`: a sweep's promoted file got worse than the last run of the same
config that promoted one, or targets failed (pruneflow.tasks.decide.history.regressions). Its resource is the
line of runs (the output root's history); its related resource is the flow run, so that an
automation's template can name it (`{{ flow_run.name }}`); its payload holds the figures.
"""

from __future__ import annotations

import math

import pandas as pd

from pruneflow.tasks.core.log import run_logger

REGRESSION_EVENT = "pruneflow.sweep.regressed"


def figures(run) -> dict:
    """A run's row of pruneflow.tasks.decide.history.runs_summary as JSON-safe figures (None where not measured)."""

    def value(name):
        item = getattr(run, name, None)
        if item is None or (isinstance(item, float) and math.isnan(item)):
            return None
        return item.item() if hasattr(item, "item") else item

    return {
        "target": value("target"), "format": value("format"), "accuracy": value("accuracy"),
        "zip_bytes": None if value("zip_bytes") is None else int(value("zip_bytes")), "latency_ms": value("latency_ms"),
        "targets": int(run.targets), "failed_targets": int(run.failed), "decision": run.decision,
        "config_digest": run.config_digest,
    }


def announce_regression(
    runs: pd.DataFrame, flow_run_id: str, flow_run_name: str, what: str, history: str
) -> None:
    """Emit REGRESSION_EVENT for the run `flow_run_id` of `runs` (pruneflow.tasks.decide.history.runs_summary),
    `what` saying what regressed, `history` the folder of the line of runs it belongs to."""
    from prefect.events import emit_event

    [run] = runs[runs["flow_run_id"] == flow_run_id].itertuples()
    payload = {"flow_run_name": flow_run_name, "regression": what, "history": history, **figures(run)}
    related = [{
        "prefect.resource.id": f"prefect.flow-run.{flow_run_id}", "prefect.resource.role": "flow-run",
        "prefect.resource.name": flow_run_name,
    }]
    emit_event(
        event=REGRESSION_EVENT, resource={"prefect.resource.id": f"pruneflow.history.{run.config_digest}",
                                          "prefect.resource.name": history},
        related=related, payload=payload,
    )
    run_logger().warning("Regression against the last run of this config: %s (event %s sent)", what, REGRESSION_EVENT)
