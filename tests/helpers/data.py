"""Tiny real data: JPEGs in train/val/test CSVs, and a run config over them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).parents[2]

IMAGE_SIZE = 16

CLASSES = ("bottom", "top")  # which half of the image is bright

SPLIT_SIZES = {"train": 40, "val": 12, "test": 12}


def write_tiny_dataset(folder: Path, seed: int = 0, size: int = IMAGE_SIZE) -> Path:
    """Write JPEGs and train/val/test CSVs (paths relative to the CSVs' folder).

    Each image is noise with one bright half, so a small CNN learns it in two epochs.
    """
    from pruneflow.tasks.core.runtime import tf

    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    for split, count in SPLIT_SIZES.items():
        rows = []
        for i in range(count):
            label = CLASSES[i % 2]
            image = rng.integers(0, 80, size=(size, size, 3))
            half = slice(0, size // 2) if label == "top" else slice(size // 2, size)
            image[half] += 170
            name = f"img/{split}_{i:03d}.jpg"
            tf.io.write_file(str(folder / name), tf.io.encode_jpeg(image.astype(np.uint8), quality=95))
            rows.append({"filename": name, "label": label})
        pd.DataFrame(rows).to_csv(folder / f"{split}.csv", index=False)
    return folder


def make_config_dict(data: Path, baseline: Path, output_root: Path, **sections) -> dict:
    config = {
        "dataset": {
            "train_csv": str(data / "train.csv"),
            "val_csv": str(data / "val.csv"),
            "test_csv": str(data / "test.csv"),
            "image_height": IMAGE_SIZE,
            "image_width": IMAGE_SIZE,
            "channels": 3,
            "batch_size": 8,
        },
        "model": {"baseline": str(baseline)},
        "pruning": {"kind": "constant", "target_sparsity": 0.5, "begin_step": 0, "frequency": 1},
        "training": {"epochs": 2, "optimizer": "adam", "learning_rate": 1e-3},
        "output_root": str(output_root),
        "seed": 0,
        # One TFLite format, briefly timed, its layer errors not measured: the tests that are about the
        # files set every format, and those about the layer errors turn them on.
        "export": {"formats": ["int8"], "representative_images": 16, "latency_runs": 10, "latency_warmup": 1,
                   "latency_batch_runs": 5, "layer_errors": False},
    }
    config.update(sections)
    return config
