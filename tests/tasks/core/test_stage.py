"""A stage is one definition: its inputs, artifact type, code and key all derive from its build function."""

import ast
import dataclasses
import importlib
import inspect
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import typing
from pathlib import Path
from typing import Annotated, Literal, get_args, get_origin

import pytest
from prefect.cache_policies import NONE
from prefect.settings import PREFECT_TASKS_REFRESH_CACHE, temporary_settings
from prefect.states import Completed, Failed
from pydantic import BaseModel, Field

from pruneflow.flows.stages import STAGES
from pruneflow.tasks.core import stage as stage_module
from pruneflow.tasks.core.stage import Stage, code_closure, code_digest, code_version, fingerprint
from pruneflow.tasks.core.store import ArtifactStore, Content, StoredArtifact
from pruneflow.tasks.libs.models import ModelFile
from pruneflow.tasks.specs.config import ConstantSchedule, PolynomialDecaySchedule, Schedule, parse_config
from pruneflow.tasks.stages.prune_train import StopRule

FIXED = object()  # a field with a single possible value (a union's tag): nothing to change


def perturbed(value, annotation):
    """Another value of the same field, different from `value`."""
    if get_origin(annotation) is Literal:
        return next((choice for choice in get_args(annotation) if choice != value), FIXED)
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if value is None:
        return 7
    if isinstance(value, (tuple, list)):
        return value[:-1] if value else ["x"]  # one element fewer (the export's formats), or one
    if isinstance(value, dict):
        return {**value, "x": 0.5}
    raise TypeError(f"no perturbation for {value!r}")


def field_changes(model: BaseModel) -> list[tuple[str, object]]:
    """(field, another value) for every field of `model`, a nested section's fields each in turn
    (TrainingSpec's layers)."""
    hints = typing.get_type_hints(type(model))
    changes = []
    for field in type(model).model_fields:
        value = getattr(model, field)
        if isinstance(value, Content):  # keys read its digest only (prune_train's StopRule's reference)
            changes.append((field, value.model_construct(digest=value.digest + "-changed")))
        elif isinstance(value, BaseModel):
            changes += [(field, value.model_copy(update={inner: new})) for inner, new in field_changes(value)]
        elif (new := perturbed(value, hints[field])) is not FIXED:
            changes.append((field, new))
    return changes


def samples_by_type(config_dict) -> dict:
    """A valid value of every config section and section part a stage may take, by type, read
    from a real config: a section added to RunConfig later is found here too."""
    config = parse_config(config_dict)
    values = [getattr(config, name) for name in type(config).model_fields]
    with_qat = parse_config({**config_dict, "export": {"formats": ["int8_qat"]}})
    with_channels = parse_config({**config_dict, "channel_pruning": {"fraction": 0.5, "layers": {"conv*": 0.25}}})
    values += [config.dataset.shape, config.training_spec, config.export_spec, config.latency_spec, with_qat.qat_spec,
               with_channels.channel_spec, config.fallback_spec,
               StopRule(after_epochs=1, max_drop=2.0, reference=ModelFile.model_construct(digest="baseline"))]
    return {type(value): value for value in values} | {int: 8, float: 0.5, str: "a machine"}


SCHEDULES = [
    ConstantSchedule(target_sparsity=0.5, begin_step=0, end_step=10, frequency=1),
    PolynomialDecaySchedule(initial_sparsity=0.2, final_sparsity=0.8, begin_step=0, end_step=10, frequency=2),
]


def sample_inputs(stage: Stage, samples: dict, schedule) -> dict:
    inputs = {}
    for name, kind in stage.inputs.items():
        content = next((k for k in (kind, *get_args(kind)) if isinstance(k, type) and issubclass(k, Content)), None)
        if content is not None:  # a Content, or an optional one (the export's sanity report)
            inputs[name] = content.model_construct(digest=f"digest-of-{name}")  # keys read the digest only
        elif kind == Schedule:
            inputs[name] = schedule
        else:  # a value, or an optional one (quantize_train's QATSpec)
            inputs[name] = samples[next((k for k in get_args(kind) if k is not type(None)), kind)]
    return inputs


@pytest.mark.parametrize("schedule", SCHEDULES, ids=["constant", "polynomial_decay"])
@pytest.mark.parametrize("stage", STAGES, ids=[stage.name for stage in STAGES])
def test_every_field_a_stage_receives_changes_its_key(stage, schedule, config_dict):
    """Changing any one field of a config input, the digest of any Content input, or any plain
    input gives another key. The fields come from the models themselves, so a field added later
    is covered here unedited."""
    inputs = sample_inputs(stage, samples_by_type(config_dict), schedule)
    key = stage.key(**inputs)
    assert key == stage.key(**inputs)
    checked = 0
    for name, value in inputs.items():
        if isinstance(value, Content):
            changes = [value.model_construct(digest=value.digest + "-changed")]
        elif isinstance(value, BaseModel):
            changes = [value.model_copy(update={field: new}) for field, new in field_changes(value)]
        else:
            changes = [perturbed(value, type(value))]
        for changed in changes:
            assert stage.key(**{**inputs, name: changed}) != key, f"{stage.name}: {name} -> {changed!r}"
            checked += 1
    assert checked >= len(inputs)


def test_a_key_reads_content_at_any_depth_and_refuses_paths():
    from pruneflow.tasks.libs.models import ModelFile

    model = ModelFile(path=Path("/a/model.h5"), digest="d1")
    assert fingerprint({"models": [model, (model, 1.5)], "seed": None}) == {"models": ["d1", ["d1", 1.5]], "seed": None}
    for hidden in (Path("/data"), [Path("/data")], {"csv": Path("/data/train.csv")}):
        with pytest.raises(TypeError, match="a path is not content"):
            fingerprint(hidden)
    with pytest.raises(TypeError, match="has no stable form for a stage key"):
        fingerprint(object())


def test_the_same_artifact_at_another_path_gives_the_same_key(config_dict):
    from pruneflow.tasks.libs.models import ModelFile
    from pruneflow.tasks.stages.measure_size import measure_size

    here = ModelFile(path=Path("/a/model.h5"), digest="d1")
    there = ModelFile(path=Path("/b/elsewhere.h5"), digest="d1", trust_code=True)
    pruned = ModelFile(path=Path("/c/pruned.h5"), digest="d2")
    assert measure_size.key(baseline=here, pruned=pruned) == measure_size.key(baseline=there, pruned=pruned)


class Note(StoredArtifact):
    text: str


def write_note(out: Path, source: Content, repeat: int) -> Note:
    """A stage's build function: plain Python writing into `out`."""
    (out / "note.txt").write_text(source.digest * repeat)
    return Note(folder=out, text=source.digest * repeat)


def test_inputs_and_artifact_type_come_from_the_build_function():
    stage = Stage("note", write_note)
    assert stage.inputs == {"source": Content, "repeat": int}
    assert stage.artifact is Note


class Section(BaseModel):
    csv: Path | None = None


def test_a_build_function_that_takes_a_path_or_returns_no_artifact_is_refused():
    def takes_a_path(out: Path, model: Path) -> Note: ...

    def takes_paths(out: Path, models: list[Path]) -> Note: ...

    def takes_a_section_with_a_path(out: Path, section: Section) -> Note: ...

    def returns_a_dict(out: Path, repeat: int) -> dict: ...

    def no_out_folder(repeat: int) -> Note: ...

    for build, name in ((takes_a_path, "model"), (takes_paths, "models"), (takes_a_section_with_a_path, "section")):
        with pytest.raises(TypeError, match=f"input {name} can hold a Path; keys use content"):
            Stage("bad", build)
    with pytest.raises(TypeError, match="must return a StoredArtifact subclass"):
        Stage("bad", returns_a_dict)
    with pytest.raises(TypeError, match="must take out first"):
        Stage("bad", no_out_folder)
    with pytest.raises(TypeError, match="must take out, work first"):
        Stage("bad", write_note, resumable=True)


def test_produce_builds_once_then_reuses_the_stored_artifact(tmp_path):
    stage, store = Stage("note", write_note), ArtifactStore(root=tmp_path)
    source = Content(digest="ab")
    built, reused = stage.produce(store, source=source, repeat=2)
    assert not reused and built.text == "abab" and (built.folder / "note.txt").read_text() == "abab"
    assert built.folder == store.folder("note", stage.key(source=source, repeat=2))
    assert stage.produce(store, source=source, repeat=2) == (built, True)
    other, reused = stage.produce(store, source=Content(digest="cd"), repeat=2)
    assert not reused and other.folder != built.folder
    with pytest.raises(TypeError, match=r"stage note takes \['repeat', 'source'\], got \['source'\]"):
        stage.key(source=source)


def test_a_stage_code_is_its_module_and_every_module_it_imports_even_lazily():
    closure = set(code_closure("pruneflow.tasks.stages.prune_train"))
    assert {
        "pruneflow.tasks.stages.prune_train", "pruneflow.tasks.libs.pruning", "pruneflow.tasks.libs.models",
        "pruneflow.tasks.libs.dataset", "pruneflow.tasks.libs.schedule", "pruneflow.tasks.core.stage",
    } <= closure
    assert "pruneflow.tasks.core.runtime" in closure  # imported inside functions only
    assert "pruneflow.tasks.libs.readings" not in closure  # imported for type checking only
    assert not {"pruneflow.tasks.unkeyed.faults", "pruneflow.tasks.unkeyed.progress"} & closure  # unkeyed by rule
    assert not {"pruneflow.tasks.stages.sanity_check", "pruneflow.tasks.report.summary"} & closure  # not its code
    assert not any(name.startswith("pruneflow.flows") for name in closure)  # the clock, the GPU tag policy


STAGE_SOURCE = '''"""A stage."""
from typing import TYPE_CHECKING
from pydantic import BaseModel, Field, create_model
from .helper import VALUE
from scratchpkg.unkeyed import drill
if TYPE_CHECKING:
    from scratchpkg import hints
class Spec(BaseModel):
    size: int = Field(1, description="How big.")
Made = create_model("Made", size=(int, Field(1, description="How big.")))
def double(x):
    """Double it."""
    return 2 * x
def build():
    """Build it."""
    from scratchpkg import lazy
    return VALUE + lazy.VALUE  # a comment
'''


def test_editing_any_module_a_stage_imports_changes_its_code_version_and_documenting_it_does_not(tmp_path, monkeypatch):
    package = tmp_path / "scratchpkg"
    (package / "unkeyed").mkdir(parents=True)
    for init in (package / "__init__.py", package / "unkeyed" / "__init__.py"):
        init.write_text("")
    (package / "stage.py").write_text(STAGE_SOURCE)
    for name in ("helper", "lazy", "hints", "unrelated", "unkeyed/drill"):
        (package / f"{name}.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    def version():
        for cached in (code_closure, code_digest, code_version):
            cached.cache_clear()
        return code_version("scratchpkg.stage", keyed="scratchpkg", unkeyed="scratchpkg.unkeyed")

    before = version()
    closure = code_closure("scratchpkg.stage", keyed="scratchpkg", unkeyed="scratchpkg.unkeyed")
    assert closure == ("scratchpkg", "scratchpkg.helper", "scratchpkg.lazy", "scratchpkg.stage")
    for name in ("unrelated", "hints", "unkeyed/drill"):  # not imported, for type checking only, or unkeyed
        (package / f"{name}.py").write_text("VALUE = 2\n")
        assert version() == before, name
    documentation = (("How big.", "How large."), ("Build it.", "Make it."), ("a comment", "a remark"), ("A stage.", "The stage."))
    for old, new in documentation:
        (package / "stage.py").write_text(STAGE_SOURCE.replace(old, new))
        assert version() == before, old
    (package / "stage.py").write_text(STAGE_SOURCE.replace("Field(1,", "Field(2,"))
    assert version() != before  # what the code does
    (package / "stage.py").write_text(STAGE_SOURCE.replace("return 2 * x", "return 3 * x"))
    assert version() != before  # the first statement after a docstring is code
    (package / "stage.py").write_text(STAGE_SOURCE)
    for name in ("helper", "lazy"):  # imported relatively, and inside a function
        (package / f"{name}.py").write_text(f"VALUE = {name!r}\n")
        assert version() != before, name
        before = version()


class _Cycle:
    """Garbage whose collection runs Python code: where a thread switch can land inside a parse."""

    def __del__(self):
        sum(range(50))


def test_a_code_digest_is_computed_while_another_thread_parses(tmp_path):
    """Python 3.11's ast counts its recursion in one place for all threads (CPython gh-106905): a
    parse that another thread's parse interleaves with fails with a SystemError (a run failed so in
    CI). Here the other thread's parses are short and the digest's long: the digest's parse is the
    one hit (a few times in a hundred, over some six hundred parses), and is read again."""
    module = tmp_path / "long.py"
    module.write_text("\n".join(f"def f{i}(a):\n    return [a * {i} for _ in {{1: (2,)}}] + " + "[" * 20 + "a" + "]" * 20 for i in range(30)))
    stop = threading.Event()

    def parse_another():
        while not stop.is_set():
            first, second = _Cycle(), _Cycle()
            first.other, second.other = second, first
            try:
                ast.parse("x = [a + b for a in c]\n" * 3)
            except SystemError:
                pass  # the race hit this thread's parse instead

    other = threading.Thread(target=parse_another)
    other.start()
    try:
        expected = code_digest.__wrapped__(module)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            assert code_digest.__wrapped__(module) == expected
    finally:
        stop.set()
        other.join()


def test_the_code_version_changes_with_a_runtime_package_and_with_python(monkeypatch):
    """A stored artifact made by another TensorFlow (or numpy, ...) or another Python is not reused."""
    import pruneflow.tasks.core.stage as stage_module

    def version():
        code_version.cache_clear()
        return code_version("pruneflow.tasks.stages.strip")

    before = version()
    for package in stage_module.RUNTIME_PACKAGES:
        with monkeypatch.context() as patched:
            real = stage_module._installed
            patched.setattr(stage_module, "_installed", lambda name, package=package: "0.0.0" if name == package else real(name))
            assert version() != before, package
    assert version() == before
    with monkeypatch.context() as patched:
        patched.setattr(sys, "version_info", (3, 99, 0, "final", 0))
        assert version() != before
    with monkeypatch.context() as patched:  # a bug-fix release builds the same
        patched.setattr(sys, "version_info", (*sys.version_info[:2], 99, "final", 0))
        assert version() == before
    assert version() == before
    assert re.fullmatch("[0-9a-f]{16}", before)


def install_distribution(site: Path, name: str, version: str | None) -> None:
    """Install (or with None, remove) a distribution's metadata in `site`, as pip would."""
    for old in site.glob(f"{name.replace('-', '_')}-*.dist-info"):
        shutil.rmtree(old)
    if version is not None:
        info = site / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    importlib.invalidate_caches()
    stage_module._installed.cache_clear()  # versions are read once per process


def test_upgrading_a_package_a_stage_names_changes_its_code_and_key(tmp_path, monkeypatch):
    """A stage's `packages` (the runtimes it runs files in) are part of its code, besides its module's."""
    monkeypatch.syspath_prepend(str(tmp_path))
    plain = Stage("note", write_note)
    named = Stage("note", write_note, packages=("pruneflow-fake-runtime",))
    inputs = {"source": Content(digest="ab"), "repeat": 2}
    codes, keys = [], []
    for version in ("1.0", "2.0", None):  # installed, upgraded, removed
        install_distribution(tmp_path, "pruneflow-fake-runtime", version)
        codes.append(named.code)
        keys.append(named.key(**inputs))
        assert re.fullmatch("[0-9a-f]{16}", named.code)
    assert len(set(codes)) == len(set(keys)) == 3
    assert plain.code == code_version(write_note.__module__)  # naming no package: its module's version
    assert plain.code not in codes
    stage_module._installed.cache_clear()


def test_a_key_is_32_hex_digits_and_refuses_what_json_cannot_represent():
    """A key names a folder; it never falls back on a value's str(), which may differ between runs."""
    stage = Stage("note", write_note)
    assert re.fullmatch("[0-9a-f]{32}", stage.key(source=Content(digest="ab"), repeat=2))
    with pytest.raises(TypeError, match="is not JSON serializable"):
        stage.key(source=Content.model_construct(digest=Path("/a/model.h5")), repeat=2)


Factor = Annotated[float, Field(ge=0.0)]


def scale_note(out: Path, source: Content, factor: Factor) -> Note:
    return Note(folder=out, text=source.digest * int(factor))


def test_inputs_keep_their_annotated_constraints_into_the_prefect_task():
    """A constrained input (a Sparsity, a Schedule's discriminator) keeps its metadata, in the inputs
    and in the parameters of the stage's task."""
    stage = Stage("scaled", scale_note)
    assert stage.inputs == {"source": Content, "factor": Factor}
    assert get_args(stage.inputs["factor"])[1:] == get_args(Factor)[1:]
    parameters = inspect.signature(stage.task.fn).parameters
    assert [(name, parameter.annotation) for name, parameter in parameters.items()] == [
        ("store", ArtifactStore), ("source", Content), ("factor", Factor),
    ]
    assert inspect.signature(stage.task.fn).return_annotation is Note


def test_a_stage_is_frozen_and_retrying_gives_another_stage_with_the_same_key():
    stage = Stage("note", write_note)
    with pytest.raises(dataclasses.FrozenInstanceError):
        stage.retries = 3
    retried = stage.retrying(3, 2.0)
    assert (retried.retries, retried.retry_delay_seconds) == (3, 2.0)
    assert (stage.retries, stage.retry_delay_seconds) == (0, 0.0)
    inputs = {"source": Content(digest="ab"), "repeat": 2}
    assert retried.key(**inputs) == stage.key(**inputs)


def test_a_stage_task_is_retried_only_when_asked_with_a_doubling_delay():
    plain = Stage("note", write_note).task
    assert (plain.name, plain.retries, plain.retry_delay_seconds, plain.retry_condition_fn) == ("note", 0, 0, None)
    assert plain.persist_result is False and plain.cache_policy == NONE and plain.tags == set()
    assert Stage("note", write_note, retries=2).task.retry_delay_seconds == [0.0, 0.0]  # no delay unless given
    retried = Stage("note", write_note, tags=("gpu",)).retrying(3, 5.0).task
    assert (retried.retries, retried.retry_delay_seconds, retried.tags) == (3, [5.0, 10.0, 20.0], {"gpu"})


def test_a_stage_task_retries_only_the_failures_retry_if_accepts_and_says_so(caplog):
    task = Stage("note", write_note, retries=2, retry_if=lambda exc: isinstance(exc, OSError)).task
    with caplog.at_level(logging.WARNING, logger="pruneflow"):
        assert task.retry_condition_fn(task, None, Failed(data=OSError("disk full"))) is True
        assert task.retry_condition_fn(task, None, Failed(data=ValueError("bad value"))) is False
        assert task.retry_condition_fn(task, None, Completed(data=1)) is False  # nothing failed
    assert [record.getMessage() for record in caplog.records] == [
        "note failed with OSError: retrying", "note failed with ValueError: not retried",
    ]


def test_a_stage_task_returns_the_built_artifact_then_a_cached_state_and_logs_its_description(tmp_path, caplog):
    stage = Stage("note", write_note, describe=lambda note: f"{len(note.text)} characters")
    store, source = ArtifactStore(root=tmp_path), Content(digest="ab")
    with caplog.at_level(logging.INFO, logger="pruneflow"):
        built = stage.task.fn(store=store, source=source, repeat=2)
        assert isinstance(built, Note) and built.text == "abab"
        cached = stage.task.fn(store=store, source=source, repeat=2)
    assert cached.name == "Cached" and cached.is_completed() and cached.result() == built
    assert cached.message == f"reused {built.folder}"
    described = [record.getMessage() for record in caplog.records if record.getMessage().startswith("note: 4")]
    assert described == ["note: 4 characters"] * 2  # built, then reused
    undescribed = Stage("other", write_note).task.fn(store=store, source=source, repeat=1)
    assert undescribed.text == "ab"


def test_stored_says_whether_an_intact_artifact_is_there_to_reuse_unless_refreshing(tmp_path):
    stage, store = Stage("note", write_note), ArtifactStore(root=tmp_path)
    inputs = {"source": Content(digest="ab"), "repeat": 2}
    assert stage.stored(store, **inputs) is False
    built, _ = stage.produce(store, **inputs)
    assert stage.stored(store, **inputs) is True
    assert stage.stored(store, source=Content(digest="cd"), repeat=2) is False
    with temporary_settings(updates={PREFECT_TASKS_REFRESH_CACHE: True}):  # `pruneflow run --refresh`
        assert stage.stored(store, **inputs) is False
    (built.folder / "note.txt").write_text("damaged")
    assert stage.stored(store, **inputs) is False


def test_importing_the_stage_module_imports_neither_prefect_nor_tensorflow():
    """Prefect is imported where a stage becomes a task, so the plain stage code runs without it."""
    code = (
        "import sys, pruneflow.tasks.core.stage; "
        "print(sorted({name.split('.')[0] for name in sys.modules} & {'prefect', 'tensorflow'}))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, sys.path))}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == "[]"
