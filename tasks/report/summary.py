"""Reports: a run's summary and a sweep's table, as files in the run's folder and as Prefect artifacts."""

from __future__ import annotations

import base64
import time
from pathlib import Path

from prefect import task
from prefect.artifacts import create_image_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE

from pruneflow.tasks.core.files import storage_errors, write_json, write_text
from pruneflow.tasks.core.layout import OutputLayout
from pruneflow.tasks.core.log import run_logger
from pruneflow.tasks.decide.champion import Decision
from pruneflow.tasks.decide.gate import Candidate, accuracy_drop, candidates, gate_problem, pareto_front
from pruneflow.tasks.libs.artifacts import ChampionEvaluation, NarrowedModel
from pruneflow.tasks.libs.outcome import Deployable, Point, PruningOutcome, TargetResult, Trial
from pruneflow.tasks.report.plot import plot_layer_errors, plot_sweep
from pruneflow.tasks.specs.config import RunConfig, SweepConfig
from pruneflow.tasks.specs.formats import display_name

ARTIFACT_KEY = "pruneflow-summary"
SWEEP_KEY = "pruneflow-sweep"


class RunSummary(PruningOutcome):
    """What one run produced, written as summary.json in the run's folder."""

    run_dir: Path
    config: RunConfig
    classes: list[str]
    counts: dict[str, int]
    stage_seconds: dict[str, float]


def comparison_rows(summary: RunSummary) -> list[dict[str, str]]:
    """Baseline against pruned, one metric a row, formatted for people."""
    sizes, shares = summary.sizes, summary.sanity.shares()
    return [
        {"metric": "test accuracy", "baseline": f"{summary.baseline.accuracy:.4f}",
         "pruned": f"{summary.pruned.accuracy:.4f}", "change": f"{summary.accuracy_change:+.2f} points"},
        {"metric": "test loss", "baseline": f"{summary.baseline.loss:.4f}",
         "pruned": f"{summary.pruned.loss:.4f}", "change": f"{summary.pruned.loss - summary.baseline.loss:+.4f}"},
        {"metric": "sparsity of the pruned weights", "baseline": "-",
         "pruned": f"{summary.measured_sparsity:.4f}", "change": f"target {target_text(summary)}"},
        {"metric": "share of the weights pruning reaches", "baseline": "-",
         "pruned": f"{shares['pruned']:.1%}",
         "change": f"{shares['dense_by_choice']:.1%} dense by choice, {shares['cannot_prune']:.1%} TFMOT cannot prune"},
        {"metric": "size on disk (.h5, bytes)", "baseline": f"{sizes.baseline.raw_bytes:,}",
         "pruned": f"{sizes.pruned.raw_bytes:,}", "change": f"{sizes.raw_ratio:.2f}x smaller"},
        {"metric": "zip-deflated (bytes)", "baseline": f"{sizes.baseline.zip_bytes:,}",
         "pruned": f"{sizes.pruned.zip_bytes:,}", "change": f"{sizes.zip_ratio:.2f}x smaller"},
        {"metric": "xz-compressed (bytes)", "baseline": f"{sizes.baseline.xz_bytes:,}",
         "pruned": f"{sizes.pruned.xz_bytes:,}", "change": f"{sizes.xz_ratio:.2f}x smaller"},
        {"metric": "floor: non-zero weights x 4 (bytes)", "baseline": f"{sizes.baseline.floor_bytes:,}",
         "pruned": f"{sizes.pruned.floor_bytes:,}", "change": ""},
        *channel_totals(summary.channels),
    ]


def channel_totals(narrowed: NarrowedModel | None) -> list[dict[str, str]]:
    """The parameters and FLOPs per image of the baseline and of the narrowed model (none without
    channel pruning)."""
    if narrowed is None:
        return []
    rows = []
    for metric, field in (("parameters", "params"), ("FLOPs per image", "flops")):
        before, after = narrowed.totals(field)
        rows.append({"metric": metric, "baseline": f"{before:,}", "pruned": f"{after:,}",
                     "change": f"{after / max(1, before):.2f}x the baseline's (channels removed)"})
    return rows


def channel_rows(narrowed: NarrowedModel) -> list[dict[str, str]]:
    """One row per layer whose size or work changed: channels, parameters and FLOPs before and after."""
    after = {cost.path: cost for cost in narrowed.after}
    kept = {path: (group.channels, len(group.kept)) for group in narrowed.plan.groups for path in group.layers}
    return [
        {
            "layer": cost.path,
            "class": cost.kind,
            "output channels": "{} -> {}".format(*kept[cost.path]) if cost.path in kept else "-",
            "parameters": f"{cost.params:,} -> {after[cost.path].params:,}",
            "FLOPs": f"{cost.flops:,} -> {after[cost.path].flops:,}",
        }
        for cost in narrowed.before
        if (cost.params, cost.flops) != (after[cost.path].params, after[cost.path].flops)
    ]


def render_channels(narrowed: NarrowedModel | None) -> str:
    """The channels removed, layer by layer, and the groups left whole with their reason."""
    if narrowed is None:
        return ""
    whole = "".join(f"- {', '.join(group.layers)}: {group.reason}\n" for group in narrowed.plan.whole)
    return (
        f"## Channels removed\n\nRanked by {narrowed.plan.criterion}; the narrowed model has "
        f"{narrowed.params_ratio:.2f}x the baseline's parameters and {narrowed.flops_ratio:.2f}x its FLOPs.\n\n"
        f"{markdown_table(channel_rows(narrowed))}\n\n" + (f"Left whole:\n\n{whole}\n" if whole else "")
    )


QUANTIZATION_ROWS = 10  # the report's table of int8 error by layer shows the worst this many


def worst_quantized(outcome: PruningOutcome) -> str:
    """One line naming the layers int8 hurts most; "" without an int8 file."""
    errors = outcome.quantization_errors
    if errors is None or not errors.layers:
        return ""
    worst = ", ".join(f"{e.layer} {e.rmse:.3f}" for e in errors.worst())
    return (f"int8 error by layer (RMSE over the float output's spread, {errors.images} validation images), "
            f"worst: {worst}")


def render_quantization(outcome: PruningOutcome) -> str:
    """The worst layers' int8 error as a Markdown section; "" without an int8 file."""
    errors = outcome.quantization_errors
    if errors is None or not errors.layers:
        return ""
    floated = {t for exported in outcome.exports for f in exported.files if f.fallback for t in f.fallback.tensors}
    shown = [e for i, e in enumerate(errors.layers) if i < QUANTIZATION_ROWS or e.tensor in floated]
    rows = [{"layer": e.layer, "op": e.op, "outputs": f"{e.elements:,}", "RMSE / spread": f"{e.rmse:.4f}",
             "cosine": f"{e.cosine:.4f}", **({"int8_fallback": "float" if e.tensor in floated else ""} if floated else {})}
            for e in shown]
    also = " and every layer int8_fallback keeps in float" if floated else ""
    return (
        f"## int8 error by layer\n\nEach quantized op's output against the float op's on the same inputs, on "
        f"{errors.images} validation images, worst first: the worst {QUANTIZATION_ROWS}{also} (every op: "
        f"`{errors.folder / 'layer_errors.csv'}`).\n\n{markdown_table(rows)}\n\n"
    )


def target_text(outcome: PruningOutcome) -> str:
    """The target sparsity (a range when layers have their own), and the structure if any."""
    sanity = outcome.sanity
    targets = sorted({t.target for t in sanity.tensors}) or [sanity.expected]
    text = f"{targets[0]:g}" if len(targets) == 1 else f"{targets[0]:g} to {targets[-1]:g} per layer"
    return text + (f", {sanity.structure}" if sanity.structure else "")


def file_rows(outcome: PruningOutcome) -> list[dict[str, str]]:
    """One row per deployable file of the baseline and of the pruned model, formatted for people.

    Sizes are followed by how many times smaller the file is than the baseline .h5, compressed
    alike; speed-up is against the baseline in the same format (a sparse format's dense one).
    """
    files = outcome.deployables  # computed on every read
    batch = next((file.batch for file in files if file.batch), None)
    rows = []
    for file in files:
        row = {
            "model": file.model,
            "format": display_name(file.format),
            "bytes": f"{file.raw_bytes:,} ({file.raw_ratio:.2f}x)",
            "zip-deflated": f"{file.zip_bytes:,} ({file.zip_ratio:.2f}x)",
            "xz": f"{file.xz_bytes:,} ({file.xz_ratio:.2f}x)",
            "accuracy": f"{file.accuracy:.4f}",
            "agreement": f"{file.agreement:.2%}",
            "latency median / p90 (ms)": f"{file.latency_median_ms:.3f} / {file.latency_p90_ms:.3f}",
            "speed-up": f"{file.speedup:.2f}x",
        }
        if batch:
            timed = file.batch_median_ms is not None
            row[f"batch {batch} median (ms)"] = f"{file.batch_median_ms:.3f}" if timed else "-"
            row[f"batch {batch} speed-up"] = f"{file.batch_speedup:.2f}x" if file.batch_speedup else "-"
        if outcome.channels is not None:
            row["FLOPs"] = f"{file.flops_ratio:.2f}x"
        rows.append(row)
    return rows


def latency_note(outcome: PruningOutcome) -> str:
    latency = outcome.latency
    return (
        f"Latency: batch 1, median and 90th percentile of {latency.timings[0].runs} runs after warm-up"
        + "".join(f" (batch {t.batch}: {t.runs} runs)" for t in latency.timings[-1:] if t.batch > 1)
        + ", each file in "
        f"its runtime (TFLite files in LiteRT with XNNPACK, ONNX files in onnxruntime) on {latency.threads} thread(s), "
        f"Keras as a tf.function; on {latency.machine}. {latency.sparse_kernels}"
        + "".join(f" {note}." for note in latency.notes)
    )


def calibration_note(outcome: PruningOutcome) -> str:
    """How the int8 files were calibrated, and the warning if too few images of a class were; "" with no int8 file."""
    drawn = next((e.calibration for e in outcome.exports if e.calibration is not None), None)
    if drawn is None:
        return ""
    return f"\n\n{drawn.describe()}." + (f" Warning: {drawn.warning()}." if drawn.warning() else "")


def fallback_note(outcome: PruningOutcome) -> str:
    """Which layers each int8_fallback file keeps in float, and why; "" without one."""
    notes = []
    for file in (f for exported in outcome.exports for f in exported.files if f.fallback is not None):
        chosen = file.fallback
        kept = ", ".join(chosen.layers) if chosen.layers else "no layer (plain int8 was within the loss)"
        measured = (f": validation accuracy {chosen.accuracy:.4f}, the Keras model's {chosen.reference:.4f}"
                    if chosen.accuracy is not None else "")
        missed = " Not within that loss even with every quantized op in float." if chosen.reached is False else ""
        notes.append(f"{display_name(file.format)} keeps {kept} in float ({chosen.rule}{measured}).{missed}")
    return "".join(f"\n\n{note}" for note in notes)


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


def render_files(outcome: PruningOutcome) -> str:
    """The deployable files as a Markdown table, how latency was measured, how int8 was calibrated
    and which layers a float fallback kept."""
    notes = f"{latency_note(outcome)}{calibration_note(outcome)}{fallback_note(outcome)}"
    return f"{markdown_table(file_rows(outcome))}\n\n{notes}"


def render_markdown(summary: RunSummary) -> str:
    stages = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in summary.stage_seconds.items())
    return (
        f"# Pruning run\n\n{render_table(summary)}\n\n## Deployable files\n\n{render_files(summary)}\n\n"
        f"{render_channels(summary.channels)}{render_quantization(summary)}"
        f"## Weights by group\n\nLayers: {summary.sanity.layer_counts()}.\n\n```\n{summary.sanity.group_table()}\n```\n\n"
        f"- Schedule: `{summary.schedule.model_dump_json()}`\n"
        f"- Test images: {summary.pruned.examples}; classes: {', '.join(summary.classes)}\n"
        f"- Pruned model: `{summary.pruned_model}`\n"
        f"- TensorBoard logs of prune-training (loss, accuracy, each layer's sparsity): "
        f"`{summary.training.tensorboard_logs}`; open them with "
        f"`tensorboard --logdir {summary.training.tensorboard_logs}` (installed in the venv) and http://localhost:6006\n"
        f"- Outputs: `{summary.run_dir}`\n"
        f"- Stage wall times: {stages}\n"
    )


@task(cache_policy=NONE)
def publish_report(summary: RunSummary) -> RunSummary:
    """Publish the comparison as Prefect artifacts, then write summary.json.

    Returns:
        The summary as written: its stage_seconds end with the report's own time (all of it
        but the writing of summary.json).
    """
    started = time.perf_counter()
    create_markdown_artifact(key=ARTIFACT_KEY, markdown=render_markdown(summary), description="Baseline vs pruned")
    create_table_artifact(key=f"{ARTIFACT_KEY}-table", table=comparison_rows(summary), description="Baseline vs pruned")
    create_table_artifact(key=f"{ARTIFACT_KEY}-files", table=file_rows(summary), description="Deployable files")
    seconds = {**summary.stage_seconds, "report": round(time.perf_counter() - started, 3)}
    summary = summary.model_copy(update={"stage_seconds": seconds})
    with storage_errors(summary.run_dir, "the run's summary"):
        if summary.quantization_errors is not None and summary.quantization_errors.layers:
            plot_layer_errors(summary.quantization_errors, summary.run_dir / "layer_errors.png")
        path = write_json(summary.run_dir / "summary.json", summary.model_dump(mode="json"))
    run_logger().info("Summary written to %s", path)
    return summary


def sweep_row(result: TargetResult, file: Deployable, gate: SweepConfig) -> dict[str, str]:
    """One line of the sweep's table, one deployable file of one target, formatted for people."""
    problem = gate_problem(result, file, gate)
    return {
        "target": result.point.label(".2f"),
        "format": display_name(file.format),
        "measured sparsity": f"{result.measured_sparsity:.4f}",
        "test accuracy": f"{file.accuracy:.4f}",
        "change": f"{-accuracy_drop(result, file):+.2f} points",
        "bytes": f"{file.raw_bytes:,}",
        "zip-deflated": f"{file.zip_bytes:,} ({file.zip_ratio:.2f}x)",
        "latency (ms)": f"{file.latency_median_ms:.3f}",
        **({f"batch {file.batch} (ms)": f"{file.batch_median_ms:.3f}"} if file.batch_median_ms is not None else {}),
        "FLOPs": f"{file.flops_ratio:.2f}x",
        "gate": "pass" if problem is None else f"fail: {problem}",
    }


def describe_champion(champion: ChampionEvaluation) -> str:
    return (
        f"{display_name(champion.format)}, test accuracy {champion.accuracy:.4f}, "
        f"{champion.zip_bytes:,} B zip-deflated, {champion.latency_ms:.3f} ms"
    )


def describe_candidate(candidate: Candidate | None) -> str:
    if candidate is None:
        return "none"
    result, file = candidate
    return f"sparsity {result.point.label()}, {display_name(file.format)} ({file.zip_bytes:,} B zip-deflated)"


def render_decision(chosen: Candidate | None, decision: Decision) -> str:
    """The gate's choice against the champion: what was decided, and why."""
    lines = [f"Challenger (the gate's choice): {describe_candidate(chosen)}."]
    if decision.champion is not None:
        lines.append(f"Champion (the promoted file, measured in this run): {describe_champion(decision.champion)}.")
    lines.append(f"Decision: {decision.verdict}.")
    lines += [f"- {reason}" for reason in decision.reasons]
    return "\n".join(lines)


def front_row(result: TargetResult, file: Deployable) -> dict[str, str]:
    return {
        "target": result.point.label(".2f"),
        "format": display_name(file.format),
        "test accuracy": f"{file.accuracy:.4f}",
        "zip-deflated": f"{file.zip_bytes:,} ({file.zip_ratio:.2f}x)",
        "latency (ms)": f"{file.latency_median_ms:.3f}",
    }


def outcome_text(trial: Trial) -> str:
    """"completed", "stopped after epoch 2", "repeat (stopped after epoch 2)", "failed"."""
    if trial.stopped_after_epoch is None:
        return trial.outcome
    stopped = f"stopped after epoch {trial.stopped_after_epoch}"
    return stopped if trial.outcome == "stopped" else f"{trial.outcome} ({stopped})"


def trial_row(trial: Trial) -> dict[str, str]:
    return {
        "trial": str(trial.number),
        "point": trial.point.label(".2f"),
        "outcome": outcome_text(trial),
        "val accuracy": "" if trial.val_accuracy is None else f"{trial.val_accuracy:.4f}",
        "smallest file (zip)": "" if trial.zip_bytes is None else f"{trial.zip_bytes:,}",
    }


def render_search(trials: list[Trial]) -> str:
    """The search's trials: how many points were pruned, stopped early, proposed again."""
    count = {kind: sum(t.outcome == kind for t in trials) for kind in ("completed", "stopped", "repeat", "failed")}
    return (
        f"Search: {len(trials)} trials; {count['completed'] + count['stopped']} points pruned "
        f"({count['stopped']} stopped early), {count['repeat']} proposed again, {count['failed']} failed.\n\n"
        + markdown_table([trial_row(trial) for trial in trials])
    )


def render_sweep(
    results: list[TargetResult], chosen: Candidate | None, config: RunConfig, decision: Decision,
    trials: list[Trial] | None = None,
) -> str:
    """The sweep's table as Markdown, its Pareto front, a search's trials, the decision against the
    champion, and what was promoted."""
    search = f"{render_search(trials)}\n\n" if trials else ""
    if not results:
        return f"{search}No target completed."
    table = markdown_table([sweep_row(result, file, config.sweep) for result, file in candidates(results)])
    front = markdown_table([front_row(*candidate) for candidate in pareto_front(results)])
    promoted = OutputLayout(root=config.output_root).promoted
    line = f"Promoted: {describe_candidate(chosen)}, to `{promoted}`" if decision.promote else "Promoted: none"
    return (
        f"{search}Baseline test accuracy {results[0].baseline.accuracy:.4f} (Keras).\n\n{table}\n\n"
        f"Pareto front (no other file is as accurate and as small; the gate's choice is on it):\n\n{front}\n\n"
        f"{render_decision(chosen, decision)}\n\n{line}"
    )


def point_file(result: TargetResult, file: Deployable) -> dict:
    """Which file of which point, for sweep.json (channel_fraction where channels were removed)."""
    return {"target": result.target, **({"channel_fraction": result.channel_fraction} if result.channel_fraction else {}),
            "format": file.format}


def data_url(png: Path) -> str:
    """A PNG as a data: URL, which an image artifact's page shows without reaching any other server."""
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


@task(cache_policy=NONE)
def publish_sweep(
    results: list[TargetResult], chosen: Candidate | None, failures: dict[Point, str], config: RunConfig, run_dir: Path,
    decision: Decision, trials: list[Trial] | None = None,
) -> None:
    """sweep.json, sweep.md and sweep.png in the run's folder, and the table as Prefect artifacts.

    Args:
        failures: point (target, channel fraction) -> why it failed.
        trials: a search's, in order.
    """
    with storage_errors(run_dir, "the sweep's report"):
        write_json(run_dir / "sweep.json", {
            "results": [result.model_dump(mode="json") for result in results],
            "challenger": point_file(*chosen) if chosen else None,
            "decision": {**decision.model_dump(mode="json", exclude={"champion": {"folder", "digest"}}),
                         "verdict": decision.verdict},
            "promoted": point_file(*chosen) if decision.promote else None,
            "failed": {point.label(): why for point, why in failures.items()},
            "front": [point_file(*candidate) for candidate in pareto_front(results)],
            "trials": None if trials is None else [trial.model_dump(mode="json") for trial in trials],
            "gate": config.sweep.model_dump(mode="json"),
        })
        plot = plot_sweep(results, config.sweep, run_dir / "sweep.png") if results else None
        markdown = render_sweep(results, chosen, config, decision, trials)
        write_text(run_dir / "sweep.md", f"# Sparsity sweep\n\n{markdown}\n")
    where = f"- Run folder: `{run_dir}` (sweep.json, sweep.md)\n"
    if results:
        models = ", ".join(
            f"{r.point.label()}: `{r.pruned_model}` and exported files in "
            + ", ".join(f"`{exported.folder}`" for exported in r.exports)
            for r in results
        )
        where += f"- Plot: `{plot}`\n- Models: {models}\n"
    create_markdown_artifact(key=SWEEP_KEY, markdown=f"# Sparsity sweep\n\n{markdown}\n\n{where}", description="Sweep")
    if plot is not None:  # shown in the UI itself, not only as a path on the worker's disk
        create_image_artifact(image_url=data_url(plot), key=f"{SWEEP_KEY}-plot", description="Sweep: accuracy against size and latency")
    if results:
        rows = [sweep_row(result, file, config.sweep) for result, file in candidates(results)]
        create_table_artifact(key=f"{SWEEP_KEY}-table", table=rows, description="Sweep")
    run_logger().info("Sweep report: %s", run_dir / "sweep.md")  # the table is the command's to print, and an artifact
