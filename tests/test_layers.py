"""The code's shape, read from its own imports (TYPE_CHECKING and function-level ones counted):
no cycle, layers that import one way, no stage that imports another, one namespace."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]
# Where each package's source lives in the repository (pyproject.toml's package-dir).
SOURCES = {"pruneflow.tasks": "tasks", "pruneflow.flows": "flows", "pruneflow.deployments": "deployments"}

# Bottom to top: a module imports only from its own layer or the ones below it, and, within a
# layer, only from its own package (preflight and decide do not import each other).
LAYERS = (
    ("pruneflow.tasks.core",),  # the stage machinery: Stage, the store, files, errors, the log, TensorFlow's import
    ("pruneflow.tasks.unkeyed",),  # progress shown and faults injected: in no stage's key
    ("pruneflow.tasks.specs",),  # the run config and the typed inputs each stage takes
    ("pruneflow.tasks.libs",),  # what the stages use: data, models, schedules, sparsity, runtimes, artifact types
    ("pruneflow.tasks.stages",),  # one module per stage
    ("pruneflow.tasks.preflight", "pruneflow.tasks.decide"),  # check_inputs; the nightly decision
    ("pruneflow.tasks.report", "pruneflow.tasks.demo"),  # the reports; the embedded demo
    ("pruneflow.flows",),  # the wiring, the list of stages, running a command
    ("pruneflow.deployments",),  # the server, the workers, the schedules
)
STAGES = "pruneflow.tasks.stages"


def module_files() -> dict[str, Path]:
    """Every module of the project by its installed name."""
    found = {}
    for package, folder in SOURCES.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            found[name] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project's modules that `name` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from package import module`
    return {imported for imported in found if imported in known and imported != name}


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def bare_imports() -> list[str]:
    """Imports of `tasks`, `flows` or `deployments` as top-level packages, in any Python file of the repository."""
    found = []
    for path in sorted(REPO.rglob("*.py")):
        if ".venv" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            names = [n for n in names if n.split(".")[0] in ("tasks", "flows", "deployments")]
            found += [f"{path.relative_to(REPO)}:{node.lineno}: {n}" for n in names]
    return found


def layer_of(module: str) -> tuple[int, str] | None:
    """The module's layer and the package that places it there, or None if no layer holds it."""
    for index, packages in enumerate(LAYERS):
        for package in packages:
            if module == package or module.startswith(package + "."):
                return index, package
    return None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports that go up a layer, across packages of one layer, or from a stage to another stage."""
    problems = []
    for module, imported in sorted(graph.items()):
        here = layer_of(module)
        for target in sorted(imported):
            there = layer_of(target)
            if here is None or there is None:
                continue  # package faces (pruneflow.tasks) hold nothing; unplaced modules are reported apart
            if there[0] > here[0] or (there[0] == here[0] and there[1] != here[1]):
                problems.append(f"{module} imports {target}: {there[1]} is not below {here[1]}")
            elif module.startswith(STAGES + ".") and target.startswith(STAGES + "."):
                problems.append(f"{module} imports {target}: a stage never imports another stage")
    return problems


def test_the_project_has_no_import_cycle():
    assert cycles(import_graph()) == []


def test_every_module_has_a_layer():
    unplaced = [name for name in import_graph() if layer_of(name) is None and name != "pruneflow.tasks"]
    assert unplaced == []


def test_layers_import_one_way_and_no_stage_imports_another():
    assert layer_violations(import_graph()) == []


def test_the_rules_report_a_planted_cycle_an_upward_import_and_a_stage_importing_a_stage():
    graph = import_graph()
    planted = {name: set(imports) for name, imports in graph.items()}
    planted["pruneflow.tasks.core.store"].add("pruneflow.tasks.stages.strip")  # up from the bottom layer, and a cycle
    planted["pruneflow.tasks.stages.strip"].add("pruneflow.tasks.stages.prune_train")
    planted["pruneflow.tasks.preflight.check_inputs"].add("pruneflow.tasks.decide.gate")  # across one layer
    assert any("pruneflow.tasks.core.store" in group for group in cycles(planted))
    assert [problem for problem in layer_violations(planted) if problem not in layer_violations(graph)] == [
        "pruneflow.tasks.core.store imports pruneflow.tasks.stages.strip: pruneflow.tasks.stages is not below "
        "pruneflow.tasks.core",
        "pruneflow.tasks.preflight.check_inputs imports pruneflow.tasks.decide.gate: pruneflow.tasks.decide is not "
        "below pruneflow.tasks.preflight",
        "pruneflow.tasks.stages.strip imports pruneflow.tasks.stages.prune_train: a stage never imports another stage",
    ]


def test_the_imports_read_count_type_checking_and_function_level_ones():
    graph = import_graph()
    # prune_train imports Readings under TYPE_CHECKING only, and TensorFlow's module inside functions only.
    assert {"pruneflow.tasks.libs.readings", "pruneflow.tasks.core.runtime"} <= graph["pruneflow.tasks.stages.prune_train"]


def test_the_code_imports_only_the_pruneflow_namespace():
    assert bare_imports() == []


def test_every_package_folder_is_installed():
    """A sub-package added to tasks/ and not listed in pyproject.toml would be missing from a wheel."""
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {name for name, path in module_files().items() if path.name == "__init__.py"}
    assert folders == listed


def test_outside_the_checkout_only_the_namespace_imports(tmp_path):
    script = (
        "import importlib.util as u\n"
        "print([name for name in ('tasks', 'flows', 'deployments') if u.find_spec(name)])\n"
        "import pruneflow.tasks.core.stage, pruneflow.flows.graph, pruneflow.deployments.gpu\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
