"""The formats registry: every entry complete and consistent, and the config taking its names."""

import pytest

from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.libs.runtimes import RUNTIMES
from pruneflow.tasks.specs.config import ExportSpec, parse_config
from pruneflow.tasks.specs.formats import AUTOMATIC, FORMATS, KERAS, KERAS3, display_name, made_by, variants_of


def test_every_format_names_a_runtime_and_a_dense_counterpart_that_exist():
    for fmt in FORMATS.values():
        assert fmt.runtime in RUNTIMES, fmt.name
        dense = FORMATS[fmt.dense]
        assert dense.dense == dense.name and not dense.sparse and dense.source == "stripped", fmt.name
        assert fmt.file.endswith(fmt.suffix) and fmt.promoted_file == f"model{fmt.suffix}"
    assert len({fmt.file for fmt in FORMATS.values()}) == len(FORMATS)  # one folder holds a model's files


def test_the_config_accepts_every_format_but_the_automatic_ones_and_nothing_else(config_dict):
    exportable = [name for name in FORMATS if name not in AUTOMATIC]
    assert parse_config({**config_dict, "export": {"formats": exportable}}).export.formats == exportable
    for wrong in (KERAS, KERAS3, "float16"):
        with pytest.raises(PruneflowError, match=r"export.formats.0: Input should be"):
            parse_config({**config_dict, "export": {"formats": [wrong]}})


def test_a_spec_splits_by_conversion_and_the_baseline_takes_the_dense_counterparts():
    spec = ExportSpec(formats=("int8_qat_sparse", "onnx_int8", "float32_sparse", "onnx"), representative_images=4,
                      int8_input_type="int8", int8_output_type="int8")
    assert spec.made_by("tflite").formats == ("int8_qat_sparse", "float32_sparse") == made_by("tflite", spec.formats)
    assert spec.made_by("onnx").formats == ("onnx_int8", "onnx")
    assert spec.dense().formats == ("int8", "onnx_int8", "float32", "onnx")
    assert spec.wants_qat and not spec.made_by("onnx").wants_qat
    keras3 = spec.with_keras3()
    assert keras3.made_by("keras3").formats == (KERAS3,) == keras3.dense().made_by("keras3").formats
    assert variants_of("int8_sparse") == ["int8", "int8_sparse", "int8_qat", "int8_qat_sparse"]


def test_a_format_no_entry_has_is_shown_by_its_name():
    assert display_name("int8_qat") == "TFLite int8, QAT" and display_name("gone_format") == "gone_format"
