"""The sensitivity flow: how much validation accuracy each selected layer loses when pruned alone.

The inputs are checked and the dataset prepared as in a run; then layer_sensitivity is mapped
over the layers the config selects (one cached task run per layer: a re-run measures only the
layers whose inputs changed). The flow proposes per-layer sparsities that reach the schedule's
final sparsity over the pruned weights, keeping the most sensitive layers lighter, and writes
the table, the heatmap, the Prefect artifact and a copy of the config with the proposal in
layers.sparsity, which `pruneflow run` takes as it is.
"""

from __future__ import annotations

from glob import escape
from pathlib import Path

import yaml
from prefect import flow, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import quote
from pydantic import BaseModel, ConfigDict

from pruneflow.flows.graph import start_run, tf_keras_baseline
from pruneflow.flows.running import run_stage
from pruneflow.flows.user_errors import quiet_user_errors
from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.core.files import atomic_path, write_json
from pruneflow.tasks.libs.artifacts import LayerSensitivity
from pruneflow.tasks.libs.sensitivity import Proposal, propose, sensitivity_rows
from pruneflow.tasks.report.plot import plot_sensitivity
from pruneflow.tasks.report.summary import markdown_table
from pruneflow.tasks.specs.config import RunConfig
from pruneflow.tasks.stages.layer_sensitivity import layer_sensitivity
from pruneflow.tasks.stages.prepare_dataset import prepare_dataset
from pruneflow.tasks.unkeyed import progress

ARTIFACT_KEY = "pruneflow-sensitivity"


class SensitivityReport(BaseModel):
    """What the flow measured and proposes, and where it wrote it."""

    model_config = ConfigDict(frozen=True)

    layers: list[LayerSensitivity]
    proposal: Proposal
    table: Path
    heatmap: Path
    proposed_config: Path

    def render(self) -> str:
        p = self.proposal
        return (
            f"Validation accuracy lost (points) with each layer pruned alone, no fine-tuning "
            f"(dense: {self.layers[0].dense_accuracy:.4f}):\n{markdown_table(sensitivity_rows(self.layers, p))}\n\n"
            f"Proposed per-layer sparsities reach {p.reached:.4f} over the pruned weights (target {p.target:g}).\n"
            f"Table: {self.table}\nHeatmap: {self.heatmap}\nConfig with the proposal: {self.proposed_config}"
        )


def proposed_config(config: RunConfig, proposal: Proposal) -> dict:
    """The config with the proposal in layers.sparsity, each layer named by its exact path; a
    layer proposed at 0 goes to layers.exclude instead (wrapped, it would prune nothing)."""
    data = config.model_dump(mode="json")
    layers = data["layers"]
    layers["sparsity"] = {escape(layer): s for layer, s in proposal.sparsity.items() if s > 0}
    layers["exclude"] += [escape(layer) for layer, s in proposal.sparsity.items() if s == 0]
    return data


def write_outputs(config: RunConfig, run_dir: Path, results: list[LayerSensitivity], proposal: Proposal) -> SensitivityReport:
    rows = sensitivity_rows(results, proposal)
    table = run_dir / "sensitivity.md"
    with atomic_path(table) as tmp:
        tmp.write_text(markdown_table(rows) + "\n")
    write_json(run_dir / "sensitivity.json", {
        "layers": [r.model_dump(mode="json", exclude={"folder", "digest"}) for r in results],
        "proposal": proposal.model_dump(mode="json"),
    })
    heatmap = plot_sensitivity(results, proposal, run_dir / "sensitivity.png")
    proposed = run_dir / "proposed-config.yaml"
    with atomic_path(proposed) as tmp:
        tmp.write_text(yaml.safe_dump(proposed_config(config, proposal), sort_keys=False))
    return SensitivityReport(layers=results, proposal=proposal, table=table, heatmap=heatmap, proposed_config=proposed)


# One worker: each layer's task loads its own copy of the model, and TensorFlow's Keras session
# is per process. The map still makes one task run per layer, each cached on its own.
@flow(name="sensitivity", task_runner=ThreadPoolTaskRunner(max_workers=1))
def sensitivity_flow(config: RunConfig, target: float | None = None) -> SensitivityReport:
    """Prune each selected layer alone to each of sensitivity.sparsities and propose per-layer sparsities.

    Args:
        target: the overall sparsity the proposal reaches; default: the schedule's final sparsity.
    """
    quiet_user_errors()  # before the first user error this flow can raise
    if config.layers.m_by_n is not None:
        raise PruneflowError(
            f"layers.m_by_n {list(config.layers.m_by_n)} prunes every layer to the same m/n: there is no per-layer "
            "sparsity to propose. Remove layers.m_by_n to measure the layers' sensitivity."
        )
    run = start_run(config)
    store = run.layout.store
    dataset = run_stage(prepare_dataset, store, listing=quote(run.inputs.listing), shape=config.dataset.shape)
    layers = list(run.inputs.plan.pruned)  # planned by check_inputs, in the model's order
    futures = layer_sensitivity.task.map(
        store=unmapped(store), model=unmapped(tf_keras_baseline(run, dataset)), dataset=unmapped(dataset), layer=layers,
        sparsities=unmapped(tuple(config.sensitivity.sparsities)), batch_size=unmapped(config.dataset.batch_size),
    )
    results = []
    for future, layer in zip(futures, layers):  # one at a time (max_workers=1): in order
        results.append(future.result())
        progress.report("layer", name=layer, done=len(results), total=len(layers))
    proposal = propose(results, run.inputs.schedule.final_sparsity if target is None else target)
    report = write_outputs(config, run.run_dir, results, proposal)
    create_markdown_artifact(
        key=ARTIFACT_KEY, description="Layer sensitivity", markdown=f"# Layer sensitivity\n\n{report.render()}"
    )
    return report
