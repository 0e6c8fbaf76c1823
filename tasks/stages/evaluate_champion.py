"""The evaluate_champion stage: the promoted file measured in this run, on this run's test split and machine."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.core.files import write_json
from pruneflow.tasks.core.stage import Stage
from pruneflow.tasks.libs.artifacts import Champion, ChampionEvaluation, PreparedDataset
from pruneflow.tasks.libs.compression import zip_size
from pruneflow.tasks.libs.dataset import load_split
from pruneflow.tasks.libs.runtimes import RUNTIMES, runtime_packages
from pruneflow.tasks.libs.timing import available_cpus, time_side_by_side
from pruneflow.tasks.specs.config import LatencySpec
from pruneflow.tasks.specs.formats import FORMATS, display_name


def measure_champion(
    out: Path, champion: Champion, dataset: PreparedDataset, batch_size: int, latency: LatencySpec, machine: str
) -> ChampionEvaluation:
    """The champion file's test accuracy (in its format's runtime), zip-deflated size and batch-1
    latency, measured as the challengers' are."""
    from pruneflow.tasks.core.runtime import keras

    keras.backend.clear_session()
    path, fmt = champion.file.path, FORMATS[champion.format]
    runtime = RUNTIMES[fmt.runtime]
    test = load_split(dataset, "test", batch_size)
    image = next(iter(load_split(dataset, "test", 1)))[0].numpy()
    try:
        predictor = runtime.predictor(path, available_cpus(), batch_size)
        hits = [predictor(images).argmax(axis=-1) == labels for images, labels in test.as_numpy_iterator()]
        accuracy = float(np.mean(np.concatenate(hits)))
        call = runtime.timed(path, image, latency.threads)
    except (ValueError, RuntimeError) as error:  # another input shape, or other classes, than this run's data
        raise PruneflowError(
            f"the champion {path} cannot be evaluated on this run's test split: {str(error).strip()[:300]}. It was "
            "promoted for other data or another model: move the promoted folder's link away to start a new line of "
            "champions, or point this config's output_root elsewhere."
        ) from None
    (timing,) = time_side_by_side({("champion", fmt.name): call}, latency)
    result = ChampionEvaluation(
        # Zipped under the name a challenger's file of its format has, so that sizes compare byte for byte.
        folder=out, version=champion.version, format=fmt.name, accuracy=accuracy, zip_bytes=zip_size(path, fmt.file),
        latency_ms=timing.median_ms, machine=machine, examples=dataset.counts["test"],
    )
    write_json(out / "champion.json", result.model_dump(mode="json", exclude={"folder", "digest"}))
    return result


def describe(result: ChampionEvaluation) -> str:
    return (
        f"champion ({display_name(result.format)}): test accuracy {result.accuracy:.4f}, "
        f"{result.zip_bytes:,} B zip-deflated, {result.latency_ms:.3f} ms"
    )


evaluate_champion = Stage("evaluate_champion", measure_champion, describe=describe, packages=runtime_packages())
