"""The quantize_train stage: pruning-preserving quantization-aware training, for the int8_qat formats.

Post-training int8 quantization (the int8 formats) measures each activation's range on a few
training images; a model that loses too much accuracy that way can instead learn with the
quantization in the loop. TFMOT's Default8BitPrunePreserveQuantizeScheme does this without
undoing the pruning: every zero of the pruned kernels stays zero. The stage fine-tunes the
stripped model this way for `export.qat_epochs`; export_pruned converts the result to int8.

When no format asks for it, the stage stores an empty artifact and trains nothing.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.config import QATSpec
from tasks.dataset import PreparedDataset, load_split
from tasks.errors import PruneflowError
from tasks.log import run_logger
from tasks.models import (
    ModelFile, compile_model, load_model, make_optimizer, outputs_probabilities, require_graph_model, save_model,
)
from tasks.stage import TRAINING_TAG, Stage
from tasks.store import StoredArtifact

if TYPE_CHECKING:
    from tasks.inputs import Preflight


class QuantizedModel(StoredArtifact):
    """The quantization-aware model (`qat.h5`, load it inside TFMOT's quantize_scope), or nothing."""

    trained: bool
    seconds: float = 0.0
    final_val_accuracy: float | None = None

    @property
    def model(self) -> Path:
        return self.folder / "qat.h5"

    def load(self):
        return load_model(self.model, quantization_wrappers=True)


def quantization_aware(model, model_path: Path):
    """The model wrapped for quantization-aware training under the prune-preserving scheme.

    Raises:
        PruneflowError: TFMOT cannot quantize this model (a nested model, a layer it has no
            quantization rule for), with its reason.
    """
    from tasks.runtime import tfmot

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


def train_quantized(out: Path, dataset: PreparedDataset, pruned: ModelFile, qat: QATSpec | None) -> QuantizedModel:
    """Fine-tune the pruned model with int8 quantization simulated, its zeros kept; nothing if `qat` is None."""
    if qat is None:
        return QuantizedModel(folder=out, trained=False)
    from tasks.runtime import keras

    keras.backend.clear_session()
    keras.utils.set_random_seed(qat.seed)
    stripped = pruned.load()
    model = quantization_aware(stripped, pruned.path)
    compile_model(model, make_optimizer(qat), probabilities=outputs_probabilities(stripped))
    run_logger().info("Quantization-aware training for %d epoch(s), learning rate %g", qat.epochs, qat.learning_rate)
    started = time.perf_counter()
    fitted = model.fit(
        load_split(dataset, "train", qat.batch_size, shuffle_seed=qat.shuffle_seed, augment=qat.augment),
        validation_data=load_split(dataset, "val", qat.batch_size), epochs=qat.epochs, verbose=2,
    )
    seconds = time.perf_counter() - started
    save_model(model, out / "qat.h5")
    return QuantizedModel(
        folder=out, trained=True, seconds=seconds, final_val_accuracy=float(fitted.history["val_accuracy"][-1])
    )


def check_quantizable(preflight: Preflight) -> None:
    """When a format asks for quantization-aware training, TFMOT can apply it to the baseline's architecture."""
    config = preflight.config
    if config.export_spec.wants_qat:
        from tasks.runtime import keras

        quantization_aware(keras.models.clone_model(preflight.baseline_model), config.model.baseline)


def describe(quantized: QuantizedModel) -> str:
    if not quantized.trained:
        return "no int8_qat format asked for: nothing trained"
    return f"{quantized.seconds:.1f} s of quantization-aware training; final val accuracy {quantized.final_val_accuracy:.4f}"


quantize_train = Stage(
    "quantize_train", train_quantized, check=check_quantizable, describe=describe, tags=(TRAINING_TAG,)
)
