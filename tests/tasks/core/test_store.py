"""The artifact store: content addresses, atomic folders, damage detected."""

import contextlib
import json
import logging
import threading
from pathlib import Path

import pydantic
import pytest
from filelock import FileLock

from pruneflow.tasks.core.store import DIGESTS, ArtifactStore, StoredArtifact, digest_of
from tests.helpers.disks import undeletable


class Told(logging.Handler):
    """What the store told the `pruneflow` logger, in order, from any thread."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.messages, self._said = [], threading.Condition()

    def emit(self, record):
        with self._said:
            self.messages.append(f"{record.levelname}: {record.getMessage()}")
            self._said.notify_all()

    def wait_for(self, text: str, timeout: float = 10) -> bool:
        with self._said:
            return self._said.wait_for(lambda: any(text in m for m in self.messages), timeout)


@pytest.fixture
def told():
    logger, handler = logging.getLogger("pruneflow"), Told()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


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



@pytest.mark.parametrize("recorded", ["null", "[]", "3", '{"model.h5": 3}'])
def test_a_digest_record_that_is_not_a_mapping_of_digests_is_unreadable_not_a_crash(tmp_path, recorded):
    store = ArtifactStore(root=tmp_path)
    write(store, "k1")
    (store.folder("stage", "k1") / DIGESTS).write_text(recorded)
    assert store.problem("stage", "k1") == f"{store.folder('stage', 'k1') / DIGESTS} is missing or unreadable"


def test_a_file_added_to_a_stored_folder_is_reported_by_its_path(tmp_path):
    """An intact artifact is the files it was stored with, no more: a file dropped in later (in a
    sub-folder too) makes it unusable, so the next run builds it again."""
    store = ArtifactStore(root=tmp_path)
    write(store, "k1")
    (store.folder("stage", "k1") / "logs" / "stray").write_text("added")
    assert store.problem("stage", "k1") == f"{store.folder('stage', 'k1') / 'logs' / 'stray'} was added after the artifact was stored"
    (store.folder("stage", "k1") / "logs" / "stray").unlink()
    (store.folder("stage", "k1") / "logs" / "empty").mkdir()  # a folder holds no content
    assert store.problem("stage", "k1") is None

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


def test_digest_of_ignores_key_order():
    assert digest_of({"a": 1, "b": 2}) == digest_of({"b": 2, "a": 1})
    assert digest_of({"a": 1}) != digest_of({"a": 2})


def test_digest_of_takes_a_value_json_cannot_hold_as_its_text_unless_strict():
    assert digest_of({"model": Path("/m/baseline.h5")}) == digest_of({"model": "/m/baseline.h5"})
    with pytest.raises(TypeError, match="PosixPath is not JSON serializable"):
        digest_of({"model": Path("/m/baseline.h5")}, strict=True)  # a key must not depend on str()


def test_results_and_stores_cannot_be_changed_once_made(tmp_path):
    result = StoredArtifact(folder=tmp_path, digest="d1")
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        result.digest = "d2"  # a downstream key was derived from it
    assert result.digest == "d1" and len({result, StoredArtifact(folder=tmp_path, digest="d1")}) == 1
    store = ArtifactStore(root=tmp_path)
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        store.root = tmp_path / "elsewhere"
    assert store.folder("stage", "k1") == tmp_path / "stage" / "k1"


def test_writing_into_a_store_whose_root_does_not_exist_yet_creates_it(tmp_path):
    store = ArtifactStore(root=tmp_path / "new" / "artifacts")
    write(store, "k1")
    assert store.problem("stage", "k1") is None


class Note(StoredArtifact):
    text: str

    @property
    def file(self):
        return self.folder / "note.txt"


def note(text: str):
    def build(tmp):
        (tmp / "note.txt").write_text(text)
        return Note(folder=tmp, text=text)

    return build


def test_produce_stores_the_result_beside_the_files_and_reads_it_back(tmp_path):
    store = ArtifactStore(root=tmp_path)
    made, reused = store.produce("stage", "k1", Note, note("hello"))
    assert not reused and store.produce("stage", "k1", Note, note("other")) == (made, True)
    assert made.folder == store.folder("stage", "k1") and made.file.read_text() == "hello"
    assert made.digest == store.digest("stage", "k1")
    assert store.load("stage", "k1", Note) == made
    assert store.problem("stage", "k1") is None  # result.json is recorded in digests.json too


def test_a_run_that_waited_on_the_same_key_reuses_the_other_runs_folder_and_says_so(tmp_path, told):
    store = ArtifactStore(root=tmp_path)
    release, first_started, results = threading.Event(), threading.Event(), {}

    def slow(tmp):
        first_started.set()
        release.wait(timeout=30)
        return note("first")(tmp)

    def second_build(tmp):
        raise AssertionError("the second run built the artifact again")

    first = threading.Thread(target=lambda: results.setdefault("first", store.produce("stage", "k1", Note, slow)))
    first.start()
    assert first_started.wait(timeout=10)
    second = threading.Thread(
        target=lambda: results.setdefault("second", store.produce("stage", "k1", Note, second_build))
    )
    second.start()
    try:
        # The second run says it waits while the first one is still inside its build: the lock held it.
        assert told.wait_for("another run is producing k1")
        assert "second" not in results
    finally:
        release.set()
    first.join(timeout=30)
    second.join(timeout=30)
    assert results["first"][1] is False and results["second"][1] is True  # built once, then reused
    assert results["second"][0] == results["first"][0] and results["second"][0].text == "first"
    assert sorted(p.name for p in (tmp_path / "stage").iterdir()) == [".lock-k1", "k1"]
    assert told.messages == [
        "WARNING: stage: another run is producing k1; waiting for it to finish",  # shown on a command's console
        "INFO: stage: reusing what the other run stored under k1",
    ]


def test_a_run_that_did_not_wait_says_it_reuses_the_intact_folder(tmp_path, told):
    store = ArtifactStore(root=tmp_path)
    store.produce("stage", "k1", Note, note("first"))
    assert told.messages == []  # a first build has nothing to report
    store.produce("stage", "k1", Note, note("second"))
    assert told.messages == ["INFO: stage: reusing the intact folder under k1"]


def test_a_failed_build_releases_its_key_for_another_run_and_for_its_retry(tmp_path):
    store = ArtifactStore(root=tmp_path)

    def fails(tmp):
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        store.produce("stage", "k1", Note, fails)
    other = FileLock(tmp_path / "stage" / ".lock-k1")
    other.acquire(timeout=0)  # another run gets the key at once
    other.release()
    made, reused = store.produce("stage", "k1", Note, note("retried"))
    assert not reused and made.text == "retried" and store.problem("stage", "k1") is None


def test_leftovers_of_a_killed_writer_are_swept_when_its_key_is_produced_again(tmp_path):
    store = ArtifactStore(root=tmp_path)
    for leftover in (".tmp-k1-0a1b2c3d", ".old-k1-0a1b2c3d", ".tmp-k2-0a1b2c3d"):
        (tmp_path / "stage" / leftover).mkdir(parents=True)
        (tmp_path / "stage" / leftover / "wrapped.h5").write_text("half-written")
    store.produce("stage", "k1", Note, note("whole"))
    assert sorted(p.name for p in (tmp_path / "stage").iterdir()) == [".lock-k1", ".tmp-k2-0a1b2c3d", "k1"]


def test_a_full_disk_is_a_clear_error_and_keeps_what_was_stored(tmp_path):
    from pruneflow.tasks.core.errors import PruneflowError
    from tests.helpers.disks import fill_disk, small_disk

    with small_disk(tmp_path / "disk", 4 << 20) as disk:
        store = ArtifactStore(root=disk / "artifacts")
        kept, _ = store.produce("stage", "k1", Note, note("kept"))
        fill_disk(disk, leave=16 << 10)

        def big(tmp):
            (tmp / "note.txt").write_bytes(b"x" * (1 << 20))
            return Note(folder=tmp, text="big")

        with pytest.raises(PruneflowError, match=r"cannot write the stage artifact: no space left on the device") as caught:
            store.produce("stage", "k2", Note, big)
        assert str(disk / "artifacts") in str(caught.value) and "results already stored are untouched" in str(caught.value)
        assert store.problem("stage", "k1") is None and store.load("stage", "k1", Note) == kept
        assert not store.folder("stage", "k2").exists()
        assert not list((disk / "artifacts" / "stage").glob(".tmp-*"))


def test_a_read_only_store_is_a_clear_error_and_keeps_what_was_stored(tmp_path):
    from pruneflow.tasks.core.errors import PruneflowError
    from tests.helpers.disks import read_only

    store = ArtifactStore(root=tmp_path / "artifacts")
    kept, _ = store.produce("stage", "k1", Note, note("kept"))
    with read_only(tmp_path / "artifacts"):
        with pytest.raises(PruneflowError, match=r"cannot write the stage artifact: .*artifacts is not writable"):
            store.produce("stage", "k2", Note, note("new"))
        assert store.problem("stage", "k1") is None and store.load("stage", "k1", Note) == kept
    assert not store.folder("stage", "k2").exists()


def test_an_intact_folder_is_reused_unless_forced(tmp_path):
    store = ArtifactStore(root=tmp_path)
    first, _ = store.produce("stage", "k1", Note, note("first"), force=False)
    assert store.produce("stage", "k1", Note, note("second"), force=False) == (first, True)  # not built again
    forced, reused = store.produce("stage", "k1", Note, note("second"), force=True)
    assert not reused
    assert forced.text == "second" and forced.digest != first.digest
    scratch = tmp_path / "stage" / ".work-k2"
    scratch.mkdir()
    store.produce("stage", "k2", Note, note("x"), scratch=scratch)
    assert not scratch.exists()  # removed once the artifact was stored


def checkpoint_left(store: ArtifactStore, text: str) -> tuple:
    """k1's scratch folder holding a checkpoint an earlier run left; a build that notes the
    checkpoint it finds there (None: no scratch folder), and what it noted."""
    scratch = store.work_folder("stage", "k1")
    scratch.mkdir(parents=True)
    (scratch / "checkpoint.h5").write_text(text)
    seen = []

    def build(tmp):
        seen.append((scratch / "checkpoint.h5").read_text() if scratch.exists() else None)
        return note("built")(tmp)

    return scratch, seen, build


def test_a_forced_build_does_not_resume_from_an_earlier_runs_checkpoint(tmp_path):
    store = ArtifactStore(root=tmp_path)
    scratch, seen, build = checkpoint_left(store, "an earlier, failed run's epoch 2")
    store.produce("stage", "k1", Note, build, force=True, scratch=scratch)
    assert seen == [None]  # removed before building
    (tmp_path / "stage" / ".tmp-k1-deadbeef").mkdir()  # a killed writer's leftover
    assert store.produce("stage", "k1", Note, note("other"))[1]  # reused...
    assert not (tmp_path / "stage" / ".tmp-k1-deadbeef").exists()  # ...and the leftover swept all the same


def test_a_damaged_artifact_is_built_again_and_replaced_whole(tmp_path, told):
    store = ArtifactStore(root=tmp_path)
    store.produce("stage", "k1", Note, note("first"))
    (store.folder("stage", "k1") / "note.txt").write_text("tampered")
    rebuilt, reused = store.produce("stage", "k1", Note, note("second"))
    assert not reused and rebuilt.text == "second" and rebuilt.file.read_text() == "second"
    assert store.problem("stage", "k1") is None
    assert sorted(p.name for p in (tmp_path / "stage").iterdir()) == [".lock-k1", "k1"]  # no old or tmp folder left
    assert told.messages == [
        f"WARNING: stage: stored artifact unusable ({store.folder('stage', 'k1') / 'note.txt'} does not match its "
        "recorded digest); building it again"
    ]


def test_only_a_damaged_folder_is_warned_about_not_a_missing_or_a_forced_one(tmp_path, told):
    store = ArtifactStore(root=tmp_path)
    store.produce("stage", "k1", Note, note("first"))
    store.produce("stage", "k1", Note, note("forced"), force=True)
    assert store.load("stage", "k1", Note).text == "forced" and told.messages == []


def test_an_unforced_build_resumes_from_the_checkpoint_a_killed_run_left(tmp_path):
    store = ArtifactStore(root=tmp_path)
    scratch, seen, build = checkpoint_left(store, "epoch 2 of a killed run")
    made, reused = store.produce("stage", "k1", Note, build, force=False, scratch=scratch)
    assert seen == ["epoch 2 of a killed run"] and not reused and made.text == "built"
    assert not scratch.exists()  # removed once the artifact was stored


def test_a_forced_build_with_no_checkpoint_left_builds(tmp_path):
    store = ArtifactStore(root=tmp_path)
    scratch = store.work_folder("stage", "k1")
    made, reused = store.produce("stage", "k1", Note, note("forced"), force=True, scratch=scratch)
    assert not reused and made.text == "forced" and store.problem("stage", "k1") is None


def test_a_leftover_that_cannot_be_deleted_yet_does_not_stop_its_key_and_is_swept_later(tmp_path):
    store = ArtifactStore(root=tmp_path)
    pinned = tmp_path / "stage" / ".tmp-k1-0a1b2c3d" / "checkpoints"
    pinned.mkdir(parents=True)
    (pinned / "epoch1.h5").write_text("half-written")
    with undeletable(pinned, within=tmp_path):
        made, reused = store.produce("stage", "k1", Note, note("built"))
        assert not reused and made.text == "built" and store.problem("stage", "k1") is None
        assert (pinned / "epoch1.h5").exists()
    assert store.produce("stage", "k1", Note, note("unused")) == (made, True)
    assert sorted(p.name for p in (tmp_path / "stage").iterdir()) == [".lock-k1", "k1"]


def test_a_failed_build_whose_folder_cannot_be_deleted_yet_raises_its_own_error(tmp_path):
    store = ArtifactStore(root=tmp_path)
    with contextlib.ExitStack() as pins:

        def diverges(tmp):
            (tmp / "checkpoints").mkdir()
            (tmp / "checkpoints" / "epoch1.h5").write_text("epoch 1")
            pins.enter_context(undeletable(tmp / "checkpoints", within=tmp_path))
            raise RuntimeError("training diverged")

        with pytest.raises(RuntimeError, match="training diverged"):
            store.produce("stage", "k1", Note, diverges)
        assert not store.folder("stage", "k1").exists()
    made, reused = store.produce("stage", "k1", Note, note("built"))  # the leftover is swept now
    assert not reused and sorted(p.name for p in (tmp_path / "stage").iterdir()) == [".lock-k1", "k1"]


def test_a_folder_whose_old_copy_cannot_be_deleted_yet_is_replaced_and_the_copy_swept_later(tmp_path):
    store = ArtifactStore(root=tmp_path)

    def with_logs(text):
        def build(tmp):
            (tmp / "logs").mkdir()
            (tmp / "logs" / "events").write_text(text)
            return note(text)(tmp)

        return build

    store.produce("stage", "k1", Note, with_logs("first"))
    with undeletable(store.folder("stage", "k1") / "logs", within=tmp_path):
        forced, reused = store.produce("stage", "k1", Note, with_logs("forced"), force=True)
        assert not reused and store.problem("stage", "k1") is None
        assert (store.folder("stage", "k1") / "logs" / "events").read_text() == "forced"
        [old] = (tmp_path / "stage").glob(".old-k1-*")
        assert (old / "logs" / "events").read_text() == "first"
    assert store.produce("stage", "k1", Note, note("unused")) == (forced, True)
    assert sorted(p.name for p in (tmp_path / "stage").iterdir()) == [".lock-k1", "k1"]


def test_a_forced_build_replaces_an_intact_artifact_and_starts_from_no_checkpoint(tmp_path):
    store = ArtifactStore(root=tmp_path)
    scratch = store.work_folder("stage", "k1")
    store.produce("stage", "k1", Note, note("first"))
    scratch.mkdir(parents=True)
    (scratch / "checkpoint.h5").write_text("an earlier run's")

    def build(tmp):
        assert not scratch.exists(), "the forced build saw an earlier run's checkpoint"
        scratch.mkdir()  # what a training writes as it goes
        return note("forced")(tmp)

    made, reused = store.produce("stage", "k1", Note, build, force=True, scratch=scratch)
    assert not reused and made.text == "forced" and store.load("stage", "k1", Note).text == "forced"
    assert not scratch.exists()  # removed once the artifact is stored
    again, reused = store.produce("stage", "k1", Note, note("unused"), force=False)
    assert reused and again.text == "forced"
