"""The run's summary: a JSON file beside the outputs, and Prefect artifacts comparing the two models."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE
from pydantic import BaseModel, ConfigDict, computed_field

from tasks.config import RunConfig, Schedule
from tasks.files import storage_errors, write_json
from tasks.evaluate import Evaluation
from tasks.prune import TrainedModel
from tasks.sanity import SanityReport
from tasks.size import SizeReport

ARTIFACT_KEY = "pruneflow-summary"


class PruningOutcome(BaseModel):
    """A pruned model against its baseline: what a run, or one target of a sweep, produced."""

    model_config = ConfigDict(frozen=True)

    pruned_model: Path
    schedule: Schedule
    baseline: Evaluation
    pruned: Evaluation
    sanity: SanityReport
    sizes: SizeReport
    training: TrainedModel

    @computed_field
    @property
    def accuracy_change(self) -> float:
        """Pruned minus baseline test accuracy, in points (percent)."""
        return 100.0 * (self.pruned.accuracy - self.baseline.accuracy)

    @computed_field
    @property
    def measured_sparsity(self) -> float:
        """Zeros over all prunable weights of the pruned model."""
        size = sum(t.size for t in self.sanity.tensors)
        return sum(t.zeros for t in self.sanity.tensors) / size if size else 0.0


class RunSummary(PruningOutcome):
    """What one run produced, written as summary.json in the run's folder."""

    run_dir: Path
    config: RunConfig
    classes: list[str]
    counts: dict[str, int]
    stage_seconds: dict[str, float]


def comparison_rows(summary: RunSummary) -> list[dict[str, str]]:
    """Baseline against pruned, one metric a row, formatted for people."""
    sizes = summary.sizes
    return [
        {"metric": "test accuracy", "baseline": f"{summary.baseline.accuracy:.4f}",
         "pruned": f"{summary.pruned.accuracy:.4f}", "change": f"{summary.accuracy_change:+.2f} points"},
        {"metric": "test loss", "baseline": f"{summary.baseline.loss:.4f}",
         "pruned": f"{summary.pruned.loss:.4f}", "change": f"{summary.pruned.loss - summary.baseline.loss:+.4f}"},
        {"metric": "sparsity of prunable weights", "baseline": "-",
         "pruned": f"{summary.measured_sparsity:.4f}", "change": f"target {summary.sanity.expected}"},
        {"metric": "size on disk (.h5, bytes)", "baseline": f"{sizes.baseline.raw_bytes:,}",
         "pruned": f"{sizes.pruned.raw_bytes:,}", "change": f"{sizes.raw_ratio:.2f}x smaller"},
        {"metric": "zip-deflated (bytes)", "baseline": f"{sizes.baseline.zip_bytes:,}",
         "pruned": f"{sizes.pruned.zip_bytes:,}", "change": f"{sizes.zip_ratio:.2f}x smaller"},
        {"metric": "gzipped (bytes)", "baseline": f"{sizes.baseline.gzip_bytes:,}",
         "pruned": f"{sizes.pruned.gzip_bytes:,}", "change": f"{sizes.gzip_ratio:.2f}x smaller"},
        {"metric": "floor: non-zero weights x 4 (bytes)", "baseline": f"{sizes.baseline.floor_bytes:,}",
         "pruned": f"{sizes.pruned.floor_bytes:,}", "change": ""},
    ]


def markdown_table(rows: list[dict[str, str]]) -> str:
    """Rows (all with the same keys, in column order) as an aligned Markdown table, readable as plain text."""
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(row[c]) for row in rows)) for c in columns}
    line = lambda cells: "| " + " | ".join(cells[c].ljust(widths[c]) for c in columns) + " |"  # noqa: E731
    return "\n".join(
        [line({c: c for c in columns}), line({c: "-" * widths[c] for c in columns}), *(line(r) for r in rows)]
    )


def render_table(summary: RunSummary) -> str:
    """The comparison of the baseline and the pruned model as a Markdown table."""
    return markdown_table(comparison_rows(summary))


def render_markdown(summary: RunSummary) -> str:
    stages = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in summary.stage_seconds.items())
    return (
        f"# Pruning run\n\n{render_table(summary)}\n\n"
        f"- Schedule: `{summary.schedule.model_dump_json()}`\n"
        f"- Test images: {summary.pruned.examples}; classes: {', '.join(summary.classes)}\n"
        f"- Pruned model: `{summary.pruned_model}`\n"
        f"- Outputs: `{summary.run_dir}`\n"
        f"- Stage wall times: {stages}\n"
    )


@task(cache_policy=NONE)
def publish_report(summary: RunSummary) -> Path:
    """Write summary.json and publish the comparison as Prefect artifacts."""
    with storage_errors(summary.run_dir, "the run's summary"):
        path = write_json(summary.run_dir / "summary.json", summary.model_dump(mode="json"))
    create_markdown_artifact(key=ARTIFACT_KEY, markdown=render_markdown(summary), description="Baseline vs pruned")
    create_table_artifact(key=f"{ARTIFACT_KEY}-table", table=comparison_rows(summary), description="Baseline vs pruned")
    get_run_logger().info("Summary written to %s", path)
    return path
