"""Pruning-preserving quantization-aware training, and the int8_qat files made from it."""

import numpy as np
import pytest

from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.specs.config import ExportSpec, parse_config
from pruneflow.tasks.stages.evaluate_exports import evaluate_exports
from pruneflow.tasks.stages.export_tflite import export_tflite
from pruneflow.tasks.stages.quantize_train import check_quantizable, train_quantized
from tests.helpers.models import ONE_FORMAT_A_SHAPE

QAT_FORMATS = ExportSpec(
    formats=("int8_qat", "int8_qat_sparse"), representative_images=16, int8_input_type="int8", int8_output_type="int8",
)


@ONE_FORMAT_A_SHAPE
def test_quantization_aware_training_keeps_the_zeros_into_the_int8_files(pruned_variant, tmp_path):
    v = pruned_variant
    config = parse_config({**v.config.model_dump(mode="json"), "export": {"formats": list(QAT_FORMATS.formats)}})
    (tmp_path / "qat").mkdir()
    if v.kind == "nested":  # TFMOT cannot quantize a model inside a model
        with pytest.raises(PruneflowError, match="Quantizing a keras Model inside another keras Model is not supported"):
            train_quantized(tmp_path / "qat", v.dataset, v.stripped.file, config.qat_spec)
        return
    quantized = train_quantized(tmp_path / "qat", v.dataset, v.stripped.file, config.qat_spec)
    assert quantized.trained and quantized.model.is_file()
    kernels = [w.numpy() for w in quantized.load().weights if w.name.endswith("kernel:0")]
    assert len(kernels) == 3 and all(np.mean(k == 0) >= 0.49 for k in kernels)  # the pruned zeros stayed

    sanity = v.sanity()
    (tmp_path / "export").mkdir()
    exported = export_tflite(tmp_path / "export", v.stripped.file, v.dataset, QAT_FORMATS, sanity, quantized)
    assert [f.format for f in exported.files] == ["int8_qat", "int8_qat_sparse"]
    for f in exported.files:  # every pruned kernel found in the file (as quant_<layer>) and still sparse
        assert [t.layer for t in f.sparsity] == [t.layer for t in sanity.tensors]
        assert all(t.sparsity >= 0.48 for t in f.sparsity)
    (tmp_path / "evaluation").mkdir()
    evaluation = evaluate_exports(tmp_path / "evaluation", [exported], v.stripped.file, quantized, v.dataset, batch_size=8)
    assert all(e.agreement >= 0.9 for e in evaluation.files)  # with the quantization-aware model they came from


def test_without_an_int8_qat_format_nothing_is_trained(tiny_prepared, tiny_config, tmp_path):
    assert tiny_config.qat_spec is None
    quantized = train_quantized(tmp_path, tiny_prepared, None, None)
    assert not quantized.trained and list(tmp_path.iterdir()) == []


def test_a_model_tfmot_cannot_quantize_is_refused_before_any_work(config_dict, tmp_path):
    from pruneflow.tasks.libs.models import save_model
    from pruneflow.tasks.libs.readings import Readings
    from tests.helpers.models import build_tiny_cnn

    save_model(build_tiny_cnn(kind="nested"), tmp_path / "nested.h5")
    config = parse_config({**config_dict, "model": {"baseline": str(tmp_path / "nested.h5")},
                           "export": {"formats": ["int8", "int8_qat"]}})
    with pytest.raises(PruneflowError, match=r"nested.h5: the int8_qat formats need quantization-aware training, which "
                                             r"TFMOT cannot apply .*inside another keras Model.*Leave int8_qat"):
        check_quantizable(Readings(config))
    check_quantizable(Readings(parse_config({**config_dict, "model": {"baseline": str(tmp_path / "nested.h5")}})))
