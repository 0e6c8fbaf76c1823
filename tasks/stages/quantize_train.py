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

from pruneflow.tasks.core.log import run_logger
from pruneflow.tasks.core.stage import TRAINING_TAG, Stage
from pruneflow.tasks.libs.artifacts import PreparedDataset
from pruneflow.tasks.libs.dataset import load_split
from pruneflow.tasks.libs.models import (
    ModelFile,
    compile_model,
    make_optimizer,
    outputs_probabilities,
    save_model,
)
from pruneflow.tasks.specs.config import QATSpec
from pruneflow.tasks.unkeyed.progress import epoch_progress, fit_verbosity

if TYPE_CHECKING:
    from pruneflow.tasks.libs.readings import Readings
from pruneflow.tasks.libs.artifacts import QuantizedModel
from pruneflow.tasks.libs.quantization import quantization_aware


def train_quantized(out: Path, dataset: PreparedDataset, pruned: ModelFile, qat: QATSpec | None) -> QuantizedModel:
    """Fine-tune the pruned model with int8 quantization simulated, its zeros kept; nothing if `qat` is None."""
    if qat is None:
        return QuantizedModel(folder=out, trained=False)
    from pruneflow.tasks.core.runtime import keras

    keras.backend.clear_session()
    keras.utils.set_random_seed(qat.seed)
    stripped = pruned.load()
    model = quantization_aware(stripped, pruned.path)
    compile_model(model, make_optimizer(qat), probabilities=outputs_probabilities(stripped))
    run_logger().info("Quantization-aware training for %d epoch(s), learning rate %g", qat.epochs, qat.learning_rate)
    started = time.perf_counter()
    fitted = model.fit(
        load_split(dataset, "train", qat.batch_size, shuffle_seed=qat.shuffle_seed, augment=qat.augment),
        validation_data=load_split(dataset, "val", qat.batch_size), epochs=qat.epochs, verbose=fit_verbosity(),
        callbacks=[epoch_progress("Quantization-aware training", qat.epochs)],
    )
    seconds = time.perf_counter() - started
    save_model(model, out / "qat.h5")
    return QuantizedModel(
        folder=out, trained=True, seconds=seconds, final_val_accuracy=float(fitted.history["val_accuracy"][-1])
    )


def check_quantizable(readings: Readings) -> None:
    """When a format asks for quantization-aware training, TFMOT can apply it to the baseline's architecture."""
    config = readings.config
    if config.export_spec.wants_qat:
        from pruneflow.tasks.core.runtime import keras

        quantization_aware(keras.models.clone_model(readings.baseline_model), config.model.baseline)


def describe(quantized: QuantizedModel) -> str:
    if not quantized.trained:
        return "no int8_qat format asked for: nothing trained"
    return f"{quantized.seconds:.1f} s of quantization-aware training; final val accuracy {quantized.final_val_accuracy:.4f}"


quantize_train = Stage(
    "quantize_train", train_quantized, check=check_quantizable, describe=describe, tags=(TRAINING_TAG,)
)
