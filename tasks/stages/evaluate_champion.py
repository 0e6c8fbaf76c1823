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
from pruneflow.tasks.libs.interpreter import Predictor, available_cpus
from pruneflow.tasks.libs.models import evaluate
from pruneflow.tasks.libs.outcome import FORMAT_NAMES, KERAS, challenger_name
from pruneflow.tasks.libs.timing import keras_call, tflite_call, time_side_by_side
from pruneflow.tasks.specs.config import LatencySpec


def measure_champion(
    out: Path, champion: Champion, dataset: PreparedDataset, batch_size: int, latency: LatencySpec, machine: str
) -> ChampionEvaluation:
    """The champion file's test accuracy (in the interpreter for a TFLite file), zip-deflated size
    and batch-1 latency, measured as the challengers' are."""
    from pruneflow.tasks.core.runtime import keras

    keras.backend.clear_session()
    path = champion.file.path
    test = load_split(dataset, "test", batch_size)
    image = next(iter(load_split(dataset, "test", 1)))[0].numpy()
    try:
        if champion.format == KERAS:
            model = champion.file.load()
            accuracy, _ = evaluate(model, test)
            call = keras_call(model, image)
        else:
            predictor = Predictor(path, available_cpus(), batch_size)
            hits = [predictor(images).argmax(axis=-1) == labels for images, labels in test.as_numpy_iterator()]
            accuracy = float(np.mean(np.concatenate(hits)))
            call = tflite_call(path, image, latency.threads)
    except (ValueError, RuntimeError) as error:  # another input shape, or other classes, than this run's data
        raise PruneflowError(
            f"the champion {path} cannot be evaluated on this run's test split: {str(error).strip()[:300]}. It was "
            "promoted for other data or another model: move the promoted folder's link away to start a new line of "
            "champions, or point this config's output_root elsewhere."
        ) from None
    (timing,) = time_side_by_side({("champion", champion.format): call}, latency)
    result = ChampionEvaluation(
        # Zipped under the name a challenger's file of its format has, so that sizes compare byte for byte.
        folder=out, version=champion.version, format=champion.format, accuracy=accuracy, zip_bytes=zip_size(path, challenger_name(champion.format)),
        latency_ms=timing.median_ms,
        machine=machine, examples=dataset.counts["test"],
    )
    write_json(out / "champion.json", result.model_dump(mode="json", exclude={"folder", "digest"}))
    return result


def describe(result: ChampionEvaluation) -> str:
    return (
        f"champion ({FORMAT_NAMES.get(result.format, result.format)}): test accuracy {result.accuracy:.4f}, "
        f"{result.zip_bytes:,} B zip-deflated, {result.latency_ms:.3f} ms"
    )


evaluate_champion = Stage("evaluate_champion", measure_champion, describe=describe)
