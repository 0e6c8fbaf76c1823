"""Export to ONNX (tf2onnx, onnxruntime's int8): the files read back with their zeros, run in
onnxruntime, timed, and evaluated beside the TFLite files through the same registries."""

import numpy as np
import pytest

from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.libs import onnx
from pruneflow.tasks.libs.readings import Readings
from pruneflow.tasks.libs.runtimes import RUNTIMES
from pruneflow.tasks.specs.config import ExportSpec, parse_config
from pruneflow.tasks.specs.formats import FORMATS
from pruneflow.tasks.stages.evaluate_exports import evaluate_exports
from pruneflow.tasks.stages.export_onnx import check_onnx_installed, export_onnx
from pruneflow.tasks.stages.export_tflite import export_tflite
from tests.helpers.models import ONE_FORMAT_A_SHAPE, PRUNABLE_KERNELS

ONNX_FORMATS = ExportSpec(formats=("onnx", "onnx_int8"), representative_images=16, int8_input_type="int8",
                          int8_output_type="int8")


@ONE_FORMAT_A_SHAPE
def test_every_model_shape_exports_to_onnx_with_its_pruned_kernels_still_sparse(pruned_variant, tmp_path):
    """The pruned model (sparsity 0.5) of each shape and save format: a float32 and an int8 ONNX
    file, each holding the pruned kernels with their zeros; the float32 file computes what the
    Keras model does."""
    v = pruned_variant
    sanity = v.sanity()
    (tmp_path / "export").mkdir()
    exported = export_onnx(tmp_path / "export", v.stripped.file, v.dataset, ONNX_FORMATS, sanity, None)

    assert [f.format for f in exported.files] == ["onnx", "onnx_int8"]
    assert [f.file for f in exported.files] == [FORMATS["onnx"].file, FORMATS["onnx_int8"].file]
    files = {f.format: f for f in exported.files}
    for f in exported.files:
        path = exported.path(f)
        assert f.raw_bytes == path.stat().st_size and f.weights == onnx.weight_tensors(path)
        assert [(t.layer, t.size) for t in f.sparsity] == [(t.layer, t.size) for t in sanity.tensors]
        assert len(f.sparsity) == PRUNABLE_KERNELS and all(t.sparsity >= 0.48 and t.passed for t in f.sparsity)
    assert files["onnx_int8"].raw_bytes < 0.5 * files["onnx"].raw_bytes  # one byte a weight

    model = v.stripped.file.load()
    images = np.random.default_rng(0).random((5, *model.input_shape[1:]), dtype=np.float32)
    predict = RUNTIMES["onnxruntime"].predictor(exported.path(files["onnx"]), 1, 4)
    np.testing.assert_allclose(predict(images), model(images, training=False).numpy(), atol=1e-5)

    (tmp_path / "evaluation").mkdir()
    evaluation = evaluate_exports(tmp_path / "evaluation", [exported], v.stripped.file, None, v.dataset, batch_size=5)
    assert evaluation.of("onnx").agreement == 1.0 and evaluation.of("onnx_int8").agreement >= 0.8


def test_onnx_and_tflite_files_are_evaluated_and_timed_together(tiny_baseline, tiny_prepared, tmp_path):
    from pruneflow.tasks.libs.models import ModelFile

    baseline = ModelFile.of(tiny_baseline)
    spec = ExportSpec(formats=("float32", "onnx"), representative_images=4, int8_input_type="int8",
                      int8_output_type="int8")
    for name in ("tflite", "onnx", "evaluation"):
        (tmp_path / name).mkdir()
    exports = [
        export_tflite(tmp_path / "tflite", baseline, tiny_prepared, spec.made_by("tflite"), None, None),
        export_onnx(tmp_path / "onnx", baseline, tiny_prepared, spec.made_by("onnx"), None, None),
    ]
    assert [[f.format for f in e.files] for e in exports] == [["float32"], ["onnx"]]
    evaluation = evaluate_exports(tmp_path / "evaluation", exports, baseline, None, tiny_prepared, batch_size=8)
    assert evaluation.of("float32").accuracy == evaluation.of("onnx").accuracy
    assert evaluation.of("onnx").agreement == 1.0
    image = np.zeros((1, *tiny_prepared.image_shape), np.float32)
    call = RUNTIMES[FORMATS["onnx"].runtime].timed(exports[1].path(exports[1].files[0]), image, 1)
    assert call()[0].shape == (1, len(tiny_prepared.classes))


def test_a_file_onnxruntime_cannot_load_is_named(tmp_path):
    path = tmp_path / "model_onnx.onnx"
    path.write_bytes(b"not an ONNX file")
    with pytest.raises(PruneflowError, match=r"model_onnx\.onnx: onnxruntime cannot load it"):
        RUNTIMES["onnxruntime"].predictor(path, 1, 1)


def test_onnx_formats_without_the_extra_are_refused_before_any_stage(config_dict, monkeypatch):
    import importlib.util

    config = parse_config({**config_dict, "export": {"formats": ["int8", "onnx"]}})
    check_onnx_installed(Readings(config))  # installed here: accepted
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tf2onnx" else find_spec(name, *a))
    with pytest.raises(PruneflowError, match=r"export.formats: the onnx formats need the `onnx` extra: .*tf2onnx missing"):
        check_onnx_installed(Readings(config))
    check_onnx_installed(Readings(parse_config({**config_dict, "export": {"formats": ["int8"]}})))  # none asked for
