"""Every input a user can get wrong, through the `pruneflow` command and a real flow run.

Each case breaks one thing in a valid run (config, CSV, image, label, model, path), runs
`pruneflow run`, and checks: exit status 2, the message on stderr naming what is wrong, no
traceback, and nothing stored: the run stopped before any stage produced an artifact.
"""

import re
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

from pruneflow.flows.cli import main
from pruneflow.tasks.core.errors import MESSAGE_LIMIT
from pruneflow.tasks.preflight.confine import ROOTS_ENV
from tests.helpers.data import IMAGE_SIZE
from tests.helpers.keras3_models import add_unknown_option, someones_layer
from tests.helpers.models import build_tiny_cnn


def save(model, path):
    from pruneflow.tasks.libs.models import save_model

    return str(save_model(model, path))


def rewrite_csv(data, split, edit):
    frame = pd.read_csv(data / f"{split}.csv")
    edit(frame).to_csv(data / f"{split}.csv", index=False)


def image(data, name="test_005.jpg"):
    return data / "img" / name


# Each case: (id, change(run) -> None, expected text of the error). `run` has .config (the dict
# written as YAML), .data (a writable copy of the tiny dataset), .tmp and .env (monkeypatch).
def csv_missing(run):
    run.config["dataset"]["train_csv"] = str(run.data / "nope.csv")


def csv_empty(run):
    (run.data / "train.csv").write_text("")


def csv_without_header(run):
    (run.data / "train.csv").write_text("img/train_000.jpg,top\nimg/train_001.jpg,bottom\n")


def csv_missing_column(run):
    rewrite_csv(run.data, "train", lambda f: f.rename(columns={"label": "class"}))


def csv_blank_cell(run):
    rewrite_csv(run.data, "train", lambda f: f.assign(label=["", *f["label"][1:]]))


def csv_nan_cell(run):
    (run.data / "val.csv").write_text((run.data / "val.csv").read_text().replace(",top\n", ",NaN\n", 1))


def csv_duplicate_row(run):
    rewrite_csv(run.data, "test", lambda f: pd.concat([f, f.iloc[[3]]]))


def csv_leakage(run):
    rewrite_csv(run.data, "test", lambda f: pd.concat([f, pd.DataFrame({"filename": ["img/train_007.jpg"], "label": ["bottom"]})]))


def csv_no_rows(run):
    (run.data / "val.csv").write_text("filename,label\n")


def image_missing(run):
    image(run.data).unlink()


def image_png_named_jpg(run):
    from pruneflow.tasks.core.runtime import tf

    pixels = tf.io.decode_jpeg(tf.io.read_file(str(image(run.data))))
    image(run.data).write_bytes(tf.io.encode_png(pixels).numpy())


def image_text_named_jpg(run):
    image(run.data).write_text("this is not a picture")


def image_truncated(run):
    data = image(run.data).read_bytes()
    image(run.data).write_bytes(data[: len(data) // 2])


def image_zero_bytes(run):
    image(run.data).write_bytes(b"")


def images_many_missing(run):
    for path in sorted((run.data / "img").glob("train_*.jpg"))[:25]:
        path.unlink()


def label_unseen_in_train(run):
    rewrite_csv(run.data, "test", lambda f: f.assign(label=["sideways", *f["label"][1:]]))


def label_single_class(run):
    rewrite_csv(run.data, "train", lambda f: f.assign(label="top"))


def model_missing(run):
    run.config["model"]["baseline"] = str(run.tmp / "gone.h5")


def model_not_keras(run):
    (run.tmp / "notes.h5").write_text("not a model")
    run.config["model"]["baseline"] = str(run.tmp / "notes.h5")


def model_input_mismatch(run):
    run.config["model"]["baseline"] = save(build_tiny_cnn(channels=1), run.tmp / "grey.h5")


def model_output_mismatch(run):
    run.config["model"]["baseline"] = save(build_tiny_cnn(n_classes=3), run.tmp / "three.h5")


def model_lambda(run):
    from pruneflow.tasks.core.runtime import keras

    model = keras.Sequential([
        keras.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, 3)), keras.layers.Lambda(lambda x: x * 2, name="times_two"),
        keras.layers.Flatten(), keras.layers.Dense(2, activation="softmax"),
    ])
    run.config["model"]["baseline"] = save(model, run.tmp / "lambda.h5")


def _keras3(run, name, build):
    from pruneflow.tasks.core.runtime import keras_3

    keras = keras_3()
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    model = keras.Model(inputs, build(keras, inputs))
    model.save(run.tmp / name)
    run.config["model"]["baseline"] = str(run.tmp / name)
    return run.tmp / name


def keras3_lambda(run):
    _keras3(run, "lambda3.keras", lambda keras, x: keras.layers.Dense(2)(
        keras.layers.Flatten()(keras.layers.Lambda(lambda t: t * 2, name="doubling")(x))))


def keras3_custom_layer(run):
    _keras3(run, "custom3.keras", lambda keras, x: keras.layers.Dense(2)(keras.layers.Flatten()(someones_layer("twice")(x))))


def keras3_truncated(run):
    path = _keras3(run, "cut.keras", lambda keras, x: keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    path.write_bytes(path.read_bytes()[:400])


def keras3_unknown_option(run):
    path = _keras3(run, "newer.keras", lambda keras, x: keras.layers.Dense(2, name="head")(keras.layers.Flatten()(x)))
    add_unknown_option(path, "head", "future_option", 3)


def keras3_activation_tf_keras_lacks(run):
    _keras3(run, "tanh3.keras", lambda keras, x: keras.layers.Dense(2)(keras.layers.Flatten()(
        keras.layers.Conv2D(4, 3, activation="hard_tanh", name="clipped_conv")(x))))


def model_subclassed(run, trusted=False):
    from pruneflow.tasks.core.runtime import keras

    @keras.saving.register_keras_serializable(package="tests")
    class Net(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.flat, self.dense = keras.layers.Flatten(), keras.layers.Dense(2, activation="softmax")

        def call(self, inputs):
            return self.dense(self.flat(inputs))

    model = Net()
    model(np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), "float32"))
    run.config["model"]["baseline"] = save(model, run.tmp / "net.keras")
    run.config["model"]["trust_custom_code"] = trusted


def model_subclassed_trusted(run):
    model_subclassed(run, trusted=True)  # its class is importable here, so it loads


def layers_pattern_matches_nothing(run):
    run.config["layers"] = {"exclude": ["dense_9"], "sparsity": {"Conv*": 0.3, "head": 0.9}}


def layers_nothing_left_to_prune(run):
    run.config["layers"] = {"include": ["Dense"], "keep_classifier": True, "exclude": ["dense"]}


def layers_structure_misfit(run):
    run.config["layers"] = {"m_by_n": [2, 4]}


def layers_structure_against_the_schedule(run):
    run.config["layers"] = {"m_by_n": [2, 4], "keep_first_conv": True}
    run.config["pruning"]["target_sparsity"] = 0.8


def config_out_of_range(run):
    run.config["pruning"]["target_sparsity"] = 1.2


def config_unknown_key(run):
    run.config["training"]["epoch"] = 3


def config_wrong_type(run):
    run.config["training"]["epochs"] = "three"


def config_yaml_syntax(run):
    run.yaml_text = "dataset:\n  train_csv: a.csv\n  val_csv: [b.csv\nmodel: {}\n"


def schedule_never_prunes(run):
    run.config["pruning"] = {"kind": "constant", "target_sparsity": 0.8, "frequency": 100}


def path_dotdot_out_of_root(run):
    run.env.setenv(ROOTS_ENV["data"], str(run.data))
    run.config["dataset"]["train_csv"] = str(run.data / ".." / "elsewhere" / "train.csv")


def path_absolute_out_of_root(run):
    run.env.setenv(ROOTS_ENV["models"], str(run.tmp / "models"))


def path_symlink_out_of_root(run):
    (run.tmp / "models").mkdir()
    (run.tmp / "models" / "baseline.h5").symlink_to(run.config["model"]["baseline"])
    run.config["model"]["baseline"] = str(run.tmp / "models" / "baseline.h5")
    run.env.setenv(ROOTS_ENV["models"], str(run.tmp / "models"))


CASES = [
    (csv_missing, r"nope.csv: train CSV not found; check dataset.train_csv"),
    (csv_empty, r"train.csv: the file is empty; it needs a header line 'filename,label'"),
    (csv_without_header, r"train.csv: missing column\(s\) filename, label"),
    (csv_missing_column, r"train.csv: missing column\(s\) label; the header must name 'filename,label' \(found filename, class\)"),
    (csv_blank_cell, r"train.csv: blank or missing label on line\(s\) 2 \(''\)"),
    (csv_nan_cell, r"val.csv: blank or missing label on line\(s\) 3 \('NaN'\)"),
    (csv_duplicate_row, r"test.csv: 1 image\(s\) listed more than once: .*test_003.jpg on lines 5 and 14"),
    (csv_leakage, r"1 image\(s\) are listed in two splits.*train_007.jpg \(in train and test\)"),
    (csv_no_rows, r"val.csv: the val split has no rows"),
    (image_missing, r"1 image\(s\) listed in the dataset CSVs cannot be read:\n  .*test_005.jpg: file not found"),
    (image_png_named_jpg, r"test_005.jpg: not a readable JPEG \(the file is PNG\)"),
    (image_text_named_jpg, r"test_005.jpg: not a readable JPEG \(the file is not an image\)"),
    (image_truncated, r"test_005.jpg: not a readable JPEG \(.*\)"),
    (image_zero_bytes, r"test_005.jpg: not a readable JPEG \(the file is empty\)"),
    (images_many_missing, r"25 image\(s\) listed in the dataset CSVs cannot be read:(\n  .*: file not found){5}\n  ... and 20 more"),
    (label_unseen_in_train, r"test.csv: label\(s\) sideways never appear in the train split"),
    (label_single_class, r"train.csv: the train split has a single class \(top\)"),
    (model_missing, r"gone.h5: model file not found; check model.baseline"),
    (model_not_keras, r"notes.h5: no Keras model architecture found in it"),
    (model_input_mismatch, r"grey.h5: the model expects input \(16, 16, 1\), but the config's .* give \(16, 16, 3\)"),
    (model_output_mismatch, r"three.h5: the model has 3 outputs, but the train split has 2 classes"),
    (model_lambda, r"lambda.h5: loading this model would run code .*times_two \(Lambda\).*trust_custom_code: true"),
    (keras3_lambda, r"lambda3.keras: layers whose loading would run code .*: doubling \(Lambda\)"),
    (keras3_custom_layer, r"custom3.keras: layers whose loading would run code .*: twice \(Twice\)"),
    (keras3_truncated, r"cut.keras: no Keras model architecture found in it \(BadZipFile: "),
    (keras3_unknown_option, r"newer.keras: Keras 3 cannot read this model file \(options this Keras \(3\.[0-9.]+\) does not "
                            r"know: head \(Dense\): future_option\)"),
    (keras3_activation_tf_keras_lacks, r"tanh3.keras: layer clipped_conv \(Conv2D\) cannot be rebuilt in tf_keras: .*'hard_tanh'"),
    (model_subclassed, r"net.keras: loading this model would run code .*: net \(Net\)\. If you trust the file"),
    (model_subclassed_trusted, r"net.keras: a subclassed model \(Net\) cannot be pruned: TFMOT prunes Sequential and functional"),
    (layers_pattern_matches_nothing, r"baseline.h5: these patterns match nothing: layers.exclude 'dense_9' \(no layer\); "
                                     r"layers.sparsity 'head' \(no pruned layer\)\. .*The layers TFMOT can prune: conv2d, dense, dense_1\."),
    (layers_nothing_left_to_prune, r"baseline.h5: no layer is left to prune: 0 pruned, 3 left dense by choice"),
    (layers_structure_misfit, r"layers.m_by_n \[2, 4\] applies along the input channels .* conv2d \(Conv2D, kernel \[3, 3, 3, 8\]\)"),
    (layers_structure_against_the_schedule, r"pruning.target_sparsity is 0.8, but layers.m_by_n \[2, 4\] zeroes exactly 0.5 of the "
                                            r"weights: set pruning.target_sparsity to 0.5"),
    (config_out_of_range, r"invalid configuration:\n  pruning.target_sparsity: Input should be less than 1 \(got 1.2\)"),
    (config_unknown_key, r"invalid configuration:\n  training.epoch: Extra inputs are not permitted"),
    (config_wrong_type, r"invalid configuration:\n  training.epochs: Input should be a valid integer"),
    (config_yaml_syntax, r"run.yaml: not valid YAML at line 4, column 6: expected ',' or ']'"),
    (schedule_never_prunes, r"no pruning step falls inside the run"),
    (path_dotdot_out_of_root, r"dataset.train_csv: .*/elsewhere/train.csv is outside the folders this worker allows for data"),
    (path_absolute_out_of_root, r"model.baseline: .*baseline.h5 is outside the folders this worker allows for models \(.*/models, from PRUNEFLOW_MODEL_ROOTS\)"),
    (path_symlink_out_of_root, r"model.baseline: .*models/baseline.h5 \(which resolves to .*\) is outside the folders"),
]


class Run:
    def __init__(self, config, data, tmp, env):
        self.config, self.data, self.tmp, self.env, self.yaml_text = config, data, tmp, env, None


@pytest.mark.parametrize("change, expected", CASES, ids=[change.__name__ for change, _ in CASES])
def test_a_user_error_exits_2_with_a_message_and_stores_nothing(
    prefect_server, config_dict, tiny_data, tmp_path, monkeypatch, capsys, change, expected
):
    from tests.helpers.data import make_config_dict

    for name in ROOTS_ENV.values():
        monkeypatch.delenv(name, raising=False)
    data = shutil.copytree(tiny_data, tmp_path / "data")
    config = make_config_dict(data, config_dict["model"]["baseline"], tmp_path / "outputs")
    run = Run(config, data, tmp_path, monkeypatch)
    change(run)
    path = tmp_path / "run.yaml"
    path.write_text(run.yaml_text or yaml.safe_dump(run.config))

    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pruneflow: error: "), err
    assert "Traceback" not in err
    assert re.search(expected, err), f"expected /{expected}/ in:\n{err}"
    assert len(err.strip()) <= len("pruneflow: error: ") + MESSAGE_LIMIT, err  # no serialized config, no long causes
    artifacts = tmp_path / "outputs" / "artifacts"
    # The stages' folders; not what check_inputs keeps (.checked/, .file-digests.sqlite).
    stored = [key for key in artifacts.glob("[!.]*/*") if not key.name.startswith(".")] if artifacts.exists() else []
    assert stored == []  # stopped before any stage stored an artifact
