"""Pruning-preserving quantization-aware training: the model wrapped for it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.libs.models import (
    require_graph_model,
)

if TYPE_CHECKING:
    pass



def quantization_aware(model, model_path: Path):
    """The model wrapped for quantization-aware training under the prune-preserving scheme.

    Raises:
        PruneflowError: TFMOT cannot quantize this model (a nested model, a layer it has no
            quantization rule for), with its reason.
    """
    from pruneflow.tasks.core.runtime import tfmot

    require_graph_model(model, model_path)
    quantization = tfmot.quantization.keras
    try:
        return quantization.quantize_apply(
            quantization.quantize_annotate_model(model), tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme()
        )
    except (ValueError, RuntimeError, TypeError, KeyError) as error:
        raise PruneflowError(
            f"{model_path}: the int8_qat formats need quantization-aware training, which TFMOT cannot apply to this "
            f"model: {error}. Leave int8_qat and int8_qat_sparse out of export.formats (int8 needs no training)."
        ) from None
