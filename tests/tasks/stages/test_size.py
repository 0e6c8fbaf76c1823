"""Size measurement: like-with-like files, compression that sees the zeros, the floor."""

import json
import lzma
import zipfile

import numpy as np

from pruneflow.tasks.libs.compression import xz_size, zip_size
from pruneflow.tasks.libs.models import ModelFile
from pruneflow.tasks.stages.measure_size import compare_sizes
from tests.helpers.models import build_tiny_cnn


def test_zip_and_xz_sizes_are_the_real_archive_sizes(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(bytes(10_000) + np.random.default_rng(0).bytes(10_000))
    archive = tmp_path / "blob.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as out:
        out.write(path, arcname=path.name)
    assert zip_size(path) == archive.stat().st_size
    assert xz_size(path) == len(lzma.compress(path.read_bytes(), preset=9))
    assert xz_size(path) < 11_000
    assert zip_size(path) < 12_000  # the zeros compress, the random half does not


def test_sparse_model_compresses_smaller_than_its_dense_twin(tmp_path):
    from pruneflow.tasks.core.runtime import keras
    from pruneflow.tasks.libs.models import save_model

    keras.utils.set_random_seed(0)
    dense = build_tiny_cnn()
    save_model(dense, tmp_path / "dense.h5")
    sparse = keras.models.clone_model(dense)
    weights = []
    for values in dense.get_weights():
        if values.ndim > 1:  # kernels: zero the 80% smallest magnitudes
            values = np.where(np.abs(values) < np.quantile(np.abs(values), 0.8), 0.0, values)
        weights.append(values)
    sparse.set_weights(weights)
    save_model(sparse, tmp_path / "sparse.h5")

    (tmp_path / "size").mkdir()
    report = compare_sizes(tmp_path / "size", ModelFile.of(tmp_path / "dense.h5"), ModelFile.of(tmp_path / "sparse.h5"))
    assert report.pruned.raw_bytes == report.baseline.raw_bytes  # .h5 stores zeros like any float
    assert report.zip_ratio > 2.0 and report.xz_ratio > 2.0
    assert report.pruned.weights == report.baseline.weights == dense.count_params()
    kernel_weights = sum(w.size for w in dense.get_weights() if w.ndim > 1)
    assert report.baseline.nonzero_weights - report.pruned.nonzero_weights >= 0.79 * kernel_weights
    assert report.pruned.floor_bytes == 4 * report.pruned.nonzero_weights
    dumped = report.model_dump()
    assert dumped["zip_ratio"] == report.zip_ratio and dumped["pruned"]["floor_bytes"] == report.pruned.floor_bytes
    # Both measured files were written the same way, without optimizer state.
    assert (tmp_path / "size" / "baseline.h5").is_file() and (tmp_path / "size" / "pruned.h5").is_file()


def test_every_model_shape_and_format_is_measured_smaller_once_pruned(pruned_variant, tmp_path):
    report = compare_sizes(tmp_path, pruned_variant.baseline, pruned_variant.stripped.file)
    assert report.pruned.weights == report.baseline.weights
    assert report.pruned.nonzero_weights < 0.6 * report.baseline.nonzero_weights  # half of each kernel zeroed
    assert report.pruned.zip_bytes < report.baseline.zip_bytes and report.zip_ratio > 1.2
    # A .keras baseline is re-saved as .h5 like the pruned model, so the two files compare like with like.
    assert sorted(p.name for p in tmp_path.glob("*.h5")) == ["baseline.h5", "pruned.h5"]
    assert json.loads((tmp_path / "sizes.json").read_text())["zip_ratio"] == report.zip_ratio
