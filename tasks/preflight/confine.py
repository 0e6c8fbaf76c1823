"""Paths confined to the folders the worker allows: the config's, and every image its CSVs list.

The paths of a config come from whoever fills the UI's form, so on a worker they are confined
to folders the worker's operator allows, one list per kind, in the worker's environment:

- PRUNEFLOW_DATA_ROOTS: the CSVs and every image they list;
- PRUNEFLOW_MODEL_ROOTS: the baseline model;
- PRUNEFLOW_OUTPUT_ROOTS: output_root.

Each is a list of folders separated by ':'. A path is allowed when, with `..` and every symlink
resolved, it lies inside one of them. A run started from a deployment refuses to start when
one is unset; a run started by hand (`pruneflow run`) is confined only by those that are set.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
from pydantic import BaseModel, ConfigDict

from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.libs.dataset import MAX_LISTED, csv_paths_of
from pruneflow.tasks.specs.config import RunConfig

ROOTS_ENV = {"data": "PRUNEFLOW_DATA_ROOTS", "models": "PRUNEFLOW_MODEL_ROOTS", "outputs": "PRUNEFLOW_OUTPUT_ROOTS"}


class Roots(BaseModel):
    """The folders a run may read data and models from and write outputs to; None: anywhere."""

    model_config = ConfigDict(frozen=True)

    data: tuple[Path, ...] | None = None
    models: tuple[Path, ...] | None = None
    outputs: tuple[Path, ...] | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Roots:
        """Read the three lists from the environment; an unset or empty variable means no limit."""
        lists = {}
        for kind, name in ROOTS_ENV.items():
            folders = [part for part in env.get(name, "").split(os.pathsep) if part.strip()]
            if any(not Path(folder).is_absolute() for folder in folders):
                raise PruneflowError(f"{name}={env[name]!r}: every folder must be an absolute path")
            lists[kind] = tuple(Path(os.path.realpath(folder)) for folder in folders) or None
        return cls(**lists)

    def require_all(self, why: str) -> None:
        """Refuse to run unconfined, e.g. for runs whose parameters come from the UI."""
        unset = [ROOTS_ENV[kind] for kind in ROOTS_ENV if getattr(self, kind) is None]
        if unset:
            raise PruneflowError(
                f"{why}, but {', '.join(unset)} {'is' if len(unset) == 1 else 'are'} not set on the worker: "
                "set them in the worker's environment to the folders runs may read and write "
                "(absolute paths, separated by ':'), then start the worker again"
            )

    def confine(self, kind: str, path: Path, field: str) -> None:
        """Refuse `path` unless, resolved, it lies inside one of the `kind` roots.

        Args:
            kind: "data", "models" or "outputs".
            field: what the path is, for the message (a config field, or a CSV line).
        """
        escaped = self.escapes(kind, path)
        if escaped:
            raise PruneflowError(
                f"{field}: {escaped} is outside the folders this worker allows for {kind} "
                f"({self.describe(kind)}). Use a path inside them, or ask the worker's operator to add its folder."
            )

    def escapes(self, kind: str, path: Path | str) -> str | None:
        """`path` (and what it resolves to, if that differs) when it lies outside every `kind` root."""
        allowed = getattr(self, kind)
        if allowed is None:
            return None
        # Strings, not Paths: this runs for every image of every run.
        real = os.path.realpath(path)
        if any(os.path.commonpath([real, root]) == str(root) for root in allowed):
            return None
        return f"{path} (which resolves to {real})" if real != os.path.abspath(path) else str(path)

    def describe(self, kind: str) -> str:
        return f"{', '.join(map(str, getattr(self, kind)))}, from {ROOTS_ENV[kind]}"


def confine_config(config: RunConfig, roots: Roots) -> None:
    """Refuse, naming the field, a config path outside its roots."""
    for split, path in csv_paths_of(config.dataset).items():
        roots.confine("data", path, f"dataset.{split}_csv")
    roots.confine("models", config.model.baseline, "model.baseline")
    roots.confine("outputs", config.output_root, "output_root")


def roots_env_of(config: RunConfig) -> dict[str, str]:
    """PRUNEFLOW_*_ROOTS that allow this config's own folders and nothing else: those of its CSVs,
    of its baseline and its output root (what confine_config checks)."""
    folders = {
        "data": {str(path.parent) for path in csv_paths_of(config.dataset).values()},
        "models": {str(config.model.baseline.parent)},
        "outputs": {str(config.output_root)},
    }
    return {ROOTS_ENV[kind]: os.pathsep.join(sorted(paths)) for kind, paths in folders.items()}


def confine_images(frames: dict[str, pd.DataFrame], csv_paths: dict[str, Path], roots: Roots) -> None:
    """Refuse, listing them by CSV line, the images that lie outside the data roots."""
    outside = [
        f"{csv_paths[split]}, line {row}: {escaped}"
        for split, frame in frames.items()
        for path, row in zip(frame["path"], frame["csv_row"])
        if (escaped := roots.escapes("data", path))
    ]
    if outside:
        shown = "\n  ".join(outside[:MAX_LISTED])
        more = f"\n  ... and {len(outside) - MAX_LISTED} more" if len(outside) > MAX_LISTED else ""
        raise PruneflowError(
            f"{len(outside)} image(s) listed in the dataset CSVs are outside the folders this worker "
            f"allows for data ({roots.describe('data')}):\n  {shown}{more}\nList only images inside them."
        )
