"""Inputs fuzzed: whatever bytes a user's CSV or YAML holds, reading it ends in a named error
(PruneflowError: exit 2, a message naming the file) or in what it describes, never a traceback."""

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.libs.dataset import list_dataset
from pruneflow.tasks.specs.config import load_config, parse_config

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Pieces a CSV is made of, and the damage a real file carries: byte-order marks, other encodings,
# NUL bytes, stray and doubled quotes, mixed line endings, separators of other locales.
PIECES = st.sampled_from([
    b"filename,label", b"filename;label", b"img/train_000.jpg", b"img/train_001.jpg", b"top", b"bottom", b",", b";",
    b'"', b'""', b"\r\n", b"\n", b"\r", b"\x00", b"\xef\xbb\xbf", b"\xff\xfe", b"\xe9", "é".encode("utf-16"),
    b" ", b"\t", b"nan", b"NA", b"../../etc/passwd", b"img/", b"\xc3",
])
CSV_BYTES = st.one_of(st.binary(max_size=300), st.lists(PIECES, max_size=40).map(b"".join))


def run_or_named_error(action):
    """What `action()` returned, or None when it raised a PruneflowError; anything else fails the test."""
    try:
        return action()
    except PruneflowError as error:
        assert str(error).strip(), "an empty message"
        return None


@FUZZ
@given(data=CSV_BYTES)
def test_any_bytes_in_a_split_csv_end_in_a_named_error_or_a_listing(tiny_data, config_dict, data):
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "data"
        shutil.copytree(tiny_data, copy)
        (copy / "train.csv").write_bytes(data)
        dataset = parse_config({**config_dict, "dataset": {
            **config_dict["dataset"], **{f"{s}_csv": str(copy / f"{s}.csv") for s in ("train", "val", "test")},
        }}).dataset
        listing = run_or_named_error(lambda: list_dataset(dataset))
        if listing is not None:  # read as a CSV: then it listed real images of two classes at least
            assert len(set(listing.splits["train"].labels)) >= 2


YAML_PIECES = st.sampled_from([
    "dataset:", "model:", "pruning:", "training:", "  kind: constant", "  target_sparsity: 0.5", "  epochs: 2",
    "output_root: out", "seed: 1", "- a", "[", "]", "{", "}", ":", "'", '"', "\t", "  ", "\n", "\r\n", "\x00",
    "&anchor", "*anchor", "!!python/object:os.system", "? ", "%YAML 1.2", "---", "...", "\ufeff", "é", "0x10", "~",
])
YAML_BYTES = st.one_of(
    st.binary(max_size=300),
    st.lists(YAML_PIECES, max_size=30).map(lambda parts: "".join(parts).encode("utf-8", "surrogatepass")),
)


@FUZZ
@given(data=YAML_BYTES)
def test_any_bytes_in_a_config_file_end_in_a_named_error_or_a_config(data):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "run.yaml"
        path.write_bytes(data)
        run_or_named_error(lambda: load_config(path))


@pytest.mark.parametrize("damage", [b"\xef\xbb\xbf", b""])
def test_a_csv_with_a_byte_order_mark_reads_as_without(tiny_data, config_dict, tmp_path, damage):
    copy = tmp_path / "data"
    shutil.copytree(tiny_data, copy)
    (copy / "train.csv").write_bytes(damage + (tiny_data / "train.csv").read_bytes())
    dataset = parse_config({**config_dict, "dataset": {**config_dict["dataset"], "train_csv": str(copy / "train.csv")}}).dataset
    assert len(list_dataset(dataset).splits["train"].paths) == 40


def test_a_config_in_another_encoding_is_a_named_error(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_bytes("seed: 1\n".encode("utf-16"))
    with pytest.raises(PruneflowError, match=r"run.yaml: not UTF-8 text \(byte 0: invalid start byte\); save"):
        load_config(path)
