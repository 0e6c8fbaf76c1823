"""The model registry: each sweep as an MLflow run, each promotion as a registered model version.

With `registry.tracking_uri` set, a sweep logs one MLflow run in `registry.experiment`: its
config as parameters (flattened: `pruning.kind`), every target's figures as metrics
(`target_0.60/int8/accuracy`), the champion's, the report (sweep.md, sweep.json) and the plot,
and tags saying what was decided (`pruneflow.decision`: promoted, kept the champion, ...; a
challenger that lost is tagged `pruneflow.challenger: rejected`). A promotion uploads the
promoted version folder (Keras model, deployable file, config, metrics) into that run, registers
it as a version of `registry.model_name`, and moves the `champion` alias onto it (pruneflow.tasks.decide.promote
does the moves, so that a promotion is whole or rolled back, folder and registry alike).

Without a tracking URI nothing here runs, and MLflow need not be installed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.core.log import run_logger
from pruneflow.tasks.specs.config import RegistryConfig, RunConfig

CHAMPION = "champion"  # the alias of the registered version that is promoted now
PROMOTED_ARTIFACTS = "promoted"  # where, in the MLflow run, the promoted version folder goes


def client(spec: RegistryConfig):
    """An MlflowClient on the configured tracking server (also the registry)."""
    try:
        from mlflow import MlflowClient
    except ImportError:
        raise PruneflowError(
            f"registry.tracking_uri is {spec.tracking_uri!r} but MLflow is not installed: "
            "pip install 'pruneflow[registry]', or remove registry.tracking_uri"
        ) from None
    return MlflowClient(tracking_uri=spec.tracking_uri, registry_uri=spec.tracking_uri)


@contextlib.contextmanager
def registry_errors(spec: RegistryConfig, doing: str) -> Iterator[None]:
    """MLflow's errors, an unreachable server among them, as a PruneflowError naming the server."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except (MlflowException, OSError) as error:
        raise PruneflowError(
            f"MLflow at registry.tracking_uri {spec.tracking_uri} failed while {doing}: {str(error).strip()[:300]}. "
            "Check that the server runs and that this machine reaches it."
        ) from error


def flat_params(config: RunConfig) -> dict[str, str]:
    """The config as MLflow parameters: nested keys joined with dots, unset values left out."""
    params: dict[str, str] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif value is not None:
            params[prefix] = str(value)[:6000]  # MLflow's limit on a parameter's value

    walk("", config.model_dump(mode="json", exclude={"registry", "sensitivity"}))
    return params


def target_metrics(results, champion) -> dict[str, float]:
    """Every target's file figures, the baseline's and the champion's, as MLflow metrics."""
    from pruneflow.tasks.decide.gate import candidates

    metrics: dict[str, float] = {}
    for result, file in candidates(results):
        point = f"target_{result.target:.2f}" + (f"_channels_{result.channel_fraction:.2f}" if result.channel_fraction else "")
        prefix = f"{point}/{file.format}"
        metrics.update({
            f"{prefix}/accuracy": file.accuracy, f"{prefix}/zip_bytes": file.zip_bytes,
            f"{prefix}/latency_ms": file.latency_median_ms, f"{point}/sparsity": result.measured_sparsity,
        })
        metrics["baseline/accuracy"] = result.baseline.accuracy
    if champion is not None:
        metrics.update({
            "champion/accuracy": champion.accuracy, "champion/zip_bytes": champion.zip_bytes,
            "champion/latency_ms": champion.latency_ms,
        })
    return metrics


class SweepRun:
    """The MLflow run one sweep logs into, opened before its promotion and closed after its report."""

    def __init__(self, spec: RegistryConfig, run_name: str, flow_run_id: str):
        self.spec, self.client = spec, client(spec)
        with registry_errors(spec, f"opening a run in experiment {spec.experiment!r}"):
            experiment = self.client.get_experiment_by_name(spec.experiment)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(spec.experiment)
            run = self.client.create_run(
                experiment_id, run_name=run_name, tags={"pruneflow.flow_run_id": flow_run_id}
            )
        self.run_id, self.artifact_uri = run.info.run_id, run.info.artifact_uri

    def log_sweep(self, config: RunConfig, results, decision, chosen, run_dir: Path, failed: bool) -> None:
        """Parameters, metrics, report and plot, and what was decided; then the run is finished
        (FAILED when targets failed)."""
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, 0) for key, value in target_metrics(results, decision.champion).items()]
        params = [Param(key, value) for key, value in flat_params(config).items()]
        challenger = "none" if chosen is None else ("promoted" if decision.promote else "rejected")
        tags = [
            RunTag("pruneflow.decision", decision.verdict), RunTag("pruneflow.challenger", challenger),
            RunTag("pruneflow.reasons", "\n".join(decision.reasons)[:5000]),
        ]
        if chosen is not None:
            tags.append(RunTag("pruneflow.challenger_file", f"{chosen[0].point.label()} {chosen[1].format}"))
        with registry_errors(self.spec, "logging the sweep"):
            for first in range(0, max(len(params), len(metrics)), 100):  # MLflow takes 100 params per batch
                self.client.log_batch(
                    self.run_id, metrics=metrics[first:first + 100], params=params[first:first + 100],
                    tags=tags if first == 0 else [],
                )
            for name in ("sweep.md", "sweep.json", "sweep.png"):
                if (run_dir / name).is_file():
                    self.client.log_artifact(self.run_id, str(run_dir / name))
            self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")
        run_logger().info("Logged the sweep in MLflow: run %s of experiment %s (%s)", self.run_id, self.spec.experiment,
                          decision.verdict)

    def fail(self) -> None:
        """Mark the run failed (the sweep raised); best effort, the sweep's own error matters more."""
        try:
            self.client.set_terminated(self.run_id, "FAILED")
        except Exception as error:  # noqa: BLE001: the server may be what failed
            run_logger().warning("Could not mark MLflow run %s failed: %s", self.run_id, error)

    def register(self, version: Path, tags: dict[str, str]) -> str:
        """Upload the promoted version folder into this run and register it; its version number.
        The `champion` alias is not moved here (see move_champion)."""
        from mlflow.exceptions import MlflowException

        name = self.spec.model_name
        with registry_errors(self.spec, f"registering a version of {name!r}"):
            self.client.log_artifacts(self.run_id, str(version), PROMOTED_ARTIFACTS)
            try:
                self.client.create_registered_model(name, description="Pruned models promoted by pruneflow sweeps.")
            except MlflowException as error:
                if error.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            created = self.client.create_model_version(
                name, source=f"{self.artifact_uri}/{PROMOTED_ARTIFACTS}", run_id=self.run_id, tags=tags,
            )
        return str(created.version)


@contextlib.contextmanager
def sweep_run(spec: RegistryConfig, run_name: str, flow_run_id: str) -> Iterator[SweepRun | None]:
    """The sweep's MLflow run, marked failed if the sweep raises; None without a tracking URI."""
    if spec.tracking_uri is None:
        yield None
        return
    run = SweepRun(spec, run_name, flow_run_id)
    try:
        yield run
    except BaseException:
        run.fail()
        raise


def champion_version(spec: RegistryConfig) -> str | None:
    """The version the `champion` alias points to; None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    with registry_errors(spec, f"reading the {CHAMPION!r} alias of {spec.model_name!r}"):
        try:
            model = client(spec).get_registered_model(spec.model_name)
        except MlflowException as error:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
    version = model.aliases.get(CHAMPION)
    return None if version is None else str(version)  # an int from a database store, a str through a server


def move_champion(spec: RegistryConfig, version: str | None) -> None:
    """Point the `champion` alias at `version`, or remove it (None: there was no champion)."""
    mlflow = client(spec)
    with registry_errors(spec, f"moving the {CHAMPION!r} alias of {spec.model_name!r}"):
        if version is not None:
            mlflow.set_registered_model_alias(spec.model_name, CHAMPION, version)
        elif champion_version(spec) is not None:
            mlflow.delete_registered_model_alias(spec.model_name, CHAMPION)


def mark_rolled_back(spec: RegistryConfig, version: str) -> None:
    """Tag a version whose promotion was rolled back, so that nobody mistakes it for a champion."""
    with registry_errors(spec, f"tagging version {version} of {spec.model_name!r}"):
        client(spec).set_model_version_tag(spec.model_name, version, "pruneflow.rolled_back", "true")
