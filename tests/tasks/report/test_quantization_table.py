"""The report's int8 error table: the worst layers, and every layer the fallback file keeps in float."""

from pathlib import Path

from pruneflow.tasks.libs.artifacts import ExportedFile, ExportedModels, FloatFallback, LayerError, QuantizationErrors
from pruneflow.tasks.libs.outcome import PruningOutcome
from pruneflow.tasks.report.summary import QUANTIZATION_ROWS, render_quantization


def outcome_with(fallback: FloatFallback | None) -> PruningOutcome:
    layers = [LayerError(layer=f"layer_{i}", op="CONV_2D", tensor=f"t{i}", elements=8, rmse=1.0 / (i + 1), cosine=0.9)
              for i in range(QUANTIZATION_ROWS + 5)]
    errors = QuantizationErrors(folder=Path("/nowhere"), layers=layers, images=50)
    files = [ExportedFile.model_construct(format="int8_fallback", fallback=fallback)]
    return PruningOutcome.model_construct(quantization_errors=errors, exports=[ExportedModels.model_construct(files=files)])


def test_the_table_shows_the_worst_layers_and_marks_those_kept_in_float_even_beyond_them():
    kept = FloatFallback(rule="auto, within 0.5 points", layers=["layer_12", "layer_0"], tensors=["t12", "t0"])
    table = render_quantization(outcome_with(kept))
    rows = [line for line in table.splitlines() if line.startswith("| layer_")]
    assert [row.split("|")[1].strip() for row in rows] == [f"layer_{i}" for i in range(QUANTIZATION_ROWS)] + ["layer_12"]
    assert [row.split("|")[-2].strip() for row in rows] == ["float"] + [""] * (QUANTIZATION_ROWS - 1) + ["float"]
    assert "and every layer int8_fallback keeps in float" in table

    plain = render_quantization(outcome_with(None))  # no fallback file: the worst only, no column for it
    assert len([line for line in plain.splitlines() if line.startswith("| layer_")]) == QUANTIZATION_ROWS
    assert "int8_fallback" not in plain
