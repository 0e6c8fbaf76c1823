"""The dataset: the split CSVs read and checked, labels encoded once, images listed by content,
decoded, written as TFRecords and read back as tf.data pipelines.

check_inputs reads the CSVs once per run (read_splits, encode_labels) and lists every image with
its content digest (list_images); the stage receives that listing and never reads a CSV again.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.core.files import file_digest
from pruneflow.tasks.core.store import Content, digest_of
from pruneflow.tasks.libs.artifacts import Calibration, PreparedDataset
from pruneflow.tasks.specs.config import DatasetConfig, ImageShape

SPLITS = ("train", "val", "test")
COLUMNS = ("filename", "label")
MAX_LISTED = 5  # bad files named in one error, the rest counted: a user error stays within MESSAGE_LIMIT characters
# What tools write for a missing value (pandas, Excel, SQL exports); never a real label or file.
MISSING_MARKERS = {"nan", "NaN", "NAN", "<NA>", "#N/A", "null", "NULL"}


def read_split(csv_path: Path, split: str) -> pd.DataFrame:
    """Read one split's CSV into columns filename (as written), label, csv_row and path (absolute).

    Raises:
        PruneflowError: the file is missing or empty, lacks a column, or has a blank cell.
    """
    if not csv_path.is_file():
        raise PruneflowError(f"{csv_path}: {split} CSV not found; check dataset.{split}_csv in the config")
    try:
        # utf-8-sig: a byte-order mark, as spreadsheets write one, is not part of the first column's name.
        frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False, skipinitialspace=True, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise PruneflowError(f"{csv_path}: the file is empty; it needs a header line 'filename,label'") from None
    except UnicodeDecodeError as error:
        raise PruneflowError(
            f"{csv_path}: not UTF-8 text (byte {error.start}: {error.reason}); save it as UTF-8 (CSV UTF-8 in a "
            "spreadsheet)"
        ) from None
    except pd.errors.ParserError as error:
        raise PruneflowError(f"{csv_path}: not a CSV pandas can read ({str(error).strip()}); check its quotes and commas") from None
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
        values = frame[column].str.strip()
        blank = frame[(values == "") | values.isin(MISSING_MARKERS)]
        if not blank.empty:
            rows = ", ".join(f"{row} ({value!r})" for row, value in zip(blank["csv_row"].head(MAX_LISTED), blank[column]))
            raise PruneflowError(
                f"{csv_path}: blank or missing {column} on line(s) {rows}; fill or delete those rows"
            )
    nul = frame[frame["filename"].str.contains("\x00", regex=False) | frame["label"].str.contains("\x00", regex=False)]
    if not nul.empty:
        rows = ", ".join(map(str, nul["csv_row"].head(MAX_LISTED)))
        raise PruneflowError(f"{csv_path}: a NUL character on line(s) {rows}; the file is not plain text there")
    folder = csv_path.parent.resolve()
    # String joins, not Path.resolve() per row: this runs on every flow run, for every image.
    frame["filename"] = frame["filename"].str.strip()
    frame["path"] = [os.path.normpath(os.path.join(folder, name)) for name in frame["filename"]]
    repeated = frame[frame.duplicated("path", keep=False)]
    if not repeated.empty:
        lines = repeated.groupby("path")["csv_row"].apply(lambda rows: " and ".join(map(str, rows)))
        shown = "; ".join(f"{path} on lines {rows}" for path, rows in list(lines.items())[:MAX_LISTED])
        raise PruneflowError(f"{csv_path}: {len(lines)} image(s) listed more than once: {shown}. Keep one row each.")
    return frame


def encode_labels(frames: dict[str, pd.DataFrame], csv_paths: dict[str, Path]) -> list[str]:
    """The sorted classes of the train split; refuses a val/test label that train never has.

    One mapping for all splits: encoding each split on its own would give the same class a
    different index wherever a split lacks a class.
    """
    classes = sorted(frames["train"]["label"].unique())
    if len(classes) < 2:
        raise PruneflowError(
            f"{csv_paths['train']}: the train split has a single class ({classes[0]}); "
            "a classifier needs at least two. Add images of the other classes."
        )
    known = set(classes)
    for split in ("val", "test"):
        unseen = sorted(set(frames[split]["label"]) - known)
        if unseen:
            raise PruneflowError(
                f"{csv_paths[split]}: label(s) {', '.join(unseen)} never appear in the train split "
                f"({csv_paths['train']}); the model cannot learn them. Add training images or drop those rows."
            )
    return classes


def read_splits(config: DatasetConfig) -> dict[str, pd.DataFrame]:
    """The three splits' rows, each checked for structure (see read_split).

    Raises:
        PruneflowError: also when one image is listed in two splits: a test image seen in
            training makes the test accuracy a lie.
    """
    frames = {split: read_split(path, split) for split, path in csv_paths_of(config).items()}
    owner: dict[str, str] = {}
    leaks = []
    for split, frame in frames.items():
        for path in frame["path"]:
            if path in owner:
                leaks.append(f"{path} (in {owner[path]} and {split})")
            owner.setdefault(path, split)
    if leaks:
        shown = "; ".join(leaks[:MAX_LISTED])
        raise PruneflowError(
            f"{len(leaks)} image(s) are listed in two splits, which leaks data between them: {shown}. "
            "Keep each image in exactly one of the train, val and test CSVs."
        )
    return frames


def split_warnings(frames: dict[str, pd.DataFrame]) -> list[str]:
    """Problems worth a warning but not a failure: a class that val has but test lacks."""
    missing = sorted(set(frames["val"]["label"]) - set(frames["test"]["label"]))
    if not missing:
        return []
    return [f"class(es) {', '.join(missing)} appear in val but never in test: their test accuracy is unmeasured"]


class SplitListing(BaseModel):
    """One split's rows, in CSV order."""

    model_config = ConfigDict(frozen=True)

    csv: Path
    filenames: list[str]  # as the CSV gives them, relative to its folder
    paths: list[str]  # absolute
    labels: list[str]
    digests: list[str]  # SHA-256 of each image; "missing" for a file that does not exist


class DatasetListing(Content):
    """Every image of the three splits with its label and content digest, and the classes.

    Its digest covers each split's rows in order (the filename as the CSV gives it, the label,
    the image's content) and not where the dataset's folder is: the same folder moved elsewhere
    makes the same dataset.
    """

    splits: dict[str, SplitListing]
    classes: list[str]
    warnings: list[str] = []

    @property
    def counts(self) -> dict[str, int]:
        return {split: len(rows.paths) for split, rows in self.splits.items()}


def list_images(
    frames: dict[str, pd.DataFrame], classes: list[str], csv_paths: dict[str, Path],
    digest: Callable[[str], str] = file_digest,
) -> DatasetListing:
    """The listing of the splits read by read_splits, with every image's digest.

    Args:
        digest: the SHA-256 of a file (e.g. DigestCache.digest, which skips unchanged files).
    """
    splits = {
        split: SplitListing(
            csv=csv_paths[split], filenames=list(frame["filename"]), paths=list(frame["path"]),
            labels=list(frame["label"]),
            digests=[digest(path) if os.path.isfile(path) else "missing" for path in frame["path"]],
        )
        for split, frame in frames.items()
    }
    # What the prepared dataset holds, manifest included: rows as the CSVs give them (filenames
    # relative to their folder), labels and image contents; never where the folder is.
    content = {split: list(zip(rows.filenames, rows.labels, rows.digests)) for split, rows in splits.items()}
    return DatasetListing(splits=splits, classes=classes, warnings=split_warnings(frames), digest=digest_of(content))


def csv_paths_of(config: DatasetConfig) -> dict[str, Path]:
    return {"train": config.train_csv, "val": config.val_csv, "test": config.test_csv}


def list_dataset(config: DatasetConfig, digest: Callable[[str], str] = file_digest) -> DatasetListing:
    """Read and check the config's CSVs and list their images (what check_inputs does, unconfined)."""
    frames, csv_paths = read_splits(config), csv_paths_of(config)
    return list_images(frames, encode_labels(frames, csv_paths), csv_paths, digest)


def decode_image(path, shape: ImageShape):
    """Read a JPEG and resize it to `shape`, as uint8 (exact when no resize is needed)."""
    from pruneflow.tasks.core.runtime import tf

    image = tf.io.decode_jpeg(tf.io.read_file(path), channels=shape.channels)
    resized = tf.image.resize(image, (shape.height, shape.width))
    return tf.cast(tf.round(tf.clip_by_value(resized, 0.0, 255.0)), tf.uint8)


SIGNATURES = {b"\xff\xd8\xff": "JPEG", b"\x89PNG": "PNG", b"GIF8": "GIF", b"BM": "BMP", b"RIFF": "RIFF/WebP"}


def sniff_format(path: Path) -> str:
    """The image format a file's first bytes announce; 'empty' or 'not an image' otherwise."""
    with open(path, "rb") as fh:
        head = fh.read(8)
    if not head:
        return "empty"
    return next((kind for magic, kind in SIGNATURES.items() if head.startswith(magic)), "not an image")


def unreadable(path: str) -> str | None:
    """Why a listed image cannot be decoded before trying: missing, unreadable or not a JPEG."""
    if not Path(path).is_file():
        return "file not found"
    try:
        kind = sniff_format(Path(path))
    except OSError as error:  # e.g. no permission to read it
        return f"cannot be read ({error.strerror})"
    # TF's JPEG decoder also accepts PNG and GIF; a file named .jpg must be a JPEG.
    return None if kind == "JPEG" else f"not a readable JPEG (the file is {kind})"


DECODE_BATCH_BYTES = 64 * 2**20  # decoded images handed back to Python at once


def decode_all(paths: list[str], shape: ImageShape):
    """(position, image) for every path that decodes, in order; a JPEG that fails to decode is
    left out. A parallel tf.data pipeline handing back batches: several times faster than
    decoding one image at a time, the per-image cost being mostly Python's."""
    from pruneflow.tasks.core.runtime import tf

    batch = max(1, min(1024, DECODE_BATCH_BYTES // (shape.height * shape.width * shape.channels)))
    data = tf.data.Dataset.from_tensor_slices((tf.range(len(paths), dtype=tf.int64), tf.constant(paths, tf.string)))
    data = data.map(lambda i, path: (i, decode_image(path, shape)), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    for positions, images in data.ignore_errors().batch(batch).prefetch(1).as_numpy_iterator():
        yield from zip(positions.tolist(), images)


def decode_error(path: str, shape: ImageShape) -> str:
    """TF's reason for a JPEG that would not decode (decoded again, alone, to get it)."""
    from pruneflow.tasks.core.runtime import tf

    try:
        decode_image(path, shape)
    except tf.errors.OpError as error:
        return error.message.splitlines()[0] if error.message else "does not decode"
    return "does not decode"


def write_records(paths: list[str], label_indices: list[int], shape: ImageShape, out_path: Path) -> list[str]:
    """Decode every image into a TFRecord file, in the given order; return 'path: reason' for
    each one that failed."""
    from pruneflow.tasks.core.runtime import tf

    reasons = {i: reason for i, path in enumerate(paths) if (reason := unreadable(path))}
    candidates = [i for i in range(len(paths)) if i not in reasons]
    written = set()
    with tf.io.TFRecordWriter(str(out_path)) as writer:
        if candidates:
            for position, image in decode_all([paths[i] for i in candidates], shape):
                i = candidates[position]
                features = {
                    "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image.tobytes()])),
                    "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label_indices[i]])),
                }
                writer.write(tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString())
                written.add(i)
    for i in candidates:
        if i not in written:
            reasons[i] = f"not a readable JPEG ({decode_error(paths[i], shape)})"
    return [f"{paths[i]}: {reasons[i]}" for i in sorted(reasons)]


def load_split(
    dataset: PreparedDataset, split: str, batch_size: int, *, shuffle_seed: int | None = None, augment: bool = False
):
    """A batched tf.data pipeline of (image as float32 in [0, 1], label index) for one split.

    Only the train split may be shuffled (with `shuffle_seed`) and, with `augment`, randomly
    flipped; val and test keep their CSV order and pixels, so every evaluation sees the same data.
    """
    from pruneflow.tasks.core.runtime import tf

    shape = dataset.image_shape
    spec = {"image": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}

    def parse(record):
        example = tf.io.parse_single_example(record, spec)
        image = tf.reshape(tf.io.decode_raw(example["image"], tf.uint8), shape)
        return tf.image.convert_image_dtype(image, tf.float32), tf.cast(example["label"], tf.int32)

    data = tf.data.TFRecordDataset(str(dataset.records(split)))
    # A TFRecord file's length is unknown to tf.data; Keras then runs a partial extra step in
    # the first epoch, which advances TFMOT's pruning step and the optimizer once too often.
    data = data.apply(tf.data.experimental.assert_cardinality(dataset.counts[split]))
    data = data.map(parse, num_parallel_calls=tf.data.AUTOTUNE).cache()
    if (shuffle_seed is not None or augment) and split != "train":
        raise ValueError(f"the {split} split is never shuffled or augmented")
    if shuffle_seed is not None:
        data = data.shuffle(dataset.counts[split], seed=shuffle_seed, reshuffle_each_iteration=True)
    if augment:
        data = data.map(
            lambda image, label: (tf.image.random_flip_left_right(image, seed=shuffle_seed), label),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return data.batch(batch_size).prefetch(tf.data.AUTOTUNE)


REPRESENTATIVE_SEED = 0  # which training images calibrate int8: the same ones in every run


def balanced_draw(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Sorted positions of `count` of `labels` (all of them if fewer), as even across the classes
    as they allow: each class's positions in a seeded order, the classes taking turns in a seeded
    order; a class that runs out leaves its turns to the others."""
    rng = np.random.default_rng(seed)
    classes = rng.permutation(np.unique(labels))
    queues = [list(rng.permutation(np.flatnonzero(labels == c))) for c in classes]
    chosen: list[int] = []
    wanted = min(count, len(labels))
    while len(chosen) < wanted:
        for queue in queues:
            if queue and len(chosen) < wanted:
                chosen.append(int(queue.pop(0)))
    return np.sort(np.array(chosen, dtype=np.int64))


def calibration_draw(dataset: PreparedDataset, count: int) -> tuple[np.ndarray, Calibration]:
    """`count` training images drawn evenly across the classes, the same ones in every run (see
    balanced_draw), and what was drawn."""
    return balanced_images(dataset, "train", count)


def balanced_images(dataset: PreparedDataset, split: str, count: int) -> tuple[np.ndarray, Calibration]:
    """`count` images of `split` drawn evenly across the classes, the same ones in every run (see
    balanced_draw), and what was drawn; only those images are kept in memory."""
    manifest = pd.read_parquet(dataset.manifest, columns=["split", "label_index"])
    labels = manifest.label_index[manifest.split == split].to_numpy()
    positions = balanced_draw(labels, count, REPRESENTATIVE_SEED)
    chosen, kept, seen = set(positions.tolist()), [], 0
    for batch, _ in load_split(dataset, split, 256).as_numpy_iterator():
        kept += [image for offset, image in enumerate(batch) if seen + offset in chosen]
        seen += len(batch)
        if len(kept) == len(chosen):
            break
    drawn = np.bincount(labels[positions], minlength=len(dataset.classes))
    available = np.bincount(labels, minlength=len(dataset.classes))
    return np.stack(kept), Calibration(
        seed=REPRESENTATIVE_SEED,
        per_class={name: int(n) for name, n in zip(dataset.classes, drawn)},
        available={name: int(n) for name, n in zip(dataset.classes, available)},
    )


def representative_images(dataset: PreparedDataset, count: int) -> np.ndarray:
    """`count` training images drawn evenly across the classes, the same ones in every run."""
    return calibration_draw(dataset, count)[0]


def split_arrays(dataset: PreparedDataset, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Every image of a split (float32 in [0, 1]) and its label index, in the CSV's order."""
    batches = list(load_split(dataset, split, 256).as_numpy_iterator())
    return np.concatenate([images for images, _ in batches]), np.concatenate([labels for _, labels in batches])
