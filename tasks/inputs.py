"""A run's inputs, checked before any work: paths confined to the allowed folders, CSVs and model readable.

The paths of a config come from whoever fills the UI's form, so on a worker they are confined
to folders the worker's operator allows, one list per kind, in the worker's environment:

- PRUNEFLOW_DATA_ROOTS: the CSVs and every image they list;
- PRUNEFLOW_MODEL_ROOTS: the baseline model;
- PRUNEFLOW_OUTPUT_ROOTS: output_root.

Each is a list of folders separated by ':'. A path is allowed when, with `..` and every symlink
resolved, it lies inside one of them. A run started from a deployment refuses to start when
one is unset; a run started by hand (`pruneflow run`) is confined only by those that are set.
A run started from a deployment may set model.trust_custom_code only where the worker allows it
with PRUNEFLOW_ALLOW_CUSTOM_CODE=1: loading such a model runs its code on the worker.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.cache_policies import NONE
from pydantic import BaseModel, ConfigDict

from tasks.config import RunConfig, Schedule
from tasks.dataset import MAX_LISTED, dataset_key, encode_labels, read_splits
from tasks.errors import PruneflowError
from tasks.files import DigestCache, file_digest, storage_errors
from tasks.models import check_compatible, load_model
from tasks.prune import require_prunable
from tasks.schedule import resolve_schedule

ALLOW_CODE_ENV = "PRUNEFLOW_ALLOW_CUSTOM_CODE"
DIGEST_CACHE = ".file-digests.sqlite"  # in the artifact store: image digests (see DigestCache)
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


class CheckedInputs(BaseModel):
    """What check_inputs learnt: the first stages' keys (from the inputs' contents) and the schedule."""

    model_config = ConfigDict(frozen=True)

    dataset_key: str
    baseline_digest: str
    schedule: Schedule


def check_run_inputs(config: RunConfig, roots: Roots) -> CheckedInputs:
    """Check everything a run reads, cheaply, before any stage does expensive work.

    Raises:
        PruneflowError: a path outside the roots (the config's, or an image's in a CSV); a bad
            CSV or labels (see tasks.dataset); a schedule under which nothing would be pruned;
            a baseline that is missing, not a Keras model, carrying code while untrusted, not
            prunable or not matching the images or classes; an output folder that cannot be
            written.
    """
    data = config.dataset
    csv_paths = {"train": data.train_csv, "val": data.val_csv, "test": data.test_csv}
    for split, path in csv_paths.items():
        roots.confine("data", path, f"dataset.{split}_csv")
    roots.confine("models", config.model.baseline, "model.baseline")
    roots.confine("outputs", config.output_root, "output_root")

    frames = read_splits(data)
    confine_images(frames, csv_paths, roots)
    classes = encode_labels(frames, csv_paths)
    schedule = resolve_schedule(config.pruning, config.steps_per_epoch(len(frames["train"])), config.training.epochs)
    check_baseline(config, len(classes))
    check_writable(config.output_root)
    with DigestCache(config.output_root / "artifacts" / DIGEST_CACHE) as cache:
        key = dataset_key(data, frames, cache.digest)
    return CheckedInputs(dataset_key=key, baseline_digest=file_digest(config.model.baseline), schedule=schedule)


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


def check_writable(output_root: Path) -> None:
    """Refuse an output folder that cannot be created or written (a probe file, removed at once)."""
    with storage_errors(output_root, "into output_root"):
        output_root.mkdir(parents=True, exist_ok=True)
        probe = output_root / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()


def check_baseline(config: RunConfig, n_classes: int) -> None:
    """Load the baseline (refusing code it carries, unless trusted) and check that it fits the data
    and can be pruned: a few seconds, against minutes of data preparation and training."""
    from tasks.runtime import keras

    keras.backend.clear_session()
    path = config.model.baseline
    model = load_model(path, trusted=config.model.trust_custom_code)
    require_prunable(model, path)
    check_compatible(model, path, config.dataset, n_classes)


@task(cache_policy=NONE)
def check_inputs(config: RunConfig, from_deployment: bool) -> CheckedInputs:
    """Refuse bad or out-of-bounds inputs before any stage runs; return the first stages' keys.

    Args:
        from_deployment: the run was started from a deployment (a schedule, or the UI's form):
            its paths must then be confined, so every root must be set.
    """
    roots = Roots.from_env()
    if from_deployment:
        why = "this run was started from a deployment, whose parameters anyone with UI access can set"
        roots.require_all(why)
        if config.model.trust_custom_code and os.environ.get(ALLOW_CODE_ENV) != "1":
            raise PruneflowError(
                f"model.trust_custom_code: true is refused: {why}, and loading such a model runs its code on "
                f"the worker. Run it with `pruneflow run` instead, or have the worker's operator set {ALLOW_CODE_ENV}=1."
            )
    return check_run_inputs(config, roots)
