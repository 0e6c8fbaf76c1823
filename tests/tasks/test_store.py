"""The artifact store: content addresses, atomic folders, damage detected."""

import json

import pytest

from tasks.config import ConstantSchedule
from tasks.store import DIGESTS, ArtifactStore, StoredArtifact, code_version, digest_of, stage_key


def write(store: ArtifactStore, key: str, text: str = "weights") -> None:
    with store.writing("stage", key) as tmp:
        (tmp / "model.h5").write_text(text)
        (tmp / "logs").mkdir()
        (tmp / "logs" / "events").write_text("events")


def test_written_folder_records_the_digest_of_every_file(tmp_path):
    store = ArtifactStore(root=tmp_path)
    write(store, "k1")
    folder = store.folder("stage", "k1")
    assert sorted(json.loads((folder / DIGESTS).read_text())) == ["logs/events", "model.h5"]
    assert store.problem("stage", "k1") is None
    assert [p.name for p in (tmp_path / "stage").iterdir()] == ["k1"]  # no temporary left


def test_missing_changed_or_unrecorded_folders_are_reported(tmp_path):
    store = ArtifactStore(root=tmp_path)
    assert "does not exist" in store.problem("stage", "absent")
    write(store, "k1")
    (store.folder("stage", "k1") / "model.h5").write_text("tampered")
    assert "model.h5 does not match its recorded digest" in store.problem("stage", "k1")
    write(store, "k2")
    (store.folder("stage", "k2") / "logs" / "events").unlink()
    assert "events is missing" in store.problem("stage", "k2")
    write(store, "k3")
    (store.folder("stage", "k3") / DIGESTS).unlink()
    assert "digests.json is missing or unreadable" in store.problem("stage", "k3")


def test_a_failed_write_leaves_no_folder_and_keeps_the_previous_one(tmp_path):
    store = ArtifactStore(root=tmp_path)
    with pytest.raises(RuntimeError):
        with store.writing("stage", "k1") as tmp:
            (tmp / "model.h5").write_text("half")
            raise RuntimeError("killed")
    assert not (tmp_path / "stage" / "k1").exists()
    write(store, "k1", "good")
    with pytest.raises(RuntimeError):
        with store.writing("stage", "k1") as tmp:
            raise RuntimeError("killed")
    assert (store.folder("stage", "k1") / "model.h5").read_text() == "good"
    assert [p.name for p in (tmp_path / "stage").iterdir()] == ["k1"]


def test_rewriting_a_key_replaces_the_folder(tmp_path):
    store = ArtifactStore(root=tmp_path)
    write(store, "k1", "old")
    before = store.digest("stage", "k1")
    write(store, "k1", "new")
    assert (store.folder("stage", "k1") / "model.h5").read_text() == "new"
    assert store.digest("stage", "k1") != before and store.problem("stage", "k1") is None


def test_stored_points_a_result_at_its_final_folder(tmp_path):
    store = ArtifactStore(root=tmp_path)
    with store.writing("stage", "k1") as tmp:
        (tmp / "f").write_text("x")
        result = StoredArtifact(folder=tmp)
    final = store.stored("stage", "k1", result)
    assert final.folder == store.folder("stage", "k1") and final.digest == store.digest("stage", "k1")


def test_keys_depend_on_contents_code_and_parameters_only():
    key = stage_key("s", "code1", {"data": "abc"}, ConstantSchedule(target_sparsity=0.5))
    assert key == stage_key("s", "code1", {"data": "abc"}, ConstantSchedule(target_sparsity=0.5))
    assert key != stage_key("s", "code2", {"data": "abc"}, ConstantSchedule(target_sparsity=0.5))
    assert key != stage_key("s", "code1", {"data": "abd"}, ConstantSchedule(target_sparsity=0.5))
    assert key != stage_key("s", "code1", {"data": "abc"}, ConstantSchedule(target_sparsity=0.6))
    assert key != stage_key("t", "code1", {"data": "abc"}, ConstantSchedule(target_sparsity=0.5))
    assert digest_of({"a": 1, "b": 2}) == digest_of({"b": 2, "a": 1})


def test_code_version_follows_the_module_source():
    assert code_version("tasks.store") == code_version("tasks.store")
    assert code_version("tasks.store") != code_version("tasks.files")
