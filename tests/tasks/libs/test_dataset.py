"""Dataset preparation: checked inputs, one label mapping from train, a manifest, honest splits."""

import json

import numpy as np
import pandas as pd
import pytest

from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.core.files import file_digest
from pruneflow.tasks.libs.artifacts import Calibration
from pruneflow.tasks.libs.dataset import REPRESENTATIVE_SEED, balanced_draw, calibration_draw, list_dataset, load_split
from pruneflow.tasks.specs.config import DatasetConfig
from pruneflow.tasks.stages.prepare_dataset import prepare_dataset, write_prepared
from tests.helpers.data import IMAGE_SIZE, SPLIT_SIZES


def prepare(config: DatasetConfig, out):
    """What check_inputs and the prepare_dataset stage do, unconfined and without Prefect."""
    listing = list_dataset(config)
    out.mkdir(parents=True)  # the store gives each build an empty folder
    return write_prepared(out, listing, config.shape)


def split_of(prepared, split: str, config: DatasetConfig):
    """A split's pipeline as training reads it: only train is shuffled and augmented."""
    if split == "train":
        return load_split(prepared, split, config.batch_size, shuffle_seed=config.shuffle_seed, augment=config.augment)
    return load_split(prepared, split, config.batch_size)


def dataset_config(data, **changes) -> DatasetConfig:
    values = {
        "train_csv": data / "train.csv", "val_csv": data / "val.csv", "test_csv": data / "test.csv",
        "image_height": IMAGE_SIZE, "image_width": IMAGE_SIZE, "channels": 3, "batch_size": 8,
    }
    return DatasetConfig(**{**values, **changes})


def copy_data(tiny_data, tmp_path):
    """A writable copy of the tiny dataset, to break on purpose."""
    import shutil

    return shutil.copytree(tiny_data, tmp_path / "data")


def keep_only(data, split: str, label: str) -> None:
    """Rewrite a split's CSV with the rows of one label only."""
    frame = pd.read_csv(data / f"{split}.csv")
    frame[frame["label"] == label].to_csv(data / f"{split}.csv", index=False)


def test_manifest_lists_every_image_with_label_index_split_and_digest(tiny_data, tmp_path):
    prepared = prepare(dataset_config(tiny_data), tmp_path / "out")
    manifest = pd.read_parquet(prepared.manifest)
    assert list(manifest.columns) == ["filename", "label", "label_index", "split", "digest"]
    for split in SPLIT_SIZES:
        assert prepared.records(split).stat().st_size > 0
    assert prepared.counts == SPLIT_SIZES
    assert len(manifest) == sum(SPLIT_SIZES.values())
    first = manifest.iloc[0]
    assert first["filename"] == "img/train_000.jpg"  # as the CSV gives it
    assert first["digest"] == file_digest(tiny_data / first["filename"])
    assert json.loads(prepared.labels.read_text()) == {"classes": ["bottom", "top"]}


def test_labels_are_encoded_from_train_and_applied_to_every_split(tiny_data, tmp_path):
    data = copy_data(tiny_data, tmp_path)
    # A test split holding only one class: encoding it on its own would give that class index 0.
    keep_only(data, "test", "top")
    prepared = prepare(dataset_config(data), tmp_path / "out")
    manifest = pd.read_parquet(prepared.manifest)
    assert set(manifest[manifest["split"] == "test"]["label_index"]) == {1}
    assert (manifest["label_index"] == manifest["label"].map({"bottom": 0, "top": 1})).all()


def test_val_or_test_label_unseen_in_train_is_refused(tiny_data, tmp_path):
    data = copy_data(tiny_data, tmp_path)
    val = pd.read_csv(data / "val.csv")
    val.loc[3, "label"] = "sideways"
    val.to_csv(data / "val.csv", index=False)
    with pytest.raises(PruneflowError, match=r"val.csv: label\(s\) sideways never appear in the train split"):
        prepare(dataset_config(data), tmp_path / "out")


def test_every_unreadable_image_is_listed(tiny_data, tmp_path):
    data = copy_data(tiny_data, tmp_path)
    (data / "img" / "train_001.jpg").unlink()
    (data / "img" / "val_002.jpg").write_text("not an image")
    with pytest.raises(PruneflowError) as error:
        prepare(dataset_config(data), tmp_path / "out")
    message = str(error.value)
    assert message.startswith("2 image(s)")
    assert "train_001.jpg: file not found" in message
    assert "val_002.jpg: not a readable JPEG" in message
    assert not (tmp_path / "out" / "manifest.parquet").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "the file is empty"),
        ("path,label\nimg/a.jpg,top\n", "missing column(s) filename"),
        ("filename,label\n", "the train split has no rows"),
        ("filename,label\nimg/train_000.jpg,\n", "blank or missing label on line(s) 2 ('')"),
        ("filename,label\nimg/train_000.jpg,top\nimg/train_001.jpg,NaN\n", "blank or missing label on line(s) 3 ('NaN')"),
        ("img/train_000.jpg,top\nimg/train_001.jpg,bottom\n", "missing column(s) filename, label"),
    ],
)
def test_bad_csv_is_refused_naming_the_file(tiny_data, tmp_path, content, message):
    data = copy_data(tiny_data, tmp_path)
    (data / "train.csv").write_text(content)
    with pytest.raises(PruneflowError) as error:
        prepare(dataset_config(data), tmp_path / "out")
    assert str(data / "train.csv") in str(error.value)
    assert message in str(error.value)


def test_missing_csv_names_the_config_field(tiny_data, tmp_path):
    with pytest.raises(PruneflowError, match="test CSV not found; check dataset.test_csv"):
        prepare(dataset_config(tiny_data, test_csv=tmp_path / "none.csv"), tmp_path / "out")


def labels_of(data) -> list[int]:
    return [int(label) for _, labels in data for label in labels.numpy()]


def images_of(data) -> np.ndarray:
    return np.concatenate([images.numpy() for images, _ in data])


def test_test_split_keeps_csv_order_and_pixels(tiny_data, tmp_path):
    config = dataset_config(tiny_data, augment=True)
    prepared = prepare(config, tmp_path / "out")
    manifest = pd.read_parquet(prepared.manifest)
    expected = list(manifest[manifest["split"] == "test"]["label_index"])
    test = split_of(prepared, "test", config)
    assert labels_of(test) == expected
    first, second = images_of(test), images_of(test)
    np.testing.assert_array_equal(first, second)  # no augmentation, no reshuffle
    assert first.shape == (SPLIT_SIZES["test"], IMAGE_SIZE, IMAGE_SIZE, 3)
    assert 0.0 <= first.min() and first.max() <= 1.0
    for wrong in ({"shuffle_seed": 1}, {"augment": True}):
        with pytest.raises(ValueError, match="the test split is never shuffled or augmented"):
            load_split(prepared, "test", 8, **wrong)


def test_train_split_is_shuffled_with_the_seed(tiny_data, tmp_path):
    from pruneflow.tasks.core.runtime import tf

    config = dataset_config(tiny_data)
    prepared = prepare(config, tmp_path / "out")
    manifest = pd.read_parquet(prepared.manifest)
    csv_order = list(manifest[manifest["split"] == "train"]["label_index"])
    tf.random.set_seed(0)
    once = labels_of(split_of(prepared, "train", config))
    tf.random.set_seed(0)
    again = labels_of(split_of(prepared, "train", config))
    assert once == again
    assert once != csv_order and sorted(once) == sorted(csv_order)


def test_augmentation_flips_train_images_only_when_on(tiny_data, tmp_path):
    plain = dataset_config(tiny_data, augment=False)
    flipped = dataset_config(tiny_data, augment=True)
    prepared = prepare(plain, tmp_path / "out")
    from pruneflow.tasks.core.runtime import tf

    tf.random.set_seed(0)
    without = images_of(split_of(prepared, "train", plain))
    tf.random.set_seed(0)
    with_flips = images_of(split_of(prepared, "train", flipped))
    # Same shuffle; some images are mirror images of their unaugmented selves.
    mirrored = [not np.array_equal(a, b) and np.allclose(a[:, ::-1], b) for a, b in zip(without, with_flips)]
    assert any(mirrored)
    assert all(np.array_equal(a, b) or m for a, b, m in zip(without, with_flips, mirrored))


def test_stored_images_equal_a_direct_decode(tiny_data, tmp_path):
    from pruneflow.tasks.core.runtime import tf

    config = dataset_config(tiny_data)
    prepared = prepare(config, tmp_path / "out")
    stored = images_of(split_of(prepared, "test", config))
    first = pd.read_csv(tiny_data / "test.csv")["filename"][0]
    direct = tf.image.convert_image_dtype(tf.io.decode_jpeg(tf.io.read_file(str(tiny_data / first)), channels=3), tf.float32)
    np.testing.assert_array_equal(stored[0], direct.numpy())  # same size: no resize, exact pixels


def test_greyscale_among_rgb_images_is_decoded_to_the_configured_channels(tiny_data, tmp_path):
    from pruneflow.tasks.core.runtime import tf

    data = copy_data(tiny_data, tmp_path)
    first = pd.read_csv(data / "test.csv")["filename"][0]
    grey = tf.io.decode_jpeg(tf.io.read_file(str(data / first)), channels=1)
    tf.io.write_file(str(data / first), tf.io.encode_jpeg(grey, quality=100))
    config = dataset_config(data)
    prepared = prepare(config, tmp_path / "out")
    images = images_of(split_of(prepared, "test", config))
    assert images.shape == (SPLIT_SIZES["test"], IMAGE_SIZE, IMAGE_SIZE, 3)
    np.testing.assert_array_equal(images[0][..., 0], images[0][..., 1])  # grey, repeated on R, G and B
    assert not np.array_equal(images[1][..., 0], images[1][..., 1])  # the others stay in colour


def test_images_are_resized_to_the_configured_shape(tiny_data, tmp_path):
    config = dataset_config(tiny_data, image_height=8, image_width=12, channels=1)
    prepared = prepare(config, tmp_path / "out")
    assert images_of(split_of(prepared, "val", config)).shape == (SPLIT_SIZES["val"], 8, 12, 1)


def test_key_follows_image_content_not_paths(tiny_data, tmp_path):
    import shutil

    def key(config):
        return prepare_dataset.key(listing=list_dataset(config), shape=config.shape)

    config = dataset_config(tiny_data)
    moved = shutil.copytree(tiny_data, tmp_path / "elsewhere")
    assert key(dataset_config(moved)) == key(config)  # same bytes, other folder
    assert key(dataset_config(moved, image_height=8)) != key(config)
    assert set(prepare_dataset.inputs) == {"listing", "shape"}  # batching and augmenting come later
    here = prepare(config, tmp_path / "here")
    there = prepare(dataset_config(moved), tmp_path / "there")
    for name in ("manifest.parquet", "labels.json", "train.tfrecord"):  # the stored content, too
        assert file_digest(here.folder / name) == file_digest(there.folder / name), name
    before = list_dataset(dataset_config(moved))
    image = moved / "img" / "val_003.jpg"
    image.write_bytes(image.read_bytes() + b"\0")  # one edited image
    after = list_dataset(dataset_config(moved))
    changed = {split: [i for i, (a, b) in enumerate(zip(before.splits[split].digests, after.splits[split].digests)) if a != b]
               for split in SPLIT_SIZES}
    assert changed == {"train": [], "val": [3], "test": []}
    assert key(dataset_config(moved)) != key(config)


@pytest.mark.parametrize("edit", ["label", "order", "split", "rename"])
def test_the_listing_digest_follows_every_row_of_every_split(tiny_data, tmp_path, edit):
    data = copy_data(tiny_data, tmp_path)
    before = list_dataset(dataset_config(data)).digest
    train, test = pd.read_csv(data / "train.csv"), pd.read_csv(data / "test.csv")
    if edit == "label":
        train.loc[0, "label"] = "top" if train.loc[0, "label"] == "bottom" else "bottom"
    elif edit == "order":
        train = train.iloc[::-1]
    elif edit == "split":
        test = pd.concat([test, train.iloc[[0]]])
        train = train.iloc[1:]
    else:
        (data / train.loc[0, "filename"]).rename(data / "img" / "renamed.jpg")
        train.loc[0, "filename"] = "img/renamed.jpg"
    train.to_csv(data / "train.csv", index=False)
    test.to_csv(data / "test.csv", index=False)
    assert list_dataset(dataset_config(data)).digest != before


def test_an_image_listed_twice_in_a_split_is_refused(tiny_data, tmp_path):
    data = copy_data(tiny_data, tmp_path)
    with open(data / "val.csv", "a") as csv:
        csv.write("img/val_001.jpg,top\n")
    with pytest.raises(PruneflowError, match=r"val.csv: 1 image\(s\) listed more than once: .*val_001.jpg on lines 3 and 14"):
        prepare(dataset_config(data), tmp_path / "out")


def test_an_image_in_two_splits_is_refused_as_leakage(tiny_data, tmp_path):
    data = copy_data(tiny_data, tmp_path)
    with open(data / "test.csv", "a") as csv:
        csv.write("img/train_004.jpg,bottom\n")
    with pytest.raises(PruneflowError, match=r"listed in two splits.*train_004.jpg \(in train and test\)"):
        prepare(dataset_config(data), tmp_path / "out")


def test_a_single_class_in_train_is_refused(tiny_data, tmp_path):
    data = copy_data(tiny_data, tmp_path)
    for split in ("train", "val", "test"):
        keep_only(data, split, "top")
    with pytest.raises(PruneflowError, match=r"train.csv: the train split has a single class \(top\)"):
        prepare(dataset_config(data), tmp_path / "out")


def test_a_class_in_val_but_not_in_test_is_only_a_warning(tiny_data, tmp_path):
    data = copy_data(tiny_data, tmp_path)
    keep_only(data, "test", "top")
    prepared = prepare(dataset_config(data), tmp_path / "out")
    assert prepared.warnings == ["class(es) bottom appear in val but never in test: their test accuracy is unmeasured"]
    assert prepared.counts["test"] == SPLIT_SIZES["test"] // 2


@pytest.mark.parametrize("damage", ["empty", "truncated", "png"])
def test_zero_byte_truncated_and_png_images_are_refused(tiny_data, tmp_path, damage):
    from pruneflow.tasks.core.runtime import tf

    data = copy_data(tiny_data, tmp_path)
    image = data / "img" / "test_005.jpg"
    if damage == "empty":
        image.write_bytes(b"")
    elif damage == "truncated":
        image.write_bytes(image.read_bytes()[: len(image.read_bytes()) // 2])
    else:
        pixels = tf.io.decode_jpeg(tf.io.read_file(str(image)))
        image.write_bytes(tf.io.encode_png(pixels).numpy())
    with pytest.raises(PruneflowError, match=r"1 image\(s\) .* cannot be read:\n  .*test_005.jpg: not a readable JPEG") as error:
        prepare(dataset_config(data), tmp_path / "out")
    reason = {"empty": "the file is empty", "truncated": "jpeg::Uncompress failed", "png": "the file is PNG"}[damage]
    assert reason in str(error.value)


def test_the_calibration_draw_is_even_across_the_classes_and_the_same_every_run():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 4)  # class 2 scarce
    drawn = balanced_draw(labels, 30, seed=0)
    assert len(drawn) == 30 and len(set(drawn.tolist())) == 30 and list(drawn) == sorted(drawn)
    assert np.bincount(labels[drawn]).tolist() == [13, 13, 4]  # class 2 runs out, its turns go to the others
    assert np.array_equal(drawn, balanced_draw(labels, 30, seed=0))
    assert not np.array_equal(drawn, balanced_draw(labels, 30, seed=1))
    assert np.bincount(labels[balanced_draw(labels, 9, seed=0)]).tolist() == [3, 3, 3]
    assert np.array_equal(balanced_draw(labels, 1000, seed=0), np.arange(len(labels)))  # more than there are: all
    scarce = Calibration(seed=0, per_class={"a": 13, "b": 13, "c": 4}, available={"a": 50, "b": 30, "c": 4})
    assert scarce.warning().endswith("add training images of 'c'") and "('c' 4)" in scarce.warning()


def test_the_calibration_images_are_the_drawn_training_images(tiny_data, tmp_path):
    config = dataset_config(tiny_data)
    prepared = prepare(config, tmp_path / "out")
    images, drawn = calibration_draw(prepared, 7)
    assert drawn.images == 7 and sorted(drawn.per_class.values()) == [3, 4]  # 40 images, two classes
    assert drawn.available == {"bottom": 20, "top": 20}
    manifest = pd.read_parquet(prepared.manifest)
    labels = manifest[manifest["split"] == "train"]["label_index"].to_numpy()
    train = images_of(load_split(prepared, "train", 8))
    np.testing.assert_array_equal(images, train[balanced_draw(labels, 7, REPRESENTATIVE_SEED)])
    assert "fewer than 10 images of 2 class(es)" in drawn.warning()
    assert "raise export.representative_images to at least 20" in drawn.warning()
    enough = calibration_draw(prepared, 20)[1]
    assert enough.warning() == "" and enough.describe().startswith("int8 calibrated on 20 training images, 10 per class of 2")
