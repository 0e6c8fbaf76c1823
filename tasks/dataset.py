"""Dataset preparation: check the split CSVs and images, encode labels once, store decoded images."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import get_run_logger, task

from tasks.config import DatasetConfig
from tasks.errors import PruneflowError
from tasks.files import file_digest
from tasks.store import ARTIFACT_CACHE, ArtifactStore, StoredArtifact, code_version, digest_of, stage_key

SPLITS = ("train", "val", "test")
COLUMNS = ("filename", "label")
MAX_LISTED = 20  # bad files named in one error; the rest are counted
# What tools write for a missing value (pandas, Excel, SQL exports); never a real label or file.
MISSING_MARKERS = {"nan", "NaN", "NAN", "<NA>", "#N/A", "null", "NULL"}


class PreparedDataset(StoredArtifact):
    """A prepared dataset's folder and what it holds.

    The folder has manifest.parquet (filename, label, label_index, split, digest),
    labels.json, and one TFRecord file per split of decoded, resized uint8 images, so the
    later stages never decode a JPEG again.
    """

    classes: list[str]
    counts: dict[str, int]
    image_shape: tuple[int, int, int]
    warnings: list[str] = []

    @property
    def manifest(self) -> Path:
        return self.folder / "manifest.parquet"

    @property
    def labels(self) -> Path:
        return self.folder / "labels.json"

    def records(self, split: str) -> Path:
        return self.folder / f"{split}.tfrecord"


def read_split(csv_path: Path, split: str) -> pd.DataFrame:
    """Read one split's CSV into columns filename (as written), label, csv_row and path (absolute).

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
        values = frame[column].str.strip()
        blank = frame[(values == "") | values.isin(MISSING_MARKERS)]
        if not blank.empty:
            rows = ", ".join(f"{row} ({value!r})" for row, value in zip(blank["csv_row"].head(MAX_LISTED), blank[column]))
            raise PruneflowError(
                f"{csv_path}: blank or missing {column} on line(s) {rows}; fill or delete those rows"
            )
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
    paths = {"train": config.train_csv, "val": config.val_csv, "test": config.test_csv}
    frames = {split: read_split(path, split) for split, path in paths.items()}
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


def fingerprint(frames: dict[str, pd.DataFrame], digest: Callable[[Path], str] = file_digest) -> dict[str, str]:
    """Content digest per split (frames from read_splits): its rows' labels and image bytes, in
    order; paths left out.

    Args:
        digest: the SHA-256 of a file (e.g. DigestCache.digest, which skips unchanged files).

    A missing image gets the digest 'missing', so the preparation that follows reports it.
    """
    inputs = {}
    for split, frame in frames.items():
        rows = [
            (label, digest(name) if os.path.isfile(name) else "missing")
            for name, label in zip(frame["path"], frame["label"])
        ]
        inputs[split] = digest_of(rows)
    return inputs


def decode_image(path, config: DatasetConfig):
    """Read a JPEG and resize it to the configured shape, as uint8 (exact when no resize is needed)."""
    from tasks.runtime import tf

    image = tf.io.decode_jpeg(tf.io.read_file(path), channels=config.channels)
    resized = tf.image.resize(image, (config.image_height, config.image_width))
    return tf.cast(tf.round(tf.clip_by_value(resized, 0.0, 255.0)), tf.uint8)


SIGNATURES = {b"\xff\xd8\xff": "JPEG", b"\x89PNG": "PNG", b"GIF8": "GIF", b"BM": "BMP", b"RIFF": "RIFF/WebP"}


def sniff_format(path: Path) -> str:
    """The image format a file's first bytes announce; 'empty' or 'not an image' otherwise."""
    with open(path, "rb") as fh:
        head = fh.read(8)
    if not head:
        return "empty"
    return next((kind for magic, kind in SIGNATURES.items() if head.startswith(magic)), "not an image")


def write_records(paths: list[str], label_indices: list[int], config: DatasetConfig, out_path: Path) -> list[str]:
    """Decode every image into a TFRecord file; return 'path: reason' for each one that failed."""
    from tasks.runtime import tf

    problems = []
    with tf.io.TFRecordWriter(str(out_path)) as writer:
        for path, label in zip(paths, label_indices):
            if not Path(path).is_file():
                problems.append(f"{path}: file not found")
                continue
            kind = sniff_format(Path(path))
            if kind != "JPEG":
                # TF's JPEG decoder also accepts PNG and GIF; a file named .jpg must be a JPEG.
                problems.append(f"{path}: not a readable JPEG (the file is {kind})")
                continue
            try:
                image = decode_image(path, config)
            except tf.errors.InvalidArgumentError as error:
                reason = error.message.splitlines()[0] if error.message else "does not decode"
                problems.append(f"{path}: not a readable JPEG ({reason})")
                continue
            features = {
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image.numpy().tobytes()])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
            }
            writer.write(tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString())
    return problems


def write_prepared(config: DatasetConfig, out_dir: Path) -> PreparedDataset:
    """Check the three splits and write the prepared dataset into `out_dir`.

    Raises:
        PruneflowError: on a bad CSV, an unreadable image (all of them are listed, up to a cap)
            or a val/test label unseen in train.
    """
    csv_paths = {"train": config.train_csv, "val": config.val_csv, "test": config.test_csv}
    frames = read_splits(config)
    classes = encode_labels(frames, csv_paths)
    index = {label: i for i, label in enumerate(classes)}
    out_dir.mkdir(parents=True, exist_ok=True)

    problems = []
    for split, frame in frames.items():
        frame["label_index"] = frame["label"].map(index).astype("int32")
        problems += write_records(
            list(frame["path"]), [int(i) for i in frame["label_index"]], config, out_dir / f"{split}.tfrecord"
        )
    if problems:
        shown = "\n  ".join(problems[:MAX_LISTED])
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise PruneflowError(
            f"{len(problems)} image(s) listed in the dataset CSVs cannot be read:\n  {shown}{more}\n"
            "Fix or remove those files, or delete their rows from the CSV."
        )

    manifest = pd.concat([frame.assign(split=split) for split, frame in frames.items()], ignore_index=True)
    manifest["digest"] = [file_digest(Path(path)) for path in manifest["path"]]
    # Filenames as the CSVs give them, relative to their folder: the artifact's content, and so
    # the digest later stages key on, does not depend on where the dataset lives.
    manifest = manifest[["filename", "label", "label_index", "split", "digest"]]
    pq.write_table(pa.Table.from_pandas(manifest, preserve_index=False), out_dir / "manifest.parquet")
    (out_dir / "labels.json").write_text(json.dumps({"classes": classes}, indent=2) + "\n")
    return PreparedDataset(
        folder=out_dir,
        classes=classes,
        counts={split: len(frame) for split, frame in frames.items()},
        image_shape=(config.image_height, config.image_width, config.channels),
        warnings=split_warnings(frames),
    )


def load_split(dataset: PreparedDataset, split: str, config: DatasetConfig):
    """A batched tf.data pipeline of (image as float32 in [0, 1], label index) for one split.

    Only the train split is shuffled (with config.shuffle_seed) and, when config.augment is
    on, randomly flipped; val and test keep their CSV order and pixels, so every evaluation
    sees the same data.
    """
    from tasks.runtime import tf

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
    if split == "train":
        data = data.shuffle(dataset.counts[split], seed=config.shuffle_seed, reshuffle_each_iteration=True)
        if config.augment:
            data = data.map(
                lambda image, label: (tf.image.random_flip_left_right(image, seed=config.shuffle_seed), label),
                num_parallel_calls=tf.data.AUTOTUNE,
            )
    return data.batch(config.batch_size).prefetch(tf.data.AUTOTUNE)


STAGE = "prepare_dataset"


def dataset_key(
    config: DatasetConfig, frames: dict[str, pd.DataFrame] | None = None, digest: Callable[[Path], str] = file_digest
) -> str:
    """The prepared dataset's key: image contents and labels, and the stored image shape.

    Args:
        frames: the splits as read_splits returns them, when the caller has already read them.
        digest: how to get an image's SHA-256 (see fingerprint).

    Batch size, shuffle seed and augmentation only shape the pipelines built later, so
    changing them reuses the prepared dataset.
    """
    params = config.model_dump(mode="json", include={"image_height", "image_width", "channels"})
    frames = read_splits(config) if frames is None else frames
    return stage_key(STAGE, code_version(__name__), fingerprint(frames, digest), params)


@task(cache_policy=ARTIFACT_CACHE, persist_result=True)
def prepare_dataset(store: ArtifactStore, key: str, config: DatasetConfig) -> PreparedDataset:
    """Check the splits and store them decoded, with the manifest and the label mapping."""
    prepared = store.produce(STAGE, key, PreparedDataset, lambda tmp: write_prepared(config, tmp))
    logger = get_run_logger()
    for warning in prepared.warnings:
        logger.warning("Dataset: %s", warning)
    logger.info(
        "Dataset: %s images (%s), %d classes: %s",
        sum(prepared.counts.values()),
        ", ".join(f"{split} {n}" for split, n in prepared.counts.items()),
        len(prepared.classes),
        ", ".join(prepared.classes),
    )
    return prepared
