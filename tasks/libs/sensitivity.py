"""Per-layer sparsities proposed from layer sensitivity: the most sensitive layers kept lighter
while the overall target is reached."""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict

from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.libs.artifacts import LayerSensitivity
from pruneflow.tasks.libs.sparsity import tfmot_zeros

STEP = 0.05  # the proposal's grid of per-layer sparsities, between the measured ones


def magnitude_pruned(values: np.ndarray, sparsity: float) -> np.ndarray:
    """`values` with its smallest magnitudes zeroed, as many as TFMOT would zero at `sparsity`."""
    pruned = values.copy().reshape(-1)
    pruned[np.argsort(np.abs(pruned), kind="stable")[: tfmot_zeros(values.size, sparsity)]] = 0
    return pruned.reshape(values.shape)


class Proposal(BaseModel):
    """Per-layer sparsities that reach `target` over the pruned layers' weights."""

    model_config = ConfigDict(frozen=True)

    target: float
    reached: float  # weighted by each layer's prunable weights
    sparsity: dict[str, float]
    expected_drop: float  # the sum of the layers' drops at their proposed sparsity, in points (a rough guide)


def propose(results: list[LayerSensitivity], target: float) -> Proposal:
    """Raise layer sparsities in steps of STEP, each time where a pruned weight costs the least
    accuracy (the drop curve, interpolated), until the weights reach `target` overall.

    No layer goes past the highest sparsity measured: past it nothing is known.

    Raises:
        PruneflowError: the target is out of reach with every layer at its highest measured sparsity.
    """
    total = sum(r.weights for r in results)
    ceiling = {r.layer: max(r.sparsities) for r in results}
    reachable = sum(r.weights * ceiling[r.layer] for r in results) / total
    if reachable + 1e-9 < target:
        raise PruneflowError(
            f"sensitivity: an overall sparsity of {target:g} is out of reach: every layer at its highest measured "
            f"sparsity gives {reachable:.4f}. Add higher sparsities to sensitivity.sparsities."
        )
    chosen = {r.layer: 0.0 for r in results}
    by_layer = {r.layer: r for r in results}

    def reached(sparsities: dict[str, float]) -> float:
        return sum(by_layer[name].weights * s for name, s in sparsities.items()) / total

    def cost(name: str) -> float:
        r, now = by_layer[name], chosen[name]
        step = min(STEP, ceiling[name] - now)
        return max(0.0, r.drop_at(now + step) - r.drop_at(now)) / (r.weights * step)

    while reached(chosen) + 1e-9 < target:
        open_layers = [name for name in chosen if chosen[name] < ceiling[name]]
        name = min(open_layers, key=lambda n: (cost(n), -by_layer[n].weights))
        short = (target - reached(chosen)) * total / by_layer[name].weights  # what this layer alone still needs
        chosen[name] = min(chosen[name] + STEP, ceiling[name], chosen[name] + short)
    # Four decimals, rounded up (never past the ceiling), so that the written proposal still reaches the target.
    written = {name: min(math.ceil(s * 1e4 - 1e-6) / 1e4, ceiling[name]) for name, s in chosen.items()}
    return Proposal(
        target=target, reached=reached(written), sparsity=written,
        expected_drop=sum(by_layer[name].drop_at(s) for name, s in written.items()),
    )


def sensitivity_rows(results: list[LayerSensitivity], proposal: Proposal) -> list[dict[str, str]]:
    """One row per layer: its weights, the drop at each sparsity, the proposed sparsity."""
    rows = []
    for r in results:
        row = {"layer": r.layer, "weights": str(r.weights)}
        row.update({f"drop at {s:g}": f"{d:+.2f}" for s, d in zip(r.sparsities, r.drops())})
        row["proposed"] = f"{proposal.sparsity[r.layer]:g}"
        rows.append(row)
    return rows
