"""The strip stage: the pruning wrappers removed; the stripped model must predict what the wrapped one did."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pruneflow.tasks.core.stage import Stage
from pruneflow.tasks.libs.artifacts import PreparedDataset
from pruneflow.tasks.libs.dataset import load_split
from pruneflow.tasks.libs.models import (
    load_model,
    save_model,
)

if TYPE_CHECKING:
    pass
from pruneflow.tasks.libs.artifacts import StrippedModel, TrainedModel

# Stripping only removes wrappers, so outputs should agree to float rounding.
STRIP_ATOL = 1e-5
STRIP_SAMPLE = 32  # test images on which the stripped model must predict what the wrapped one did


def strip_wrappers(wrapped_path: Path, sample, out_path: Path) -> float:
    """Remove the pruning wrappers, check the outputs did not change, save without optimizer.

    Returns:
        The largest change in the model's outputs on `sample`.

    Raises:
        RuntimeError: the stripped model's predictions differ from the wrapped model's.
    """
    from pruneflow.tasks.core.runtime import keras, tfmot

    keras.backend.clear_session()
    wrapped = load_model(wrapped_path, pruning_wrappers=True)
    stripped = tfmot.sparsity.keras.strip_pruning(wrapped)
    before = wrapped(sample, training=False).numpy()
    after = stripped(sample, training=False).numpy()
    diff = float(np.max(np.abs(before - after)))
    if diff > STRIP_ATOL:
        raise RuntimeError(f"stripping changed the model's outputs by up to {diff:g} (> {STRIP_ATOL:g})")
    save_model(stripped, out_path)
    return diff


def strip_model(out: Path, trained: TrainedModel, dataset: PreparedDataset) -> StrippedModel:
    """Remove the pruning wrappers; the stripped model must predict what the wrapped one did."""
    sample, _ = next(iter(load_split(dataset, "test", STRIP_SAMPLE)))
    return StrippedModel(folder=out, max_abs_diff=strip_wrappers(trained.wrapped_model, sample, out / "pruned.h5"))
strip = Stage(
    "strip", strip_model,
    describe=lambda stripped: f"saved to {stripped.model} (max output change {stripped.max_abs_diff:.2g})",
)
