"""Config loading: valid files map one to one, every bad value names its field."""

from pathlib import Path

import pytest
import yaml

from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.specs.config import (
    ConstantSchedule,
    PolynomialDecaySchedule,
    RunConfig,
    load_config,
    parse_config,
)

DEMO_CONFIG = Path(__file__).parents[3] / "tasks" / "demo.yaml"


def base() -> dict:
    return {
        "dataset": {
            "train_csv": "data/train.csv", "val_csv": "data/val.csv", "test_csv": "data/test.csv",
            "image_height": 28, "image_width": 28, "channels": 1,
        },
        "model": {"baseline": "baseline.h5"},
        "pruning": {"kind": "constant", "target_sparsity": 0.8},
        "training": {"epochs": 2},
        "output_root": "out",
    }


def with_change(section: str, **values) -> dict:
    data = base()
    data[section] = {**data[section], **values}
    return data


def write_yaml(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_demo_config_validates():
    config = load_config(DEMO_CONFIG)
    assert isinstance(config.pruning, PolynomialDecaySchedule)
    assert config.pruning.final_sparsity == 0.8
    assert config.dataset.train_csv == DEMO_CONFIG.parent / "data" / "train.csv"


def test_relative_paths_resolve_against_the_yaml_folder(tmp_path):
    config = load_config(write_yaml(tmp_path, base()))
    assert config.dataset.val_csv == tmp_path.resolve() / "data" / "val.csv"
    assert config.model.baseline == tmp_path.resolve() / "baseline.h5"
    assert config.output_root == tmp_path.resolve() / "out"


def test_absolute_paths_are_kept(tmp_path):
    config = load_config(write_yaml(tmp_path, with_change("model", baseline="/models/m.keras")))
    assert config.model.baseline == Path("/models/m.keras")


def test_defaults_and_round_trip():
    config = parse_config(base())
    assert isinstance(config.pruning, ConstantSchedule)
    assert config.pruning.end_step is None and config.pruning.frequency == 1
    assert config.training.optimizer == "adam" and config.dataset.batch_size == 32
    assert RunConfig.model_validate(config.model_dump(mode="json")) == config


def test_config_is_frozen():
    config = parse_config(base())
    with pytest.raises(Exception):
        config.seed = 3


@pytest.mark.parametrize(
    "section, values, field",
    [
        ("pruning", {"target_sparsity": 1.0}, "pruning.target_sparsity"),
        ("pruning", {"target_sparsity": -0.1}, "pruning.target_sparsity"),
        ("pruning", {"frequency": 0}, "pruning.frequency"),
        ("pruning", {"begin_step": 10, "end_step": 5}, "end_step (5) is before begin_step (10)"),
        ("pruning", {"end_step": -2}, "pruning.end_step"),
        ("pruning", {"kind": "cubic"}, "pruning"),
        ("dataset", {"channels": 2}, "dataset.channels"),
        ("dataset", {"batch_size": 0}, "dataset.batch_size"),
        ("dataset", {"image_height": "tall"}, "dataset.image_height"),
        ("training", {"epochs": 0}, "training.epochs"),
        ("training", {"learning_rate": 0}, "training.learning_rate"),
        ("training", {"optimizer": "lion"}, "training.optimizer"),
        ("model", {"baseline": "model.pt"}, "must be a .h5 or .keras file"),
        ("dataset", {"colour": True}, "dataset.colour: Extra inputs are not permitted"),
    ],
)
def test_invalid_values_name_the_field(section, values, field):
    with pytest.raises(PruneflowError) as error:
        parse_config(with_change(section, **values), source="run.yaml")
    assert field in str(error.value)
    assert str(error.value).startswith("run.yaml: invalid configuration")


def test_constant_end_step_minus_one_means_to_the_end():
    assert parse_config(with_change("pruning", end_step=-1)).pruning.end_step == -1


@pytest.mark.parametrize(
    "values, message",
    [
        ({"initial_sparsity": 0.9, "final_sparsity": 0.5}, "initial_sparsity (0.9) is above final_sparsity (0.5)"),
        ({"final_sparsity": 0.5, "end_step": -1}, "pruning.end_step"),
        ({"final_sparsity": 0.5, "begin_step": 4, "end_step": 4}, "end_step (4) must be after begin_step (4)"),
        ({"final_sparsity": 1.5}, "pruning.final_sparsity"),
    ],
)
def test_invalid_polynomial_decay(values, message):
    data = base()
    data["pruning"] = {"kind": "polynomial_decay", **values}
    with pytest.raises(PruneflowError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_config(data)


def test_missing_and_unknown_sections(tmp_path):
    data = base()
    del data["training"]
    data["extras"] = 1
    with pytest.raises(PruneflowError) as error:
        load_config(write_yaml(tmp_path, data))
    assert "training: Field required" in str(error.value)
    assert "extras: Extra inputs are not permitted" in str(error.value)


def test_yaml_syntax_error_gives_line_and_column(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("dataset:\n  train_csv: [unclosed\nmodel: {}\n")
    with pytest.raises(PruneflowError, match=r"broken.yaml: not valid YAML at line \d+, column \d+"):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(PruneflowError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_config_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(PruneflowError, match="expected a mapping"):
        load_config(path)


def test_every_field_has_a_description_for_the_ui_form():
    schema = RunConfig.model_json_schema()
    sections = {"RunConfig": schema, **schema["$defs"]}
    undocumented = [
        f"{name}.{field}"
        for name, section in sections.items()
        for field, spec in section.get("properties", {}).items()
        if not spec.get("description")
    ]
    assert undocumented == []
    # The schedule is a choice between two sections (anyOf: the UI renders it as a choice).
    choices = schema["properties"]["pruning"]["anyOf"]
    titles = [schema["$defs"][choice["$ref"].rsplit("/", 1)[-1]]["title"] for choice in choices]
    assert titles == ["Constant sparsity", "Polynomial decay"]


def test_export_formats_are_checked_and_named(config_dict):
    from pruneflow.tasks.specs.config import parse_config

    with pytest.raises(PruneflowError, match=r"export.formats.0: Input should be 'float32'.*\(got 'float16'\)"):
        parse_config({**config_dict, "export": {"formats": ["float16"]}})
    with pytest.raises(PruneflowError, match=r"export: .*repeat a format"):
        parse_config({**config_dict, "export": {"formats": ["int8", "int8"]}})
    config = parse_config({**config_dict, "export": {"formats": ["int8_sparse", "float32_sparse", "int8"]}})
    assert config.export_spec.formats == ("int8_sparse", "float32_sparse", "int8")
    assert config.export_spec.dense().formats == ("int8", "float32")  # the baseline's, each once
    assert config.latency_spec.runs == config.export.latency_runs


@pytest.mark.parametrize(
    "section, values, message",
    [
        ("layers", {"m_by_n": [4, 2]}, r"layers: m_by_n \[4, 2\] must be \[m, n\] with 0 < m < n"),
        ("layers", {"m_by_n": [0, 4]}, r"m_by_n \[0, 4\] must be \[m, n\] with 0 < m < n"),
        ("layers", {"m_by_n": [2, 4], "block_size": [1, 4]}, r"m_by_n and block_size are two structures: set one"),
        ("layers", {"m_by_n": [2, 4], "sparsity": {"dense": 0.5}}, r"m_by_n fixes every pruned layer's sparsity"),
        ("layers", {"block_size": [0, 4]}, r"block_size \[0, 4\] must be two positive numbers"),
        ("sweep", {"targets": [0.5, 0.7, 0.5]}, r"sweep: targets \[0.5, 0.7, 0.5\] repeat a sparsity"),
        ("sweep", {"channel_fractions": [0.25, 0.25]}, r"channel_fractions \[0.25, 0.25\] repeat a fraction"),
        ("sensitivity", {"sparsities": [0.5, 0.3]}, r"sensitivity: sparsities \[0.5, 0.3\] must be ascending"),
        ("sensitivity", {"sparsities": [0.3, 0.3, 0.5]}, r"sparsities \[0.3, 0.3, 0.5\] must be ascending, each listed once"),
    ],
)
def test_settings_that_contradict_each_other_are_refused_naming_the_section(section, values, message):
    with pytest.raises(PruneflowError, match=message):
        parse_config({**base(), section: values}, source="run.yaml")


@pytest.mark.parametrize(
    "section, values",
    [
        ("layers", {"m_by_n": [4, 5]}),  # zeroes 0.8, the schedule's target
        ("layers", {"block_size": [1, 4]}),
        ("sweep", {"targets": [0.5, 0.7], "channel_fractions": [0.0, 0.25]}),
        ("sensitivity", {"sparsities": [0.3, 0.5]}),
    ],
)
def test_the_settings_next_to_each_refusal_are_accepted(section, values):
    """The refused settings' nearest valid neighbours load: the checks refuse only what they name."""
    config = parse_config({**base(), section: values})
    assert config.model_dump(mode="json")[section] | values == config.model_dump(mode="json")[section]
