"""A stage is one definition: its name, its build function and its pre-flight check.

Everything else derives from the build function, so nothing is kept in step by hand:

- its inputs are the build function's parameters (after `out`, and `work` for a resumable
  stage), with their types;
- its artifact type is the build function's return type (a StoredArtifact);
- its key is a digest of its name, its code and every input it receives: the content digest
  of each Content input (an upstream artifact, a model file, the dataset listing; never a
  path), and the value of every other input (a config section, a schedule, a number). A build
  function receives nothing else, so it cannot read a value its key ignores;
- its code is what the build function's module does and what every module of pruneflow.tasks
  that it imports, directly or not, does (their syntax trees, without comments, docstrings and
  field descriptions), with the versions of the libraries that do the work (RUNTIME_PACKAGES):
  editing any code a stage runs, or upgrading TensorFlow, changes its key; editing what only
  documents it, or the modules of pruneflow.tasks.unkeyed (progress shown, faults injected by a
  drill), does not;
- its Prefect task stores the artifact under the key (see ArtifactStore.produce) and ends
  `Cached` when the store already held an intact artifact under it. The store is the only
  cache (Prefect keeps no cache records for stages): a folder that is missing or damaged is
  simply built again.

A flow runs a stage through pruneflow.flows.running: `run_stage(prune_train, store, dataset=..., ...)`.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib.metadata
import importlib.util
import inspect
import sys
import threading
import typing
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel

from pruneflow.tasks.core.log import run_logger
from pruneflow.tasks.core.store import ArtifactStore, Content, StoredArtifact, digest_of

if TYPE_CHECKING:
    from prefect import Task

A = TypeVar("A", bound=StoredArtifact)
FOLDERS = ("out", "work")  # the build function's own folders, never inputs


# Third-party code whose upgrade may change what a stage builds (decoding, training, saving):
# its versions are part of every stage's code version, as is Python's.
RUNTIME_PACKAGES = ("tensorflow", "tf-keras", "tensorflow-model-optimization", "numpy", "h5py", "pandas", "pyarrow")


def fingerprint(value: Any) -> Any:
    """What a stage's key records of one input, at any depth: a Content by its digest, a model
    by its fields, a collection by its items, a plain value as itself.

    Raises:
        TypeError: a path (keys know files by content, never by where they are), or a value
            with no stable JSON form.
    """
    if isinstance(value, Content):
        return value.digest
    if isinstance(value, BaseModel):
        return {name: fingerprint(getattr(value, name)) for name in type(value).model_fields}
    if isinstance(value, (list, tuple)):
        return [fingerprint(item) for item in value]
    if isinstance(value, dict):
        return {str(name): fingerprint(item) for name, item in value.items()}
    if isinstance(value, Path):
        raise TypeError(f"{value}: a path is not content; pass a Content (an artifact or a ModelFile) instead")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{value!r} ({type(value).__name__}) has no stable form for a stage key")


def _holds_a_path(annotation: Any) -> bool:
    """Whether values of this type can carry a Path outside a Content (which keys read by digest)."""
    if annotation is Path:
        return True
    if isinstance(annotation, type) and issubclass(annotation, Content):
        return False
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return any(_holds_a_path(hint) for hint in typing.get_type_hints(annotation).values())
    return any(_holds_a_path(arg) for arg in typing.get_args(annotation))


# The code a stage's key covers: modules under KEYED, less those under UNKEYED, which by rule
# never change what a stage writes (the progress it shows, the faults a drill injects).
KEYED = "pruneflow.tasks"
UNKEYED = "pruneflow.tasks.unkeyed"


def _under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _is_type_checking_guard(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")


# Python 3.11's ast is not safe to use from several threads at once (CPython gh-106905): a
# parse that another thread's parse interleaves with (a sweep's stages computing their code
# versions together; TensorFlow's autograph, or a traceback being formatted, in another thread)
# fails with "SystemError: AST constructor recursion depth mismatch". The count is reset at each
# parse, so the same parse again succeeds. Every parse here holds this lock, and is tried again.
_AST = threading.RLock()
_AST_RACE = "AST constructor recursion depth mismatch"


def _parse(source: str, retries: int = 4) -> ast.Module:
    with _AST:
        for _ in range(retries):
            try:
                return ast.parse(source)
            except SystemError as error:
                if _AST_RACE not in str(error):
                    raise
        return ast.parse(source)


@functools.cache
def _imported_modules(module: str, keyed: str, unkeyed: str) -> frozenset[str]:
    """Modules under `keyed`, not under `unkeyed`, that `module`'s source imports, anywhere in it (function bodies too, where
    this project imports TensorFlow lazily), except under `if TYPE_CHECKING:`."""
    spec = importlib.util.find_spec(module)
    here = module if spec.submodule_search_locations else module.rpartition(".")[0]  # for relative imports
    tree = _parse(Path(spec.origin).read_text())
    skipped = {
        id(node)
        for guard in ast.walk(tree)
        if _is_type_checking_guard(guard)
        for statement in guard.body
        for node in ast.walk(statement)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), here) if node.level else node.module
            found.add(base)
            spec_of_base = _spec(base) if _under(base, keyed) else None
            if spec_of_base is not None and spec_of_base.submodule_search_locations:
                found |= {f"{base}.{alias.name}" for alias in node.names}  # `from pruneflow.tasks.libs import models`
    return frozenset(
        name for name in found if _under(name, keyed) and not _under(name, unkeyed) and _spec(name) is not None
    )


def _spec(name: str):
    """The module's spec, without running it (so never importing TensorFlow); None if it is no module."""
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


@functools.cache
def code_closure(module: str, keyed: str = KEYED, unkeyed: str = UNKEYED) -> tuple[str, ...]:
    """`module` and every module under `keyed`, but not under `unkeyed`, that it imports,
    directly or through others."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += _imported_modules(name, keyed, unkeyed) - seen
    return tuple(sorted(seen))


class _Documentation(ast.NodeTransformer):
    """Removes what documents code without changing what it does: docstrings, and the
    `description=` and `title=` of a call (a pydantic Field's, shown in the UI form)."""

    def _undocumented(self, node):
        self.generic_visit(node)
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
        return node

    visit_Module = visit_ClassDef = visit_FunctionDef = visit_AsyncFunctionDef = _undocumented

    def visit_Call(self, node: ast.Call):
        self.generic_visit(node)
        node.keywords = [keyword for keyword in node.keywords if keyword.arg not in ("description", "title")]
        return node


@functools.cache
def code_digest(path: Path) -> str:
    """Digest of what a module's source does: its syntax tree, without comments, docstrings and
    descriptions (_Documentation), so that editing those changes no stage's key. Once per module
    and process: the stages' closures share most of their modules."""
    return digest_of(ast.dump(_Documentation().visit(_parse(path.read_text()))))


@functools.cache
def _installed(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.cache
def code_version(module: str, keyed: str = KEYED, unkeyed: str = UNKEYED) -> str:
    """Digest of the source of `module` and of the modules it imports (see code_closure), of
    the RUNTIME_PACKAGES' versions and of Python's.

    Read once per process (check_inputs reads every stage's as a run starts): a file edited
    while a run is going must not change the keys of the code that is actually running.
    """
    sources = {name: code_digest(Path(importlib.util.find_spec(name).origin)) for name in code_closure(module, keyed, unkeyed)}
    packages = {name: _installed(name) for name in RUNTIME_PACKAGES}
    return digest_of({"sources": sources, "packages": packages, "python": list(sys.version_info[:2])})[:16]


# The tag of the stages that train on the accelerator. A Prefect concurrency limit on it (the
# deployments create one, `gpu_slots` wide) keeps one training per GPU, across flow runs and
# workers; without a limit on the server (a local run) the tag does nothing.
TRAINING_TAG = "pruneflow-training"


@dataclasses.dataclass(frozen=True)
class Stage(Generic[A]):
    """One stage of the pipeline.

    Attributes:
        name: the stage's name: its folder in the artifact store and its Prefect task's name.
        build: `build(out, [work,] **inputs) -> artifact`: plain Python that writes the artifact's
            files into the empty folder `out` and returns its description. No Prefect in it.
        check: a cheap pre-flight check, called by check_inputs before any stage runs, with
            what check_inputs read once for every stage (the CSVs, the baseline model).
        describe: one line about the artifact, logged whether it was built or reused.
        resumable: the build also takes `work`, a folder of this key that outlives a failed
            attempt (checkpoints), removed once the artifact is stored.
        retry_if: which exceptions are worth a retry (the retries themselves are set per run,
            see `retrying`).
        retries, retry_delay_seconds: of the stage's task; the delay doubles at each retry.
        tags: of the stage's task runs (TRAINING_TAG for the stages that train).
        packages: distributions besides RUNTIME_PACKAGES whose versions change what it builds
            (the runtimes it runs files in): in its code version.
    """

    name: str
    build: Callable[..., A]
    check: Callable[[Any], None] | None = None
    describe: Callable[[A], str] | None = None
    resumable: bool = False
    retry_if: Callable[[BaseException], bool] | None = None
    retries: int = 0
    retry_delay_seconds: float = 0.0
    tags: tuple[str, ...] = ()
    packages: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        params = list(inspect.signature(self.build).parameters)
        folders = list(FOLDERS if self.resumable else FOLDERS[:1])
        if params[: len(folders)] != folders:
            raise TypeError(f"stage {self.name}: {self.build.__qualname__} must take {', '.join(folders)} first")
        for name, kind in self.inputs.items():
            if _holds_a_path(kind):
                raise TypeError(
                    f"stage {self.name}: input {name} can hold a Path; keys use content, so pass a Content "
                    "(an artifact, a ModelFile) or a section without paths"
                )
        if not (isinstance(self.artifact, type) and issubclass(self.artifact, StoredArtifact)):
            raise TypeError(f"stage {self.name}: {self.build.__qualname__} must return a StoredArtifact subclass")

    @functools.cached_property
    def _hints(self) -> dict[str, Any]:
        return typing.get_type_hints(self.build, include_extras=True)

    @functools.cached_property
    def inputs(self) -> dict[str, Any]:
        """Input name -> type: the build function's parameters after its folders."""
        return {name: self._hints[name] for name in inspect.signature(self.build).parameters if name not in FOLDERS}

    @functools.cached_property
    def artifact(self) -> type[A]:
        return self._hints["return"]

    @property
    def code(self) -> str:
        if not self.packages:
            return code_version(self.build.__module__)
        packages = {name: _installed(name) for name in self.packages}
        return digest_of({"module": code_version(self.build.__module__), "packages": packages})[:16]

    def key(self, **inputs: Any) -> str:
        """The content address of what `build` makes of these inputs (see the module docstring)."""
        if set(inputs) != set(self.inputs):
            raise TypeError(f"stage {self.name} takes {sorted(self.inputs)}, got {sorted(inputs)}")
        received = {name: fingerprint(value) for name, value in inputs.items()}
        return digest_of({"stage": self.name, "code": self.code, "inputs": received}, strict=True)[:32]

    def produce(self, store: ArtifactStore, **inputs: Any) -> tuple[A, bool]:
        """The artifact for these inputs, built or reused from the store; plain Python, no Prefect.

        Returns:
            The artifact, and whether it was reused rather than built.
        """
        key = self.key(**inputs)
        work = store.work_folder(self.name, key) if self.resumable else None
        build = functools.partial(self.build, work=work) if self.resumable else self.build
        return store.produce(self.name, key, self.artifact, lambda out: build(out, **inputs), scratch=work)

    def stored(self, store: ArtifactStore, **inputs: Any) -> bool:
        """Whether an intact artifact for these inputs is in the store, to be reused (not under
        `pruneflow run --refresh`)."""
        from prefect.settings import PREFECT_TASKS_REFRESH_CACHE

        return not PREFECT_TASKS_REFRESH_CACHE.value() and store.problem(self.name, self.key(**inputs)) is None

    def retrying(self, retries: int, delay_seconds: float) -> Stage[A]:
        """This stage with its task retried up to `retries` times (on failures `retry_if` accepts)."""
        return dataclasses.replace(self, retries=retries, retry_delay_seconds=delay_seconds)

    @functools.cached_property
    def task(self) -> Task:
        """The stage as a Prefect task taking `store` and the stage's inputs."""
        from prefect import task
        from prefect.cache_policies import NONE
        from prefect.states import Completed
        from prefect.tasks import exponential_backoff

        def run(store: ArtifactStore, **inputs: Any):
            artifact, reused = self.produce(store, **inputs)
            if self.describe is not None:
                run_logger().info("%s: %s", self.name, self.describe(artifact))
            if reused:
                return Completed(name="Cached", data=artifact, message=f"reused {artifact.folder}")
            return artifact

        parameters = [inspect.Parameter("store", inspect.Parameter.KEYWORD_ONLY, annotation=ArtifactStore)] + [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=kind) for name, kind in self.inputs.items()
        ]
        run.__signature__ = inspect.Signature(parameters, return_annotation=self.artifact)
        run.__name__ = run.__qualname__ = self.name  # Prefect derives the task's key from it
        run.__doc__ = self.build.__doc__
        retry_condition = None
        if self.retry_if is not None:
            retry_condition = functools.partial(_retry_condition, self.name, self.retry_if)
        return task(
            run, name=self.name, cache_policy=NONE, persist_result=False, retries=self.retries,
            retry_delay_seconds=exponential_backoff(backoff_factor=self.retry_delay_seconds) if self.retries else 0,
            retry_condition_fn=retry_condition, tags=list(self.tags),
        )


def _retry_condition(name: str, retry_if: Callable[[BaseException], bool], task, task_run, state) -> bool:
    """Prefect's retry_condition_fn: retry only the failures `retry_if` accepts, and say so."""
    try:
        state.result()
    except Exception as exc:  # the task's own exception, re-raised by result()
        retry = retry_if(exc)
        run_logger().warning("%s failed with %s: %s", name, type(exc).__name__, "retrying" if retry else "not retried")
        return retry
    return False
