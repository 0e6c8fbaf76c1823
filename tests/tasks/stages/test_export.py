"""Export to TFLite, the files read back, and each file run in the interpreter on the test split."""

import numpy as np
import pytest

from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.libs.artifacts import SanityReport, WeightTensor
from pruneflow.tasks.libs.file_kernels import check_kernels, match_kernels
from pruneflow.tasks.libs.litert import Predictor
from pruneflow.tasks.libs.models import ModelFile
from pruneflow.tasks.libs.sparsity import TensorSparsity
from pruneflow.tasks.libs.tflite import weight_tensors
from pruneflow.tasks.specs.config import ExportSpec
from pruneflow.tasks.stages.evaluate_exports import evaluate_exports
from pruneflow.tasks.stages.export_tflite import export_tflite
from tests.helpers.models import ONE_FORMAT_A_SHAPE, PRUNABLE_KERNELS

ALL_FORMATS = ExportSpec(
    formats=("float32", "float32_sparse", "int8", "int8_sparse"), representative_images=16,
    int8_input_type="int8", int8_output_type="int8",
)


@ONE_FORMAT_A_SHAPE
def test_every_model_shape_exports_to_every_format_with_its_pruned_kernels_still_sparse(pruned_variant, tmp_path):
    """The pruned model (sparsity 0.5) of each shape and save format: four files, each measured,
    each holding the three pruned kernels at 0.5 or more, each run in the interpreter."""
    v = pruned_variant
    sanity = v.sanity()
    (tmp_path / "export").mkdir()
    exported = export_tflite(tmp_path / "export", v.stripped.file, v.dataset, ALL_FORMATS, sanity, None)

    assert [f.format for f in exported.files] == list(ALL_FORMATS.formats)
    files = {f.format: f for f in exported.files}
    for f in exported.files:
        path = exported.path(f)
        assert f.raw_bytes == path.stat().st_size and 0 < f.xz_bytes < f.raw_bytes
        assert f.weights == weight_tensors(path)
        assert [(t.layer, t.size) for t in f.sparsity] == [(t.layer, t.size) for t in sanity.tensors]
        assert len(f.sparsity) == PRUNABLE_KERNELS and all(t.sparsity >= 0.48 for t in f.sparsity)
    # Sparse storage keeps the non-zeros only; int8 stores one byte a weight.
    assert files["float32_sparse"].raw_bytes < files["float32"].raw_bytes
    assert all(w.stored_sparse for w in files["float32_sparse"].weights if w.size > 64)
    assert files["int8"].raw_bytes < 0.4 * files["float32"].raw_bytes
    assert (tmp_path / "export" / "export.json").is_file()
    # The int8 files' calibration: 16 training images, as many of each class as the split allows.
    assert exported.calibration.images == 16 and set(exported.calibration.per_class.values()) == {8}

    # The float32 file computes what the Keras model does; the int8 file takes int8 input.
    model = v.stripped.file.load()
    images = np.random.default_rng(0).random((5, *model.input_shape[1:]), dtype=np.float32)
    tflite = Predictor(exported.path(files["float32"]), threads=1, batch=4)
    np.testing.assert_allclose(tflite(images), model(images, training=False).numpy(), atol=1e-5)
    int8 = Predictor(exported.path(files["int8"]), threads=1, batch=4)
    assert int8.input["dtype"] == np.int8 and int8.input["quantization"][0] > 0

    (tmp_path / "evaluation").mkdir()
    evaluation = evaluate_exports(tmp_path / "evaluation", [exported], v.stripped.file, None, v.dataset, batch_size=5)
    assert [e.format for e in evaluation.files] == list(ALL_FORMATS.formats)
    assert evaluation.of("float32").agreement == 1.0 and evaluation.of("float32_sparse").agreement == 1.0
    assert all(e.examples == v.dataset.counts["test"] for e in evaluation.files)
    from pruneflow.tasks.libs.dataset import load_split
    from pruneflow.tasks.libs.models import evaluate

    keras_accuracy, _ = evaluate(model, load_split(v.dataset, "test", 8))
    assert evaluation.of("float32").accuracy == pytest.approx(keras_accuracy)


@pytest.mark.parametrize("io_type", ["uint8", "float32"])
def test_an_int8_file_is_fed_as_its_own_input_details_say(io_type, tiny_baseline, tiny_prepared, tmp_path):
    """Whatever the int8 file's input type, the evaluation quantizes images (or not) from the
    file's own scale and zero point, and the file predicts what its Keras model does."""
    spec = ALL_FORMATS.model_copy(update={"formats": ("int8",), "int8_input_type": io_type, "int8_output_type": io_type})
    baseline = ModelFile.of(tiny_baseline)
    exported = export_tflite(tmp_path, baseline, tiny_prepared, spec, None, None)
    predictor = Predictor(exported.path(exported.files[0]), threads=1, batch=8)
    assert predictor.input["dtype"] == np.dtype(io_type) and predictor.output["dtype"] == np.dtype(io_type)
    assert exported.files[0].sparsity == []  # a dense model's export is measured, not checked
    (tmp_path / "evaluation").mkdir()
    evaluation = evaluate_exports(tmp_path / "evaluation", [exported], baseline, None, tiny_prepared, batch_size=8)
    assert evaluation.files[0].agreement >= 0.9


def test_a_16x8_file_keeps_int8_weights_and_int16_activations_and_runs(tiny_baseline, tiny_prepared, tmp_path):
    spec = ALL_FORMATS.model_copy(update={"formats": ("int8", "int16x8")})
    baseline = ModelFile.of(tiny_baseline)
    exported = export_tflite(tmp_path, baseline, tiny_prepared, spec, None, None)
    files = {f.format: exported.path(f) for f in exported.files}
    predictor = Predictor(files["int16x8"], threads=1, batch=8)
    assert predictor.input["dtype"] == np.float32 and predictor.output["dtype"] == np.float32  # it quantizes itself
    kinds = {d["dtype"] for d in predictor.interpreter.get_tensor_details()}
    assert np.int16 in kinds and np.int8 in kinds  # activations in int16, weights in int8
    kernels = [w for w in weight_tensors(files["int16x8"]) if w.size > 64]
    assert kernels and [w.size for w in kernels] == [w.size for w in weight_tensors(files["int8"]) if w.size > 64]
    (tmp_path / "evaluation").mkdir()
    evaluation = evaluate_exports(tmp_path / "evaluation", [exported], baseline, None, tiny_prepared, batch_size=8)
    assert evaluation.of("int16x8").agreement >= evaluation.of("int8").agreement and evaluation.of("int16x8").agreement >= 0.9
    assert exported.calibration.images == 16  # calibrated like int8


def test_an_empty_format_list_exports_nothing(tiny_baseline, tiny_prepared, tmp_path):
    spec = ALL_FORMATS.model_copy(update={"formats": ()})
    assert export_tflite(tmp_path, ModelFile.of(tiny_baseline), tiny_prepared, spec, None, None).files == []


def kernel(layer: str, size: int, sparsity: float = 0.8) -> TensorSparsity:
    zeros = round(size * sparsity)
    return TensorSparsity(
        layer=layer, weight="kernel", size=size, zeros=zeros, sparsity=zeros / size, passed=True, target=sparsity
    )


def weight(name: str, size: int, zeros: int) -> WeightTensor:
    return WeightTensor(name=name, shape=[size], size=size, zeros=zeros, stored_sparse=False)


SANITY = SanityReport(folder=".", expected=0.8, tolerance=0.01, tensors=[
    kernel("conv", 100), kernel("conv_1", 100), kernel("backbone/dense", 400),
])


def test_kernels_are_found_by_their_layer_path_not_by_a_name_that_contains_it():
    weights = [
        weight("model/conv_1/Relu;model/conv_1/Conv2D", 100, 80),
        weight("model/conv/Conv2D", 100, 81),
        weight("model/head/dense/MatMul", 400, 400),  # another layer named dense, outside the backbone
        weight("model/backbone/dense/MatMul;model/backbone/dense/BiasAdd", 400, 320),
    ]
    matched = match_kernels(SANITY, weights)
    assert [(m.layer, m.zeros) for m in matched] == [("conv", 81), ("conv_1", 80), ("backbone/dense", 320)]


def test_a_kernel_renamed_by_the_converter_is_found_as_the_one_tensor_of_its_size():
    weights = [weight("tfl.pseudo_qconst", 400, 330), weight("model/conv/Conv2D", 100, 80),
               weight("model/conv_1/Conv2D", 100, 80)]
    assert [m.zeros for m in match_kernels(SANITY, weights)] == [80, 80, 330]


def test_sparsity_lost_in_a_file_fails_naming_the_tensor():
    weights = [weight("m/conv/Conv2D", 100, 80), weight("m/conv_1/Conv2D", 100, 20), weight("m/backbone/dense/MatMul", 400, 320)]
    with pytest.raises(PruneflowError, match=r"int8 of x\.h5, tolerance 0\.01: 1 pruned tensors lost their sparsity: "
                                             r"conv_1 kernel at 0\.2000 \(target 0\.8\)\. .*leave int8 out"):
        check_kernels("int8", SANITY, weights, model_path="x.h5")


def test_weights_lost_in_a_file_fail_too():
    """More zeros in the file than in the Keras kernel, beyond the tolerance: the file dropped
    weights (TFLite's int8_sparse did so for a Dense layer with 8 or 12 inputs)."""
    weights = [weight("m/conv/Conv2D", 100, 81), weight("m/conv_1/Conv2D", 100, 80), weight("m/backbone/dense/MatMul", 400, 390)]
    with pytest.raises(PruneflowError, match=r"1 tensors lost weights .*backbone/dense kernel at 0\.9750 against 0\.8000"):
        check_kernels("int8_sparse", SANITY, weights, model_path="x.h5")
    assert [m.passed for m in match_kernels(SANITY, weights)] == [True, True, False]  # one more zero is within tolerance


def test_a_kernel_missing_from_the_file_is_named():
    weights = [weight("m/conv/Conv2D", 100, 80), weight("m/backbone/dense/MatMul", 400, 330)]
    with pytest.raises(PruneflowError, match="no single tensor of the file matches conv_1 kernel"):
        check_kernels("float32", SANITY, weights, model_path="x.h5")


def test_kernels_of_one_size_are_told_apart_by_shape_and_a_layer_named_like_its_model_by_position():
    sanity = SanityReport(folder=".", expected=0.5, tolerance=0.01, tensors=[
        TensorSparsity(layer="dense", weight="kernel", size=64, zeros=32, sparsity=0.5, passed=True, shape=[16, 4]),
        TensorSparsity(layer="conv", weight="kernel", size=64, zeros=32, sparsity=0.5, passed=True, shape=[2, 2, 4, 4]),
    ])
    weights = [  # the model is named "dense": every op path starts with it
        WeightTensor(name="dense/conv/Conv2D", shape=[4, 2, 2, 4], size=64, zeros=32, stored_sparse=False),
        WeightTensor(name="StatefulPartitionedCall:01", shape=[4, 16], size=64, zeros=33, stored_sparse=True),
    ]
    assert [(m.layer, m.zeros, m.shape) for m in match_kernels(sanity, weights)] == [
        ("dense", 33, [4, 16]), ("conv", 32, [4, 2, 2, 4]),
    ]


def test_a_file_the_interpreter_cannot_run_is_named(tmp_path):
    """A TFLite file holding a TensorFlow op (a Select TF op, here MatrixDeterminant) needs the Flex
    delegate, which LiteRT does not bundle: it refuses to run the file."""
    from pruneflow.tasks.core.runtime import keras, tf
    from pruneflow.tasks.libs.litert import Predictor

    inputs = keras.Input((4, 4, 1))
    determinant = keras.layers.Lambda(lambda x: tf.reshape(tf.linalg.det(tf.reshape(x, (-1, 4, 4))), (-1, 1)))(inputs)
    converter = tf.lite.TFLiteConverter.from_keras_model(keras.Model(inputs, keras.layers.Dense(2)(determinant)))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    path = tmp_path / "model_float32.tflite"
    path.write_bytes(converter.convert())
    with pytest.raises(PruneflowError, match=r"model_float32\.tflite: LiteRT cannot run it: .*Flex.*Leave this format out"):
        Predictor(path, threads=1, batch=4)


def determinant(x):
    """Each 4x4 image's determinant, one column: a TensorFlow op TFLite has no kernel for."""
    from pruneflow.tasks.core.runtime import tf

    return tf.reshape(tf.linalg.det(tf.reshape(x, (-1, 4, 4))), (-1, 1))


def test_a_model_the_converter_cannot_convert_is_named_with_the_formats_to_leave_out(tiny_prepared, tmp_path):
    """A TensorFlow op with no TFLite kernel (MatrixDeterminant; SELECT_TF_OPS is not asked for,
    LiteRT could not run it): the model's file, the format, the converter's first line and the
    formats to leave out; no file is left behind."""
    from pruneflow.tasks.core.runtime import keras
    from pruneflow.tasks.libs.models import save_model

    inputs = keras.Input((4, 4, 1))
    path = save_model(keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Lambda(determinant)(inputs))), tmp_path / "det.h5")
    spec = ALL_FORMATS.model_copy(update={"formats": ("float32",)})
    (tmp_path / "export").mkdir()
    with pytest.raises(PruneflowError, match=r"det\.h5: TFLite cannot convert the model to float32: .*MatrixDeterminant.*"
                                             r"Leave float32, float32_sparse out of export\.formats"):
        export_tflite(tmp_path / "export", ModelFile.of(path, trust_code=True), tiny_prepared, spec, None, None)
    assert list((tmp_path / "export").iterdir()) == []
