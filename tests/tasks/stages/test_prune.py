"""Prune-training and stripping on tiny real data."""

import json

import numpy as np
import pytest

from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.core.runtime import PruneLowMagnitude
from pruneflow.tasks.libs.dataset import list_dataset, load_split
from pruneflow.tasks.libs.models import ModelFile, load_model
from pruneflow.tasks.libs.pruning import pruning_step, wrap_for_pruning
from pruneflow.tasks.libs.schedule import resolve_schedule
from pruneflow.tasks.libs.selection import plan_for
from pruneflow.tasks.specs.config import parse_config
from pruneflow.tasks.stages.prepare_dataset import write_prepared
from pruneflow.tasks.stages.prune_train import train_pruned
from tests.helpers.models import assert_kernels_sparse, assert_same_predictions


def test_every_model_shape_and_format_is_prune_trained_to_the_target(pruned_variant):
    trained, config = pruned_variant.trained, pruned_variant.config
    wrapped = load_model(trained.wrapped_model, pruning_wrappers=True)
    # The Conv2D and the two Dense layers are wrapped (the nested backbone's too), and nothing else.
    prunable = [wrapper.layer for wrapper in wrapped.submodules if isinstance(wrapper, PruneLowMagnitude)]
    assert sorted(type(layer).__name__ for layer in prunable) == ["Conv2D", "Dense", "Dense"]
    assert_kernels_sparse(prunable, 0.5)
    history = json.loads(trained.history.read_text())
    assert len(history["loss"]) == len(history["val_accuracy"]) == config.training.epochs
    assert trained.steps == 5 * 2  # ceil(40 / 8) steps x 2 epochs
    assert pruning_step(wrapped) == trained.steps  # no partial extra step: the schedule's arithmetic holds
    assert list((trained.tensorboard_logs / "metrics").glob("events.out.tfevents.*")), "no pruning summaries"
    assert trained.resumed_from_epoch == 0


def test_strip_removes_wrappers_and_keeps_predictions_for_every_model_shape(pruned_variant):
    trained, stripped = pruned_variant.trained, pruned_variant.stripped
    assert stripped.max_abs_diff <= 1e-5
    model = load_model(stripped.model)  # no prune_scope needed: no wrapper is left
    assert not any(isinstance(layer, PruneLowMagnitude) for layer in model.submodules)
    assert_kernels_sparse([layer for layer in model.submodules if hasattr(layer, "kernel")], 0.5)
    images, _ = next(iter(load_split(pruned_variant.dataset, "test", 12)))
    assert_same_predictions(load_model(trained.wrapped_model, pruning_wrappers=True), model, images)
    assert stripped.model.stat().st_size < trained.wrapped_model.stat().st_size  # no masks, no optimizer



def with_noise(x):
    """Noise added at inference: two calls on the same images differ."""
    from pruneflow.tasks.core.runtime import tf

    return x + tf.random.uniform(tf.shape(x))


def test_a_wrapped_model_whose_outputs_stripping_would_change_is_refused_and_nothing_saved(tmp_path):
    """The check compares the wrapped and the stripped model on the same images: a model whose
    outputs move between two calls (noise added at inference) cannot be shown to be unchanged."""
    from pruneflow.tasks.core.runtime import keras, tfmot
    from pruneflow.tasks.libs.models import save_model
    from pruneflow.tasks.stages.strip import strip_wrappers

    inputs = keras.Input((4,))
    dense = tfmot.sparsity.keras.prune_low_magnitude(keras.layers.Dense(3))(inputs)
    path = save_model(keras.Model(inputs, keras.layers.Lambda(with_noise)(dense)), tmp_path / "wrapped.h5")
    with pytest.raises(RuntimeError, match=r"stripping changed the model's outputs by up to [0-9.e-]+ \(> 1e-05\)"):
        strip_wrappers(path, np.ones((8, 4), np.float32), tmp_path / "pruned.h5")
    assert not (tmp_path / "pruned.h5").exists()
    steady = keras.Model(inputs, keras.layers.Lambda(lambda x: x + 1.0)(dense))
    assert strip_wrappers(save_model(steady, tmp_path / "steady.h5"), np.ones((8, 4), np.float32), tmp_path / "pruned.h5") == 0.0
    assert (tmp_path / "pruned.h5").is_file()


def test_a_layer_tfmot_refuses_to_wrap_is_named_with_the_model(tmp_path):
    """Layers are planned from TFMOT's own registry; a plan that names one it has no rule for (a
    Rescaling, here planned by hand) ends in TFMOT's reason, under the model's path."""
    from pruneflow.tasks.core.runtime import keras
    from pruneflow.tasks.libs.selection import LayerPlan, PlannedLayer
    from pruneflow.tasks.specs.config import ConstantSchedule

    model = keras.Sequential([keras.Input((4,)), keras.layers.Rescaling(0.5, name="scale"), keras.layers.Dense(2, name="head")])
    plan = LayerPlan(layers=[PlannedLayer(path="scale", kind="Rescaling", group="pruned", target=0.5),
                             PlannedLayer(path="head", kind="Dense", group="pruned", target=0.5)])
    with pytest.raises(PruneflowError, match=r"m\.h5: TFMOT cannot prune this model: .*Rescaling"):
        wrap_for_pruning(model, plan, ConstantSchedule(target_sparsity=0.5, end_step=-1), tmp_path / "m.h5")

def wrap(model, path, policy="all_layers", **layers):
    """The model wrapped as prune-training wraps it, under a constant 0.5 schedule."""
    from pruneflow.tasks.specs.config import ConstantSchedule, LayerSelection, TrainingSpec

    schedule = ConstantSchedule(target_sparsity=0.5, end_step=-1)
    spec = TrainingSpec(
        epochs=1, optimizer="adam", learning_rate=1e-3, batch_size=8, shuffle_seed=0, augment=False, seed=0,
        pruning_policy=policy, layers=LayerSelection(**layers),
    )
    return wrap_for_pruning(model, plan_for(model, schedule, spec, path), schedule, path)


def test_a_subclassed_model_is_refused_with_an_explanation(tmp_path):
    from pruneflow.tasks.core.runtime import keras

    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, inputs):
            return self.dense(inputs)

    model = Net()
    model(np.zeros((1, 4), dtype="float32"))
    with pytest.raises(PruneflowError, match=r"a subclassed model \(Net\) cannot be pruned.*functional API"):
        wrap(model, tmp_path / "m.keras")


def test_the_xnnpack_policy_refuses_a_plain_cnn_with_tfmots_reason(tmp_path):
    from tests.helpers.models import build_tiny_cnn

    with pytest.raises(PruneflowError, match=r"m.h5: training.pruning_policy xnnpack_latency does not fit this model: "
                                             r"TFMOT says: Could not find `Conv2D 3x3`.*MobileNet-like"):
        wrap(build_tiny_cnn(), tmp_path / "m.h5", "xnnpack_latency")


def test_the_xnnpack_policy_wraps_only_the_1x1_convolutions_of_a_mobilenet_like_model(tmp_path):
    from tests.tasks.stages.test_latency import mobilenet_like

    wrapped = wrap(mobilenet_like(0.0), tmp_path / "m.h5", "xnnpack_latency")
    pruned = [layer.layer for layer in wrapped.layers if isinstance(layer, PruneLowMagnitude)]
    assert [(type(layer).__name__, layer.kernel_size) for layer in pruned] == [("Conv2D", (1, 1))]
    everything = wrap(mobilenet_like(0.0), tmp_path / "m.h5")
    kernels = [layer.layer for layer in everything.layers if isinstance(layer, PruneLowMagnitude)]
    assert [type(layer).__name__ for layer in kernels] == ["Conv2D", "Conv2D", "Dense"]  # 3x3, 1x1 and the head


def prepared_run(config_dict, tmp_path, **training):
    config = parse_config({**config_dict, "training": {**config_dict["training"], **training}})
    (tmp_path / "prepared").mkdir()
    dataset = write_prepared(tmp_path / "prepared", list_dataset(config.dataset), config.dataset.shape)
    steps = config.training_spec.steps_per_epoch(dataset.counts["train"])
    schedule = resolve_schedule(config.pruning, steps, config.training.epochs)
    return config, dataset, schedule


def train(config, dataset, schedule, work, out):
    """prune_train's build function, as the stage calls it."""
    out.mkdir(parents=True, exist_ok=True)
    return train_pruned(out, work, dataset, ModelFile.of(config.model.baseline), schedule, config.training_spec)


def test_a_failed_attempt_resumes_after_its_last_complete_epoch(config_dict, tmp_path, monkeypatch):
    from pruneflow.tasks.core.runtime import tf

    config, dataset, schedule = prepared_run(config_dict, tmp_path, epochs=3)
    monkeypatch.setenv("PRUNEFLOW_INJECT_FAULT", "resource_exhausted@1")
    with pytest.raises(tf.errors.ResourceExhaustedError):
        train(config, dataset, schedule, tmp_path / "work", tmp_path / "out1")
    checkpoint = load_model(tmp_path / "work" / "checkpoint.h5", pruning_wrappers=True, compile=True)
    assert int(checkpoint.optimizer.iterations.numpy()) > 0  # the optimizer state is restored, not fresh
    assert pruning_step(checkpoint) == 5  # 1 epoch x 5 steps: what resuming counts epochs by
    assert not any((tmp_path / "out1").iterdir())
    result = train(config, dataset, schedule, tmp_path / "work", tmp_path / "out2")
    assert result.resumed_from_epoch == 1
    history = json.loads(result.history.read_text())
    assert len(history["loss"]) == 3  # epoch 1 from the failed attempt, 2 and 3 from this one
    wrapped = load_model(result.wrapped_model, pruning_wrappers=True)
    assert_kernels_sparse([layer.layer for layer in wrapped.layers if isinstance(layer, PruneLowMagnitude)], 0.5)



def test_a_failure_between_an_epochs_history_and_its_checkpoint_loses_no_epoch(config_dict, tmp_path, monkeypatch):
    """The history is written before the checkpoint: an attempt that ends between the two (here
    at epoch 1's) leaves a history one epoch ahead of the checkpoint, which the resume cuts back;
    the other order would leave it one behind, and the finished history an epoch short."""
    config, dataset, schedule = prepared_run(config_dict, tmp_path, epochs=3)
    monkeypatch.setenv("PRUNEFLOW_INJECT_FAULT", "io_error@checkpoint:history")
    with pytest.raises(OSError, match="at checkpoint:history"):
        train(config, dataset, schedule, tmp_path / "work", tmp_path / "out1")
    assert len(json.loads((tmp_path / "work" / "history.json").read_text())["loss"]) == 1
    assert not (tmp_path / "work" / "checkpoint.h5").exists()
    monkeypatch.delenv("PRUNEFLOW_INJECT_FAULT")
    result = train(config, dataset, schedule, tmp_path / "work", tmp_path / "out2")
    assert result.resumed_from_epoch == 0
    history = json.loads(result.history.read_text())
    assert {name: len(values) for name, values in history.items()} == dict.fromkeys(history, 3)

def test_a_process_killed_mid_training_resumes_from_its_checkpoint(config_dict, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    config, dataset, schedule = prepared_run(config_dict, tmp_path, epochs=4)
    job = tmp_path / "job.json"
    job.write_text(json.dumps({
        "config": config.model_dump(mode="json"), "dataset": dataset.model_dump(mode="json"),
        "schedule": schedule.model_dump(mode="json"), "work": str(tmp_path / "work"), "out": str(tmp_path / "out1"),
    }))
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from pydantic import TypeAdapter\n"
        "from pruneflow.tasks.specs.config import RunConfig, Schedule\n"
        "from pruneflow.tasks.libs.artifacts import PreparedDataset\n"
        "from pruneflow.tasks.libs.models import ModelFile\n"
        "from pruneflow.tasks.stages.prune_train import train_pruned\n"
        "job = json.loads(Path(sys.argv[1]).read_text())\n"
        "config = RunConfig.model_validate(job['config'])\n"
        "Path(job['out']).mkdir()\n"
        "train_pruned(Path(job['out']), Path(job['work']), PreparedDataset.model_validate(job['dataset']),\n"
        "             ModelFile.of(config.model.baseline), TypeAdapter(Schedule).validate_python(job['schedule']),\n"
        "             config.training_spec)\n"
    )
    env = {**os.environ, "PRUNEFLOW_INJECT_FAULT": "hang@2", "PYTHONUNBUFFERED": "1"}
    root = Path(__file__).parents[3]
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(job)], cwd=root, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        for line in process.stdout:  # wait until training hangs after epoch 2's checkpoint
            if line.startswith("pruneflow: hanging"):
                break
        else:
            pytest.fail(f"training ended without reaching the fault (exit {process.wait()})")
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert not any((tmp_path / "out1").iterdir())  # the killed attempt wrote nothing there
    result = train(config, dataset, schedule, tmp_path / "work", tmp_path / "out2")
    assert result.resumed_from_epoch == 2  # epochs 3 and 4 only were trained here
    assert len(json.loads(result.history.read_text())["loss"]) == 4
    wrapped = load_model(result.wrapped_model, pruning_wrappers=True)
    assert_kernels_sparse([layer.layer for layer in wrapped.layers if isinstance(layer, PruneLowMagnitude)], 0.5)


def test_only_transient_failures_are_retried():
    from pruneflow.tasks.core.runtime import tf
    from pruneflow.tasks.stages.prune_train import is_transient

    assert is_transient(tf.errors.ResourceExhaustedError(None, None, "OOM"))
    assert is_transient(OSError("disk went away"))
    assert is_transient(tf.errors.UnavailableError(None, None, "device lost"))
    assert not is_transient(PruneflowError("bad data"))
    assert not is_transient(ValueError("a bug"))
    assert not is_transient(tf.errors.InvalidArgumentError(None, None, "shape"))


def test_diverging_training_fails_clearly_and_saves_no_nan_model(config_dict, tmp_path):
    config, dataset, schedule = prepared_run(config_dict, tmp_path, epochs=3, optimizer="sgd", learning_rate=1e12)
    with pytest.raises(PruneflowError, match=r"prune-training diverged: the loss became nan in epoch 1 of 3.*learning_rate"):
        train(config, dataset, schedule, tmp_path / "work", tmp_path / "out")
    assert not (tmp_path / "work" / "checkpoint.h5").exists()  # epoch 1 diverged: nothing to resume from
    assert not (tmp_path / "out" / "wrapped.h5").exists()


def test_a_stop_rule_ends_a_training_that_is_out_of_reach_and_a_resume_does_not_train_on(
    config_dict, tiny_prepared, tiny_baseline, tmp_path
):
    """A search's trial stops at its rule's epoch when its validation accuracy is too far under the
    unpruned model's; within reach, it trains to the end."""
    from pruneflow.tasks.stages.prune_train import StopRule

    # A baseline that says the opposite of the trained one (its classifier negated), fine-tuned at a
    # rate too small to learn anything in an epoch: far under the reference, the trained baseline.
    model = load_model(tiny_baseline)
    kernel, bias = model.layers[-1].get_weights()
    model.layers[-1].set_weights([-kernel, -bias])
    model.save(tmp_path / "contrary.h5")
    config = parse_config({**config_dict, "training": {**config_dict["training"], "epochs": 2, "learning_rate": 1e-9}})
    steps = config.training_spec.steps_per_epoch(tiny_prepared.counts["train"])
    schedule = resolve_schedule(config.pruning, steps, config.training.epochs)
    reference = ModelFile.of(tiny_baseline)

    def train_with(rule, name):
        (tmp_path / name).mkdir()
        return train_pruned(tmp_path / name, tmp_path / f"work-{name}", tiny_prepared,
                            ModelFile.of(tmp_path / "contrary.h5"), schedule, config.training_spec, rule)

    stopped = train_with(StopRule(after_epochs=1, max_drop=10.0, reference=reference), "stopped")
    assert stopped.stopped_after_epoch == 1 and stopped.epochs == 1 and stopped.steps == steps
    assert stopped.reference_val_accuracy - stopped.final_val_accuracy > 0.10
    assert len(json.loads(stopped.history.read_text())["val_accuracy"]) == 1
    assert pruning_step(load_model(stopped.wrapped_model, pruning_wrappers=True)) == steps

    # Run again on the same work folder (a retry after the artifact was lost): the checkpoint holds the
    # stopping epoch, and the rule stops it there again without training on.
    (tmp_path / "stopped").rename(tmp_path / "first")
    again = train_with(StopRule(after_epochs=1, max_drop=10.0, reference=reference), "stopped")
    assert again.stopped_after_epoch == 1 and again.resumed_from_epoch == 1
    assert pruning_step(load_model(again.wrapped_model, pruning_wrappers=True)) == steps

    lenient = train_with(StopRule(after_epochs=1, max_drop=100.0, reference=reference), "lenient")
    assert lenient.stopped_after_epoch is None and lenient.epochs == 2
    assert len(json.loads(lenient.history.read_text())["val_accuracy"]) == 2
