"""Inputs checked before any stage: paths confined to the worker's roots, CSVs, model and output folder."""

import os

import pytest

from pruneflow.flows.stages import STAGES
from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.preflight.check_inputs import check_inputs, check_run_inputs, checked_before
from pruneflow.tasks.preflight.confine import ROOTS_ENV, Roots
from pruneflow.tasks.specs.config import parse_config
from tests.tasks.preflight.test_confine import roots_for


@pytest.fixture
def allowed(config_dict, tiny_data, tiny_baseline, tmp_path):
    """Roots that hold exactly the tiny dataset, the baseline's folder and the run's outputs."""
    return roots_for(data=tiny_data, models=tiny_baseline.parent, outputs=tmp_path)


def test_inputs_inside_the_roots_pass_and_what_was_read_is_passed_on(config_dict, allowed, tiny_baseline):
    from pruneflow.tasks.core.files import file_digest

    checked = check_run_inputs(parse_config(config_dict), allowed, STAGES)
    assert checked.listing.counts == {"train": 40, "val": 12, "test": 12}
    assert checked.listing.classes == ["bottom", "top"] and len(checked.listing.digest) == 64
    assert checked.baseline.path == tiny_baseline and checked.baseline.digest == file_digest(tiny_baseline)
    assert checked.schedule.end_step == 10  # resolved: ceil(40 / 8) x 2 epochs


@pytest.mark.parametrize("field", ["dataset.train_csv", "model.baseline", "output_root"])
def test_a_dotdot_path_that_leaves_its_root_is_refused(config_dict, allowed, tmp_path, field):
    section, _, name = field.rpartition(".")
    target = config_dict[section] if section else config_dict
    original = os.fspath(target[name])
    escaped = os.path.join(os.path.dirname(original), "..", "..", "..", "etc", os.path.basename(original))
    target[name] = escaped
    with pytest.raises(PruneflowError, match=rf"^{field}: .* is outside the folders this worker allows for"):
        check_run_inputs(parse_config(config_dict), allowed, STAGES)


def test_an_absolute_path_outside_the_roots_is_refused_naming_field_and_roots(config_dict, tiny_data, tmp_path):
    roots = roots_for(data=tmp_path / "elsewhere")
    with pytest.raises(PruneflowError) as caught:
        check_run_inputs(parse_config(config_dict), roots, STAGES)
    message = str(caught.value)
    assert message.startswith(f"dataset.train_csv: {tiny_data / 'train.csv'} is outside the folders")
    assert f"({tmp_path / 'elsewhere'}, from PRUNEFLOW_DATA_ROOTS)" in message


def test_a_symlink_inside_a_root_that_points_out_is_refused(config_dict, tiny_baseline, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "baseline.h5").symlink_to(tiny_baseline)
    config_dict["model"]["baseline"] = str(models / "baseline.h5")
    with pytest.raises(PruneflowError, match=rf"model.baseline: .*baseline.h5 \(which resolves to {tiny_baseline}\) is outside"):
        check_run_inputs(parse_config(config_dict), roots_for(models=models), STAGES)


def test_images_a_csv_lists_outside_the_data_roots_are_all_listed(config_dict, tiny_data, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = (tiny_data / "train.csv").read_text().splitlines()
    rows[1] = f"../../../../../../etc/hostname.jpg,{rows[1].split(',')[1]}"
    (data / "train.csv").write_text("\n".join(rows) + "\n")
    (data / "img").symlink_to(tiny_data / "img")  # every other row leaves through this link
    for split in ("val", "test"):
        (data / f"{split}.csv").write_text((tiny_data / f"{split}.csv").read_text())
    config_dict["dataset"] |= {split: str(data / f"{split[:-4]}.csv") for split in ("train_csv", "val_csv", "test_csv")}
    with pytest.raises(PruneflowError) as caught:
        check_run_inputs(parse_config(config_dict), roots_for(data=data), STAGES)
    message = str(caught.value)
    assert message.startswith("64 image(s) listed in the dataset CSVs are outside the folders this worker allows for data")
    assert f"{data / 'train.csv'}, line 2: /etc/hostname.jpg" in message
    assert f"(which resolves to {tiny_data / 'img'}" in message and "... and 59 more" in message


def test_a_run_from_a_deployment_needs_every_root_set(config_dict, monkeypatch):
    for name in ROOTS_ENV.values():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(ROOTS_ENV["data"], "/srv/data")
    with pytest.raises(PruneflowError, match="PRUNEFLOW_MODEL_ROOTS, PRUNEFLOW_OUTPUT_ROOTS are not set on the worker"):
        check_inputs.fn(parse_config(config_dict), from_deployment=True, stages=STAGES)


def test_trusting_custom_code_from_a_deployment_needs_the_workers_consent(config_dict, tmp_path, monkeypatch):
    from pruneflow.tasks.preflight.check_inputs import ALLOW_CODE_ENV

    for name in ROOTS_ENV.values():
        monkeypatch.setenv(name, str(tmp_path.parent.parent))
    monkeypatch.delenv(ALLOW_CODE_ENV, raising=False)
    config_dict["model"]["trust_custom_code"] = True
    config = parse_config(config_dict)
    with pytest.raises(PruneflowError, match=r"^model.trust_custom_code: true is refused: .*PRUNEFLOW_ALLOW_CUSTOM_CODE=1"):
        check_inputs.fn(config, from_deployment=True, stages=STAGES)
    assert check_inputs.fn(config, from_deployment=False, stages=STAGES).baseline.trust_code  # by hand: the user's own choice
    monkeypatch.setenv(ALLOW_CODE_ENV, "1")
    assert check_inputs.fn(config, from_deployment=True, stages=STAGES).baseline.trust_code


def test_a_file_that_is_not_a_model_is_refused_before_any_stage(config_dict, tmp_path):
    (tmp_path / "notes.h5").write_text("not a model")
    config_dict["model"]["baseline"] = str(tmp_path / "notes.h5")
    with pytest.raises(PruneflowError, match=r"notes.h5: no Keras model architecture found in it"):
        check_run_inputs(parse_config(config_dict), Roots(), STAGES)


def test_a_read_only_output_folder_is_refused_before_any_stage(config_dict, tmp_path):
    from tests.helpers.disks import read_only

    config_dict["output_root"] = str(tmp_path / "outputs")
    (tmp_path / "outputs").mkdir()
    with read_only(tmp_path / "outputs"):
        with pytest.raises(PruneflowError, match=r"cannot write into output_root: .*outputs is not writable"):
            check_run_inputs(parse_config(config_dict), Roots(), STAGES)
    assert list((tmp_path / "outputs").iterdir()) == []


def test_inputs_checked_before_are_not_checked_again_and_any_change_checks_them_again(
    config_dict, tiny_baseline, tmp_path, monkeypatch
):
    import shutil

    from pruneflow.tasks.core.layout import OutputLayout
    from pruneflow.tasks.libs import readings

    config = parse_config(config_dict)
    assert not checked_before(config, STAGES)
    first = check_run_inputs(config, Roots(), STAGES)
    [record] = OutputLayout(root=config.output_root).checked.iterdir()
    assert checked_before(config, STAGES)

    def no_loading(*args, **kwargs):
        raise AssertionError("the baseline was loaded again")

    # The same inputs: what the checks concluded is read back, the baseline is not loaded.
    monkeypatch.setattr(readings, "load_model", no_loading)
    again = check_run_inputs(config, Roots(), STAGES)
    assert again == first and list(record.parent.iterdir()) == [record]
    # Another baseline content, or another config: checked again (here, loading is refused).
    nudged = shutil.copy(tiny_baseline, tmp_path / "copy.h5")
    with open(nudged, "ab") as file:
        file.write(b"\0")  # other bytes; still a model HDF5 reads
    for changed in ({**config_dict, "model": {"baseline": str(nudged)}},
                    {**config_dict, "layers": {"keep_first_conv": True}}):
        with pytest.raises(AssertionError, match="loaded again"):
            check_run_inputs(parse_config(changed), Roots(), STAGES)
    # A record that cannot be read is no record.
    record.write_text("{")
    with pytest.raises(AssertionError, match="loaded again"):
        check_run_inputs(config, Roots(), STAGES)
