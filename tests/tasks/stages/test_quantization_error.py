"""Per-layer int8 error: the layer made hard to quantize is named first, and a run without an
int8 file measures nothing."""

import numpy as np
import pandas as pd

from pruneflow.tasks.libs.models import ModelFile, load_model
from pruneflow.tasks.specs.config import ExportSpec
from pruneflow.tasks.stages.quantization_error import measure_errors
from tests.helpers.models import with_a_dead_channel

INT8 = ExportSpec(formats=("int8",), representative_images=16, int8_input_type="int8", int8_output_type="int8")


def test_the_layer_that_int8_hurts_is_named_first(tiny_baseline, tiny_prepared, tmp_path):
    plain, hidden = with_a_dead_channel(tiny_baseline, tmp_path / "plain.h5", huge_weight=False)
    broken, _ = with_a_dead_channel(tiny_baseline, tmp_path / "broken.h5", huge_weight=True)
    images = np.random.default_rng(0).uniform(0, 1, (4, *load_model(tiny_baseline).input_shape[1:])).astype("float32")
    np.testing.assert_allclose(broken.load()(images).numpy(), plain.load()(images).numpy(), atol=1e-5)

    (tmp_path / "plain").mkdir(), (tmp_path / "broken").mkdir()
    before = measure_errors(tmp_path / "plain", plain, tiny_prepared, INT8)
    after = measure_errors(tmp_path / "broken", broken, tiny_prepared, INT8)
    assert after.images == before.images == 12  # the validation split, all 12 (fewer than 16)
    assert [e.op for e in after.layers if e.layer == hidden] == ["FULLY_CONNECTED"]
    worst = after.layers[0]
    assert worst.layer == hidden and worst.rmse > 0.5 and worst.cosine < 0.9
    assert [e.rmse for e in after.layers] == sorted((e.rmse for e in after.layers), reverse=True)
    # Without the huge weight every op quantizes well: small, finite errors (no tensor read after reuse).
    assert all(0 <= e.rmse < 0.05 and e.cosine > 0.999 for e in before.layers), before.layers
    assert {e.op for e in before.layers} == {"CONV_2D", "MAX_POOL_2D", "RESHAPE", "FULLY_CONNECTED", "SOFTMAX"}
    plain_hidden = next(e for e in before.layers if e.layer == hidden)
    assert plain_hidden.rmse < 0.1 and plain_hidden.cosine > 0.99 and worst.rmse > 5 * plain_hidden.rmse
    table = pd.read_csv(tmp_path / "broken" / "layer_errors.csv")
    assert list(table.layer) == [e.layer for e in after.layers] and table.rmse.iloc[0] == worst.rmse


def test_no_int8_file_no_measure(tiny_baseline, tiny_prepared, tmp_path, config_dict):
    from pruneflow.tasks.specs.config import parse_config

    measured = parse_config({**config_dict, "export": {**config_dict["export"], "layer_errors": True}})
    assert measured.layer_errors_spec.formats == ("int8",)
    assert parse_config(config_dict).layer_errors_spec.formats == ()  # the tests' configs leave them off
    float_only = INT8.model_copy(update={"formats": ("float32", "int8_qat", "onnx_int8")})
    assert float_only.post_training_int8().formats == ()
    assert INT8.model_copy(update={"formats": ("int8_sparse",)}).post_training_int8().formats == ("int8",)
    errors = measure_errors(tmp_path, ModelFile.of(tiny_baseline), tiny_prepared, float_only.post_training_int8())
    assert errors.layers == [] and not (tmp_path / "layer_errors.csv").exists()


def test_every_op_can_be_left_in_float_by_its_name(tiny_baseline, tiny_prepared, tmp_path):
    """Each op's tensor as the table names it is a tensor of the int8 file: with all of them left
    in float, the file computes what the Keras model does (no int8 op left, the softmax included)."""
    from pruneflow.tasks.libs.dataset import calibration_draw, split_arrays
    from pruneflow.tasks.libs.litert import Predictor
    from pruneflow.tasks.libs.quantization_error import Int8Debugger

    model = ModelFile.of(tiny_baseline).load()
    errors = measure_errors(tmp_path, ModelFile.of(tiny_baseline), tiny_prepared, INT8).layers
    calibration, _ = calibration_draw(tiny_prepared, 16)
    (tmp_path / "float.tflite").write_bytes(Int8Debugger(model, INT8, calibration).with_float([e.tensor for e in errors]))
    predictor = Predictor(tmp_path / "float.tflite", threads=1, batch=1)
    kinds = {d["dtype"] for d in predictor.interpreter.get_tensor_details()}
    assert np.int8 not in kinds, "an op stayed in int8"
    images, _ = split_arrays(tiny_prepared, "test")
    np.testing.assert_allclose(predictor(images), model.predict(images, verbose=0), atol=1e-5)
