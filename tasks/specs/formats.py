"""The deployable formats, one entry each: what `export.formats` accepts, and all that the export
stages, evaluation, latency, the champion, promotion and the reports need to know of a format.

An entry says what the file is called, how it is made (which stage converts which Keras model,
with which options), which runtime runs it for accuracy and times it (pruneflow.tasks.libs.runtimes),
how the reports name it, and which format the baseline is compared in (its dense counterpart).
Adding a format is an entry here; a new kind of file is also a conversion stage and, for a new
runtime, an entry in the runtimes' registry.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

KERAS = "keras_h5"  # the Keras model itself, among the deployable files and the timed models
KERAS3 = "keras3"  # the pruned model handed back in a Keras 3 baseline's own architecture: made for those only


class Format(BaseModel):
    """One deployable format.

    Attributes:
        name: its value in export.formats (KERAS for the Keras model itself).
        display: how the reports name it.
        file: the file's name in its export folder (its zip-deflated size counts the name too).
        suffix: the promoted file's extension: a promotion stores it as `model<suffix>`.
        made_by: which conversion makes it: "keras" (none: the Keras model), "tflite", "fallback"
            (TFLite int8 with some layers in float, chosen from quantization_error's table), "onnx",
            "keras3" (the tf_keras weights handed back to the Keras 3 baseline's architecture).
        source: the Keras model it is converted from: the stripped one, or quantize_train's
            quantization-aware one.
        runtime: what runs the file for accuracy and latency (a name in libs.runtimes.RUNTIMES).
        dense: the format the baseline (a dense model, not trained for quantization) is exported
            in for comparison; itself for a format that needs neither sparsity nor training.
        sparse: its pruned kernels are stored sparse (TFLite's EXPERIMENTAL_SPARSITY).
        int8: full-integer post-training quantization, calibrated on representative images.
        int16_activations: with int16 activations (16x8): int8 stays for the weights only.
        description: what the file is, for the config's reference and the UI form.
    """

    model_config = ConfigDict(frozen=True)

    name: str
    display: str
    file: str
    suffix: str
    made_by: Literal["keras", "tflite", "fallback", "onnx", "keras3"]
    source: Literal["stripped", "qat"] = "stripped"
    runtime: Literal["keras", "litert", "onnxruntime", "keras3"]
    dense: str
    sparse: bool = False
    int8: bool = False
    int16_activations: bool = False
    description: str = ""

    @property
    def promoted_file(self) -> str:
        """The file's name in a promoted version's folder."""
        return f"model{self.suffix}"


def _tflite(name: str, display: str, dense: str, **options) -> Format:
    return Format(
        name=name, display=f"TFLite {display}", file=f"model_{name}.tflite", suffix=".tflite", made_by="tflite",
        runtime="litert", dense=dense, **options,
    )


def _onnx(name: str, display: str, **options) -> Format:
    return Format(
        name=name, display=f"ONNX {display}", file=f"model_{name}.onnx", suffix=".onnx", made_by="onnx",
        runtime="onnxruntime", dense=name, **options,
    )


FORMATS: dict[str, Format] = {
    entry.name: entry
    for entry in (
        Format(name=KERAS, display="Keras .h5", file="pruned.h5", suffix=".h5", made_by="keras", runtime="keras", dense=KERAS),
        _tflite("float32", "float32", "float32", description="TFLite, run in LiteRT"),
        _tflite("float32_sparse", "float32, sparse", "float32", sparse=True,
                description="float32 with the pruned kernels stored sparse, EXPERIMENTAL_SPARSITY"),
        _tflite("int8", "int8", "int8", int8=True, description="full-integer post-training quantization"),
        _tflite("int8_sparse", "int8, sparse", "int8", int8=True, sparse=True, description="int8 stored sparse"),
        _tflite("int16x8", "int16x8", "int16x8", int8=True, int16_activations=True,
                description="int8 weights, int16 activations (16x8 post-training quantization) for a model that loses "
                "too much in int8; float input and output; LiteRT runs it on its built-in kernels (XNNPACK has none), "
                "slower than int8"),
        _tflite("int8_qat", "int8, QAT", "int8", int8=True, source="qat",
                description="int8 after qat_epochs of pruning-preserving quantization-aware training, for a model that "
                "loses too much accuracy in int8; Sequential or functional models without nested models"),
        _tflite("int8_qat_sparse", "int8, QAT, sparse", "int8", int8=True, sparse=True, source="qat",
                description="int8_qat stored sparse"),
        Format(name="int8_fallback", display="TFLite int8, float fallback", file="model_int8_fallback.tflite",
               suffix=".tflite", made_by="fallback", runtime="litert", dense="int8", int8=True,
               description="int8 with the layers int8 hurts most left in float (export.float_fallback: a count, names or "
               "patterns, or auto: as few as keep the validation accuracy within export.fallback_max_loss points of "
               "the Keras model's); float input and output, so that no quantized input or output costs accuracy"),
        _onnx("onnx", "float32", description="ONNX (tf2onnx), run in onnxruntime; needs the onnx extra, "
              "pip install 'pruneflow[onnx]'"),
        _onnx("onnx_int8", "int8", int8=True, description="ONNX int8: onnxruntime's static quantization, calibrated "
              "like int8"),
        Format(name=KERAS3, display="Keras 3 .keras", file="model.keras", suffix=".keras", made_by="keras3",
               runtime="keras3", dense=KERAS3, description="the pruned model in the Keras 3 baseline's own "
               "architecture, run in Keras 3; made, always, for a baseline that Keras 3 wrote"),
    )
}

# The formats export.formats accepts: every one but the Keras model, which is always deployable, and
# the Keras 3 model, which is made whenever the baseline is a Keras 3 model.
AUTOMATIC = (KERAS, KERAS3)
ExportFormat = Literal[tuple(name for name in FORMATS if name not in AUTOMATIC)]  # type: ignore[valid-type]
# The formats an export makes: those, and the automatic Keras 3 file.
FormatName = Literal[tuple(name for name in FORMATS if name != KERAS)]  # type: ignore[valid-type]


def formats_described() -> str:
    """Every format export.formats accepts, each with its description: the field's documentation."""
    return "; ".join(f"{name} ({fmt.description})" for name, fmt in FORMATS.items() if name not in AUTOMATIC)


def display_name(name: str) -> str:
    """How the reports name a format; its name itself for one no entry has (a history row written
    by another version)."""
    return FORMATS[name].display if name in FORMATS else name


def made_by(maker: str, names) -> tuple[str, ...]:
    """Those of `names` that the conversion `maker` makes, in order."""
    return tuple(name for name in names if FORMATS[name].made_by == maker)


def variants_of(name: str) -> list[str]:
    """The formats built on `name`'s dense counterpart, with the same conversion: what to leave out
    when it cannot be made."""
    entry = FORMATS[name]
    return [f for f, other in FORMATS.items() if other.dense == entry.dense and other.made_by == entry.made_by]
