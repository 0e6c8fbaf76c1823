"""The int8_fallback file: the layer int8 breaks is kept in float, chosen automatically, by count
or by name, and the file then holds the Keras model's accuracy where plain int8 loses it."""

import numpy as np
import pytest

from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.libs.dataset import split_arrays
from pruneflow.tasks.libs.litert import Predictor
from pruneflow.tasks.specs.config import ExportSpec, FallbackSpec
from pruneflow.tasks.stages.export_fallback import export_fallback
from pruneflow.tasks.stages.export_tflite import export_tflite
from pruneflow.tasks.stages.quantization_error import measure_errors
from tests.helpers.models import with_a_dead_channel

SPEC = ExportSpec(formats=("int8_fallback",), representative_images=16, int8_input_type="int8", int8_output_type="int8")


def accuracy(path, dataset, split="val") -> float:
    images, labels = split_arrays(dataset, split)
    return float(np.mean(np.argmax(Predictor(path, threads=1, batch=8)(images), axis=1) == labels))


@pytest.fixture(scope="module")
def broken(tiny_baseline, tiny_prepared, tmp_path_factory):
    """The tiny baseline with a weight int8 cannot hold, its int8 file, and its int8 error by layer."""
    folder = tmp_path_factory.mktemp("broken")
    model, hidden = with_a_dead_channel(tiny_baseline, folder / "broken.h5", huge_weight=True)
    (folder / "errors").mkdir(), (folder / "int8").mkdir()
    errors = measure_errors(folder / "errors", model, tiny_prepared, SPEC.post_training_int8())
    int8 = export_tflite(folder / "int8", model, tiny_prepared, SPEC.model_copy(update={"formats": ("int8",)}), None, None)
    return model, hidden, errors, int8.path(int8.files[0])


def test_auto_keeps_the_broken_layer_in_float_and_holds_the_accuracy(broken, tiny_prepared, tmp_path):
    model, hidden, errors, int8 = broken
    images, labels = split_arrays(tiny_prepared, "val")
    keras = float(np.mean(np.argmax(model.load().predict(images, verbose=0), axis=1) == labels))
    assert keras == 1.0 and accuracy(int8, tiny_prepared) <= 0.6  # plain int8 loses what the layer computes

    exported = export_fallback(tmp_path, model, tiny_prepared, SPEC, FallbackSpec(layers="auto", max_loss=0.5), errors, None)
    [file] = exported.files
    assert file.format == "int8_fallback" and file.fallback.layers == [hidden]  # the worst layer, and enough
    assert file.fallback.reference == keras and file.fallback.accuracy == accuracy(exported.path(file), tiny_prepared)
    assert 100 * (keras - file.fallback.accuracy) <= 0.5 and file.fallback.reached
    predictor = Predictor(exported.path(file), threads=1, batch=8)
    assert predictor.input["dtype"] == np.float32  # float in and out, int8 inside but for the one layer
    assert accuracy(exported.path(file), tiny_prepared, "test") >= 0.9
    assert file.raw_bytes > int8.stat().st_size  # the float layer's weights take four bytes each


def test_a_count_or_a_pattern_chooses_the_float_layers(broken, tiny_prepared, tmp_path):
    model, hidden, errors, _ = broken
    worst = [e.layer for e in errors.layers if e.rmse > 0]
    (tmp_path / "two").mkdir(), (tmp_path / "named").mkdir()
    two = export_fallback(tmp_path / "two", model, tiny_prepared, SPEC, FallbackSpec(layers=2, max_loss=0.5), errors, None)
    assert two.files[0].fallback.layers == worst[:2] and two.files[0].fallback.rule == "the 2 worst"
    assert two.files[0].fallback.reached is None  # measured by auto only
    named = export_fallback(tmp_path / "named", model, tiny_prepared, SPEC, FallbackSpec(layers=["conv*"], max_loss=0.5),
                            errors, None)
    assert named.files[0].fallback.layers == [e for e in worst if e.startswith("conv")] != []
    with pytest.raises(PruneflowError, match=r"export.float_fallback \['head_\*'\] match no quantized layer"):
        export_fallback(tmp_path, model, tiny_prepared, SPEC, FallbackSpec(layers=["head_*"], max_loss=0.5), errors, None)


def test_a_pattern_that_names_no_layer_is_refused_before_any_training(config_dict):
    from pruneflow.tasks.libs.readings import Readings
    from pruneflow.tasks.specs.config import parse_config
    from pruneflow.tasks.stages.export_fallback import check_fallback

    export = {**config_dict["export"], "formats": ["int8_fallback"], "float_fallback": ["dense*", "head_*"],
              "layer_errors": True}
    with pytest.raises(PruneflowError, match=r"export.float_fallback \['head_\*'\] match no layer; the layers are: conv2d"):
        check_fallback(Readings(parse_config({**config_dict, "export": export})))
    check_fallback(Readings(parse_config({**config_dict, "export": {**export, "float_fallback": ["Dense"]}})))  # a class
    with pytest.raises(PruneflowError, match="export: int8_fallback chooses its float layers from the layer errors"):
        parse_config({**config_dict, "export": {**export, "layer_errors": False}})


@pytest.mark.parametrize("needed", [0, 1, 2, 3, 5, 17, 40, 41])
def test_auto_finds_the_fewest_layers_in_few_tries(needed):
    from pruneflow.tasks.libs.float_fallback import fewest_holding

    tried = []
    holds = lambda count: tried.append(count) or count >= needed  # noqa: E731
    assert fewest_holding(40, holds) == min(needed, 40)  # 41 never holds: all 40 in float
    assert len(set(tried)) <= 2 * 7 + 1  # doubling to 64 > 40, then halving back


def test_auto_ranks_first_the_layers_that_alone_bring_the_outputs_back():
    """A layer with a small error of its own that the rest of the model amplifies comes before
    larger errors that do not matter at the output; equal recoveries keep the error order."""
    from pruneflow.tasks.libs.artifacts import LayerError
    from pruneflow.tasks.libs.float_fallback import by_recovery

    errors = [LayerError(layer=name, op="CONV_2D", tensor=f"t/{name}", elements=8, rmse=rmse, cosine=0.99)
              for name, rmse in (("loud", 0.9), ("quiet", 0.1), ("same_a", 0.05), ("same_b", 0.04))]
    expected = np.zeros((4, 2))
    off = {"t/loud": 0.3, "t/quiet": 0.01, "t/same_a": 0.2, "t/same_b": 0.2}  # the gap left with each in float
    ranked = by_recovery(errors, lambda tensors: expected + off[tensors[0]], expected)
    assert [e.layer for e in ranked] == ["quiet", "same_a", "same_b", "loud"]
