"""Dataset preparation: read the split CSVs, check every image, encode labels once, write a manifest."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from pydantic import BaseModel, ConfigDict

from tasks.config import DatasetConfig
from tasks.errors import PruneflowError
from tasks.files import atomic_path, file_digest, write_json

SPLITS = ("train", "val", "test")
COLUMNS = ("filename", "label")
MAX_LISTED = 20  # bad files named in one error; the rest are counted


class PreparedDataset(BaseModel):
    """Where the manifest and label mapping were written, and what they hold."""

    model_config = ConfigDict(frozen=True)

    manifest: Path
    labels: Path
    classes: list[str]
    counts: dict[str, int]


def read_split(csv_path: Path, split: str) -> pd.DataFrame:
    """Read one split's CSV into columns filename (absolute), label, csv_row.

    Raises:
        PruneflowError: the file is missing or empty, lacks a column, or has a blank cell.
    """
    if not csv_path.is_file():
        raise PruneflowError(f"{csv_path}: {split} CSV not found; check dataset.{split}_csv in the config")
    try:
        frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise PruneflowError(f"{csv_path}: the file is empty; it needs a header line 'filename,label'") from None
    missing = [column for column in COLUMNS if column not in frame.columns]
    if missing:
        raise PruneflowError(
            f"{csv_path}: missing column(s) {', '.join(missing)}; the header must name "
            f"'filename,label' (found {', '.join(map(str, frame.columns))})"
        )
    if frame.empty:
        raise PruneflowError(f"{csv_path}: the {split} split has no rows")
    frame = frame[list(COLUMNS)].copy()
    # Line numbers as a person sees them in an editor: the header is line 1.
    frame["csv_row"] = range(2, len(frame) + 2)
    for column in COLUMNS:
        blank = frame[frame[column].str.strip() == ""]
        if not blank.empty:
            rows = ", ".join(str(row) for row in blank["csv_row"].head(MAX_LISTED))
            raise PruneflowError(f"{csv_path}: blank {column} on line(s) {rows}; fill or delete those rows")
    frame["filename"] = [str((csv_path.parent / name).resolve()) for name in frame["filename"]]
    return frame


def find_bad_images(paths: list[str], channels: int) -> list[str]:
    """Return 'path: reason' for every image that is missing or does not decode as a JPEG."""
    from tasks.runtime import tf

    problems = []
    for path in paths:
        if not Path(path).is_file():
            problems.append(f"{path}: file not found")
            continue
        try:
            tf.io.decode_jpeg(tf.io.read_file(path), channels=channels)
        except tf.errors.InvalidArgumentError as error:
            reason = error.message.splitlines()[0] if error.message else "does not decode"
            problems.append(f"{path}: not a readable JPEG ({reason})")
    return problems


def encode_labels(frames: dict[str, pd.DataFrame], csv_paths: dict[str, Path]) -> list[str]:
    """The sorted classes of the train split; refuses a val/test label that train never has.

    One mapping for all splits: encoding each split on its own would give the same class a
    different index wherever a split lacks a class.
    """
    classes = sorted(frames["train"]["label"].unique())
    known = set(classes)
    for split in ("val", "test"):
        unseen = sorted(set(frames[split]["label"]) - known)
        if unseen:
            raise PruneflowError(
                f"{csv_paths[split]}: label(s) {', '.join(unseen)} never appear in the train split "
                f"({csv_paths['train']}); the model cannot learn them. Add training images or drop those rows."
            )
    return classes


def write_manifest(config: DatasetConfig, out_dir: Path) -> PreparedDataset:
    """Check the three splits and write manifest.parquet and labels.json under `out_dir`.

    Raises:
        PruneflowError: on a bad CSV, an unreadable image (all of them are listed, up to a cap)
            or a val/test label unseen in train.
    """
    csv_paths = {"train": config.train_csv, "val": config.val_csv, "test": config.test_csv}
    frames = {split: read_split(path, split) for split, path in csv_paths.items()}
    classes = encode_labels(frames, csv_paths)

    problems = []
    for split in SPLITS:
        problems += find_bad_images(list(frames[split]["filename"]), config.channels)
    if problems:
        shown = "\n  ".join(problems[:MAX_LISTED])
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise PruneflowError(
            f"{len(problems)} image(s) listed in the dataset CSVs cannot be read:\n  {shown}{more}\n"
            "Fix or remove those files, or delete their rows from the CSV."
        )

    index = {label: i for i, label in enumerate(classes)}
    manifest = pd.concat(
        [frame.assign(split=split) for split, frame in frames.items()], ignore_index=True
    )
    manifest["label_index"] = manifest["label"].map(index).astype("int32")
    manifest["digest"] = [file_digest(Path(path)) for path in manifest["filename"]]
    manifest = manifest[["filename", "label", "label_index", "split", "digest"]]

    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / "manifest.parquet"
    with atomic_path(manifest_path) as tmp:
        pq.write_table(pa.Table.from_pandas(manifest, preserve_index=False), tmp)
    labels_path = write_json(out_dir / "labels.json", {"classes": classes})
    return PreparedDataset(
        manifest=manifest_path,
        labels=labels_path,
        classes=classes,
        counts={split: len(frames[split]) for split in SPLITS},
    )


def load_split(dataset: PreparedDataset, split: str, config: DatasetConfig):
    """A batched tf.data pipeline of (image in [0, 1], label index) for one split.

    Only the train split is shuffled (with config.shuffle_seed) and, when config.augment is
    on, randomly flipped; val and test keep their CSV order and pixels, so every evaluation
    sees the same data.
    """
    from tasks.runtime import tf

    frame = pd.read_parquet(dataset.manifest)
    frame = frame[frame["split"] == split]
    size = (config.image_height, config.image_width)

    def decode(path, label):
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=config.channels)
        image = tf.image.convert_image_dtype(image, tf.float32)
        return tf.image.resize(image, size), label

    data = tf.data.Dataset.from_tensor_slices((frame["filename"].to_numpy(), frame["label_index"].to_numpy()))
    data = data.map(decode, num_parallel_calls=tf.data.AUTOTUNE).cache()
    if split == "train":
        data = data.shuffle(len(frame), seed=config.shuffle_seed, reshuffle_each_iteration=True)
        if config.augment:
            data = data.map(
                lambda image, label: (tf.image.random_flip_left_right(image, seed=config.shuffle_seed), label),
                num_parallel_calls=tf.data.AUTOTUNE,
            )
    return data.batch(config.batch_size).prefetch(tf.data.AUTOTUNE)


@task(cache_policy=NONE)
def prepare_dataset(config: DatasetConfig, out_dir: Path) -> PreparedDataset:
    """Check the splits and write the manifest the later stages read."""
    prepared = write_manifest(config, out_dir)
    get_run_logger().info(
        "Dataset: %s images (%s), %d classes: %s",
        sum(prepared.counts.values()),
        ", ".join(f"{split} {n}" for split, n in prepared.counts.items()),
        len(prepared.classes),
        ", ".join(prepared.classes),
    )
    return prepared
