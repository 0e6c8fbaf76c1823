"""Mutation testing: does the fast suite fail when the code it guards is broken?

    .venv/bin/python bench/mutate.py [--modules gate,store] [--timeout 120] [--list] [--worktree] [--tests A,B]

Each mutant is one small change to one module of MODULES: a comparison flipped (< and <=, == and
!=, in and not in, is and is not), `and` and `or` swapped, a `not` dropped, an if or while
condition negated, a number moved by one, True and False swapped, + and -, * and / swapped, a
call statement removed, a returned value replaced by None. The mutants are made in a copy of
HEAD in a temporary folder (the checkout is never edited; `pruneflow.*` imports from the copy,
put first on PYTHONPATH): the module is rewritten with the change (ast.unparse: formatting and
comments go, behaviour stays), its tests run there (pytest -x, no cache), and the original is
put back. A mutant is killed when the tests fail or time out, survived when they pass. Mutants
listed in EQUIVALENT are left out, each with the reason it cannot change behaviour. Score:
killed / (killed + survived), a timeout counting as killed.
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# module name -> (its file, the fast tests that guard it)
MODULES = {
    "gate": ("tasks/decide/gate.py", ["tests/tasks/decide/test_gate.py"]),
    "promote": ("tasks/decide/promote.py", ["tests/tasks/decide/test_promote.py"]),
    "store": ("tasks/core/store.py", ["tests/tasks/core/test_store.py"]),
    "stage": ("tasks/core/stage.py", ["tests/tasks/core/test_stage.py"]),
    "confine": ("tasks/preflight/confine.py", ["tests/tasks/preflight/test_confine.py"]),
}

# (module, line, description) -> why the mutant cannot change what the code does
EQUIVALENT: dict[tuple[str, int, str], str] = {
    ("gate", 29, "Lt -> LtE"): "target < min_sparsity - EPSILON: the bound already carries EPSILON; < and <= differ "
    "only for a target exactly 1e-9 under min_sparsity, which no float sum of the config's values gives",
    ("gate", 31, "Gt -> GtE"): "drop > max_accuracy_drop + EPSILON: likewise, only for a drop exactly 1e-9 over the "
    "bound",
    ("promote", 95, "6 -> 7"): "the length of the temporary link's random suffix: renamed onto promoted at once, a "
    "leftover found by its prefix",
    ("promote", 96, "True -> False"): "symlink_to's target_is_directory: read on Windows only; a POSIX link has no type",
    ("promote", 114, "True -> False"): "Journal's frozen: no code assigns to a journal (model_copy makes a new one)",
    ("stage", 86, "returns None"): "_holds_a_path's False for a Content type: its only callers read it as a truth "
    "value (any(), if), where None and False are alike",
    ("stage", 115, "4 -> 5"): "how many times a parse hit by another thread's is tried again: one more try of a parse "
    "that then succeeds changes nothing (the race's rate in the test needs one)",
    ("store", 164, "2 -> 3"): "result.json's indent: the file is only read back through json.loads",
    ("store", 164, "True -> False"): "result.json's sort_keys: likewise",
    ("store", 207, "8 -> 9"): "the length of a .tmp- folder's random suffix: swept by the pattern .tmp-KEY-*, never read",
    ("store", 216, "2 -> 3"): "digests.json's indent: read through json.loads; the artifact's digest is of the file's "
    "bytes, so it changes with them, consistently, as any edit to store.py changes every stage key anyway",
    ("store", 216, "True -> False"): "digests.json's sort_keys: the mapping is built from sorted paths already",
    ("store", 218, "8 -> 9"): "the length of an .old- folder's random suffix: swept by the pattern .old-KEY-*, never read",
}

SWAPS = {
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq,
    ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
    ast.And: ast.Or, ast.Or: ast.And, ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
}


@dataclass(frozen=True)
class Mutant:
    index: int  # the node's position in ast.walk order
    line: int
    description: str


def _docstring(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    parent = parents.get(node)
    return (
        isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
        and isinstance(parent, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
    )


def _mutations(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> list[tuple[str, callable]]:
    """(description, a function that changes a copy of `node` in place) for each mutation of `node`."""
    found = []
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            if type(op) in SWAPS:
                new = SWAPS[type(op)]
                found.append((f"{type(op).__name__} -> {new.__name__}",
                              lambda n, i=i, new=new: n.ops.__setitem__(i, new())))
    elif isinstance(node, (ast.BoolOp, ast.BinOp)) and type(node.op) in SWAPS:
        new = SWAPS[type(node.op)]
        found.append((f"{type(node.op).__name__} -> {new.__name__}", lambda n, new=new: setattr(n, "op", new())))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        found.append(("not dropped", "replace-with-operand"))
    elif isinstance(node, (ast.If, ast.While)):
        found.append(("condition negated", lambda n: setattr(n, "test", ast.UnaryOp(ast.Not(), n.test))))
    elif isinstance(node, ast.Constant) and type(node.value) in (int, float) and not isinstance(node.value, bool):
        found.append((f"{node.value!r} -> {node.value + 1!r}", lambda n: setattr(n, "value", n.value + 1)))
    elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
        found.append((f"{node.value} -> {not node.value}", lambda n: setattr(n, "value", not n.value)))
    elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and not _docstring(node, parents):
        found.append(("call removed", "replace-with-pass"))
    elif isinstance(node, ast.Return) and node.value is not None and not (
        isinstance(node.value, ast.Constant) and node.value.value is None
    ):
        found.append(("returns None", lambda n: setattr(n, "value", ast.Constant(None))))
    return found


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}


def mutants(source: str) -> list[Mutant]:
    tree = ast.parse(source)
    parents = _parents(tree)
    found = []
    for index, node in enumerate(ast.walk(tree)):
        for description, _ in _mutations(node, parents):
            found.append(Mutant(index, node.lineno, description))
    return found


def mutated(source: str, mutant: Mutant) -> str:
    """The module's source with `mutant` applied."""
    tree = ast.parse(source)
    parents = _parents(tree)
    node = list(ast.walk(tree))[mutant.index]
    change = dict(_mutations(node, parents))[mutant.description]
    if change in ("replace-with-operand", "replace-with-pass"):
        replacement = node.operand if change == "replace-with-operand" else ast.Pass()
        parent = parents[node]
        for field, value in ast.iter_fields(parent):
            if value is node:
                setattr(parent, field, replacement)
            elif isinstance(value, list) and node in value:
                value[value.index(node)] = replacement
    else:
        change(node)
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n"


def copy_of_head(folder: Path, worktree: bool = False) -> tuple[Path, dict[str, str]]:
    """HEAD's files (with `worktree`, the checkout's files as they are: tracked and untracked,
    not ignored) in `folder`/tree, importable as pruneflow.* through `folder`/root; the
    environment that imports them from there."""
    tree, root = folder / "tree", folder / "root" / "pruneflow"
    tree.mkdir()
    root.mkdir(parents=True)
    if worktree:
        listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                                capture_output=True, check=True).stdout.decode().split("\0")
        for relative in filter(None, listed):
            if (REPO / relative).is_file():
                (tree / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / relative, tree / relative)
    else:
        archive = subprocess.run(["git", "archive", "HEAD"], cwd=REPO, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    for package in ("flows", "tasks", "deployments"):
        (root / package).symlink_to(tree / package)
    return tree, {**os.environ, "PYTHONPATH": str(root.parent)}


def run_tests(tree: Path, env: dict[str, str], tests: list[str], timeout: float) -> str:
    """"killed", "timeout" or "survived"."""
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    try:
        done = subprocess.run(command, cwd=tree, env=env, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout"
    return "survived" if done.returncode == 0 else "killed"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", default=",".join(MODULES))
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    parser.add_argument("--worktree", action="store_true", help="mutate the checkout's files as they are, not HEAD's")
    parser.add_argument("--tests", help="comma-separated test files to run instead of the module's own")
    args = parser.parse_args()
    totals = {"killed": 0, "timeout": 0, "survived": 0, "equivalent": 0}
    with tempfile.TemporaryDirectory(prefix="pruneflow-mutants-") as folder:
        tree, env = copy_of_head(Path(folder), args.worktree)
        for name in args.modules.split(","):
            relative, tests = MODULES[name]
            tests = args.tests.split(",") if args.tests else tests
            path = tree / relative
            original = path.read_text()
            found = mutants(original)
            print(f"\n== {name} ({relative}): {len(found)} mutants, tests {' '.join(tests)}", flush=True)
            if not args.list and run_tests(tree, env, tests, args.timeout) != "survived":
                sys.exit(f"{' '.join(tests)} fail on the unmutated code: fix them first")
            for mutant in found:
                key = (name, mutant.line, mutant.description)
                if key in EQUIVALENT:
                    totals["equivalent"] += 1
                    print(f"  line {mutant.line:4d}  {mutant.description:24s} equivalent: {EQUIVALENT[key]}")
                    continue
                if args.list:
                    print(f"  line {mutant.line:4d}  {mutant.description}")
                    continue
                started = time.perf_counter()
                path.write_text(mutated(original, mutant))
                try:
                    outcome = run_tests(tree, env, tests, args.timeout)
                finally:
                    path.write_text(original)
                totals[outcome] += 1
                print(f"  line {mutant.line:4d}  {mutant.description:24s} {outcome:8s} "
                      f"({time.perf_counter() - started:.0f} s)", flush=True)
    if not args.list:
        scored = totals["killed"] + totals["timeout"] + totals["survived"]
        print(f"\nkilled {totals['killed']}, timeout {totals['timeout']}, survived {totals['survived']}, "
              f"equivalent (left out) {totals['equivalent']}; score "
              f"{(totals['killed'] + totals['timeout']) / max(scored, 1):.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
