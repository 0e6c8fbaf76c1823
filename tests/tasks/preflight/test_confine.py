"""Folder confinement: the roots read from the worker's environment, and what they admit."""

import os

import pytest

from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.preflight.confine import ROOTS_ENV, Roots


def roots_for(data=None, models=None, outputs=None) -> Roots:
    env = {ROOTS_ENV[kind]: str(path) for kind, path in (("data", data), ("models", models), ("outputs", outputs)) if path}
    return Roots.from_env(env)


def test_roots_are_read_from_the_environment_as_absolute_folders(tmp_path):
    roots = Roots.from_env({ROOTS_ENV["data"]: f"{tmp_path / 'a'}{os.pathsep}{tmp_path / 'b'}", ROOTS_ENV["models"]: ""})
    assert roots.data == (tmp_path / "a", tmp_path / "b") and roots.models is None and roots.outputs is None
    with pytest.raises(PruneflowError, match="PRUNEFLOW_DATA_ROOTS='data': every folder must be an absolute path"):
        Roots.from_env({ROOTS_ENV["data"]: "data"})


def test_a_root_admits_its_subfolders_only_and_slash_admits_everything(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data2").mkdir()
    roots = roots_for(data=tmp_path / "data")
    assert roots.escapes("data", tmp_path / "data" / "a.jpg") is None
    assert roots.escapes("data", tmp_path / "data") is None
    assert roots.escapes("data", tmp_path / "data2" / "a.jpg") == str(tmp_path / "data2" / "a.jpg")
    assert roots_for(data="/").escapes("data", tmp_path / "data2" / "a.jpg") is None


def test_a_symlink_out_of_a_root_is_refused_with_what_it_resolves_to(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    roots = roots_for(data=tmp_path / "data")
    assert roots.escapes("data", tmp_path / "data" / "link.jpg") == (
        f"{tmp_path / 'data' / 'link.jpg'} (which resolves to {tmp_path / 'secret.jpg'})"
    )
    assert roots.escapes("models", tmp_path / "secret.jpg") is None  # no models root: anywhere


def test_a_deployment_run_refuses_a_worker_with_a_root_unset(tmp_path):
    roots_for(data=tmp_path, models=tmp_path, outputs=tmp_path).require_all("a UI run")  # all set: accepted
    with pytest.raises(PruneflowError, match="^a UI run, but PRUNEFLOW_OUTPUT_ROOTS is not set on the worker"):
        roots_for(data=tmp_path, models=tmp_path).require_all("a UI run")
    with pytest.raises(PruneflowError, match="^a UI run, but PRUNEFLOW_MODEL_ROOTS, PRUNEFLOW_OUTPUT_ROOTS are not"):
        roots_for(data=tmp_path).require_all("a UI run")


def test_each_config_path_is_confined_to_its_own_kind_of_root_and_named_by_its_field(config_dict, tmp_path):
    from pruneflow.tasks.preflight.confine import confine_config, roots_env_of
    from pruneflow.tasks.specs.config import parse_config

    config = parse_config(config_dict)
    exact = Roots.from_env(roots_env_of(config))  # the config's own folders: it passes
    confine_config(config, exact)
    assert exact.outputs == (config.output_root,) and exact.models == (config.model.baseline.parent,)
    for kind, field in (("data", "dataset.train_csv"), ("models", "model.baseline"), ("outputs", "output_root")):
        elsewhere = exact.model_copy(update={kind: (tmp_path / "elsewhere",)})
        with pytest.raises(PruneflowError, match=f"^{field}: .* is outside the folders this worker allows for {kind} "
                                                 rf"\({tmp_path / 'elsewhere'}, from {ROOTS_ENV[kind]}\)"):
            confine_config(config, elsewhere)


def test_images_outside_the_data_roots_are_listed_by_csv_line_the_rest_counted(tmp_path):
    import pandas as pd

    from pruneflow.tasks.libs.dataset import MAX_LISTED
    from pruneflow.tasks.preflight.confine import confine_images

    (tmp_path / "data").mkdir()
    inside = [str(tmp_path / "data" / f"{i}.jpg") for i in range(3)]
    outside = [str(tmp_path / f"{i}.jpg") for i in range(MAX_LISTED + 2)]
    frames = {"train": pd.DataFrame({"path": inside + outside, "csv_row": range(2, 2 + len(inside + outside))})}
    roots = roots_for(data=tmp_path / "data")
    confine_images({"train": frames["train"].iloc[:3]}, {"train": tmp_path / "train.csv"}, roots)  # all inside
    with pytest.raises(PruneflowError) as refused:
        confine_images(frames, {"train": tmp_path / "train.csv"}, roots)
    message = str(refused.value)
    assert message.startswith(f"{MAX_LISTED + 2} image(s) listed in the dataset CSVs are outside")
    assert f"{tmp_path / 'train.csv'}, line 5: {outside[0]}" in message  # the first outside: the 4th row, line 5
    assert "... and 2 more" in message and outside[MAX_LISTED - 1] in message and outside[MAX_LISTED] not in message
    confine_images(frames, {"train": tmp_path / "train.csv"}, roots_for())  # no data root: anything
    with pytest.raises(PruneflowError) as refused:  # exactly MAX_LISTED outside: all listed, nothing more counted
        confine_images({"train": frames["train"].iloc[: 3 + MAX_LISTED]}, {"train": tmp_path / "train.csv"}, roots)
    assert outside[MAX_LISTED - 1] in str(refused.value) and "more" not in str(refused.value)


def test_roots_cannot_be_changed_once_read(tmp_path):
    from pydantic import ValidationError

    roots = roots_for(data=tmp_path)
    with pytest.raises(ValidationError, match="frozen"):
        roots.data = None
