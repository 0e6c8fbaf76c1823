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
