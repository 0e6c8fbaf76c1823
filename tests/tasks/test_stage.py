"""A stage is one definition: its inputs, artifact type, code and key all derive from its build function."""

import typing
from pathlib import Path
from typing import Literal, get_args, get_origin

import pytest
from pydantic import BaseModel

from tasks.config import ConstantSchedule, PolynomialDecaySchedule, parse_config
from tasks.pipeline import STAGES
from tasks.stage import Stage, code_closure, code_version
from tasks.store import ArtifactStore, Content, StoredArtifact


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
    raise TypeError(f"no perturbation for {value!r}")


def config_samples(config_dict) -> dict:
    """A valid value for each input type the stages take that is not Content."""
    config = parse_config(config_dict)
    return {"shape": config.dataset.shape, "training": config.training_spec, "batch_size": 8,
            "expected": 0.5, "tolerance": 0.01}


SCHEDULES = [
    ConstantSchedule(target_sparsity=0.5, begin_step=0, end_step=10, frequency=1),
    PolynomialDecaySchedule(initial_sparsity=0.2, final_sparsity=0.8, begin_step=0, end_step=10, frequency=2),
]


def sample_inputs(stage: Stage, samples: dict, schedule) -> dict:
    inputs = {}
    for name, kind in stage.inputs.items():
        if isinstance(kind, type) and issubclass(kind, Content):
            inputs[name] = kind.model_construct(digest=f"digest-of-{name}")  # keys read the digest only
        elif name == "schedule":
            inputs[name] = schedule
        else:
            inputs[name] = samples[name]
    return inputs


@pytest.mark.parametrize("schedule", SCHEDULES, ids=["constant", "polynomial_decay"])
@pytest.mark.parametrize("stage", STAGES, ids=[stage.name for stage in STAGES])
def test_every_field_a_stage_receives_changes_its_key(stage, schedule, config_dict):
    """Changing any one input, or any one field of an input section, gives another key. The
    fields come from the models themselves, so a field added later is covered here unedited."""
    inputs = sample_inputs(stage, config_samples(config_dict), schedule)
    key = stage.key(**inputs)
    assert key == stage.key(**inputs)  # and nothing else (time, paths, the process) enters it
    checked = 0
    for name, value in inputs.items():
        if isinstance(value, Content):
            changes = [value.model_construct(digest=value.digest + "-changed")]
        elif isinstance(value, BaseModel):
            hints = typing.get_type_hints(type(value))
            other = {field: perturbed(getattr(value, field), hints[field]) for field in type(value).model_fields}
            changes = [value.model_copy(update={field: new}) for field, new in other.items() if new is not FIXED]
        else:
            changes = [perturbed(value, type(value))]
        for changed in changes:
            assert stage.key(**{**inputs, name: changed}) != key, f"{stage.name}: {name} -> {changed!r}"
            checked += 1
    assert checked >= len(inputs)


@pytest.mark.parametrize("stage", STAGES, ids=[stage.name for stage in STAGES])
def test_keys_know_inputs_by_content_never_by_path(stage):
    """A file or artifact enters a key by its digest; no other input carries a path to depend on."""
    for name, kind in stage.inputs.items():
        if isinstance(kind, type) and issubclass(kind, Content):
            continue
        models = [kind] if isinstance(kind, type) and issubclass(kind, BaseModel) else [
            arg for arg in typing.get_args(get_args(kind)[0] if get_origin(kind) is typing.Annotated else kind)
            if isinstance(arg, type) and issubclass(arg, BaseModel)
        ]
        for model in models:
            hints = typing.get_type_hints(model)
            assert not [field for field in model.model_fields if hints[field] is Path], f"{stage.name}.{name}"


def test_the_same_artifact_at_another_path_gives_the_same_key(config_dict):
    from tasks.models import ModelFile
    from tasks.size import measure_size

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


def test_a_build_function_that_takes_a_path_or_returns_no_artifact_is_refused():
    def takes_a_path(out: Path, model: Path) -> Note: ...

    def returns_a_dict(out: Path, repeat: int) -> dict: ...

    def no_out_folder(repeat: int) -> Note: ...

    with pytest.raises(TypeError, match="input model is a Path; keys use content"):
        Stage("bad", takes_a_path)
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
    closure = code_closure("tasks.prune")
    assert {"tasks.prune", "tasks.models", "tasks.dataset", "tasks.schedule", "tasks.stage"} <= set(closure)
    assert "tasks.runtime" in closure  # imported inside functions only
    assert "tasks.inputs" not in closure  # imported for type checking only
    assert "tasks.sanity" not in closure and "tasks.report" not in closure  # later stages' code is not its code


def test_editing_any_module_a_stage_imports_changes_its_code_version(tmp_path, monkeypatch):
    package = tmp_path / "scratchpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "stage.py").write_text("def build():\n    from scratchpkg import helper\n    return helper.VALUE\n")
    (package / "helper.py").write_text("VALUE = 1\n")
    (package / "unrelated.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    def version():
        code_closure.cache_clear()
        code_version.cache_clear()
        return code_version("scratchpkg.stage")

    before = version()
    (package / "unrelated.py").write_text("VALUE = 2\n")
    assert version() == before
    (package / "helper.py").write_text("VALUE = 2\n")
    assert version() != before
