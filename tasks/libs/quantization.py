"""Pruning-preserving quantization-aware training: the model wrapped for it."""

from __future__ import annotations

from pathlib import Path

from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.libs.models import quantize_objects, require_graph_model


def quantization_aware(model, model_path: Path):
    """The model wrapped for quantization-aware training under the prune-preserving scheme.

    A weightless layer TFMOT has no rule for (a Rescaling) has its output quantized and nothing
    else (OutputOnlyQuantizeConfig, see models.quantize_objects); every other layer as TFMOT does.

    Raises:
        PruneflowError: TFMOT cannot quantize this model (a nested model, a layer with weights it
            has no quantization rule for), with its reason.
    """
    from pruneflow.tasks.core.runtime import keras, tfmot

    require_graph_model(model, model_path)
    quantization = tfmot.quantization.keras
    registry = quantization.default_8bit.Default8BitQuantizeRegistry()
    output_only = quantize_objects()["OutputOnlyQuantizeConfig"]

    def annotate(layer):
        """The layer itself (clone_model keeps it, weights and all), annotated if TFMOT has no rule for it."""
        if layer.weights or isinstance(layer, keras.layers.InputLayer) or registry.supports(layer):
            return layer
        return quantization.quantize_annotate_layer(layer, quantize_config=output_only())

    try:
        with quantization.quantize_scope(quantize_objects()):
            annotated = quantization.quantize_annotate_model(keras.models.clone_model(model, clone_function=annotate))
            return quantization.quantize_apply(
                annotated, tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme()
            )
    except (ValueError, RuntimeError, TypeError, KeyError) as error:
        raise PruneflowError(
            f"{model_path}: the int8_qat formats need quantization-aware training, which TFMOT cannot apply to this "
            f"model: {error}. Leave int8_qat and int8_qat_sparse out of export.formats (int8 needs no training)."
        ) from None
