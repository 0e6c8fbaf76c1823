"""Layer sensitivity: magnitude pruning of one layer alone, and the proposal built from it."""

import numpy as np
import pytest

from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.libs.artifacts import LayerSensitivity
from pruneflow.tasks.libs.sensitivity import magnitude_pruned, propose
from pruneflow.tasks.stages.layer_sensitivity import measure_layer


def test_magnitude_pruning_zeroes_the_smallest_weights_as_tfmot_counts_them():
    values = np.array([[0.5, -0.1, 0.3], [-0.7, 0.2, 0.05]], dtype="float32")
    expected = np.array([[0.5, 0, 0.3], [-0.7, 0, 0]], dtype="float32")
    np.testing.assert_array_equal(magnitude_pruned(values, 0.5), expected)
    assert np.count_nonzero(magnitude_pruned(np.ones(16), 0.7)) == 5  # TFMOT keeps round(16 * 0.3)
    np.testing.assert_array_equal(magnitude_pruned(values, 0.0), values)


def curve(layer, weights, drops, sparsities=(0.5, 0.8, 0.9)):
    return LayerSensitivity(
        folder=".", layer=layer, weights=weights, sparsities=list(sparsities),
        accuracies=[0.9 - d / 100 for d in drops], dense_accuracy=0.9,
    )


def test_the_proposal_reaches_the_target_and_keeps_sensitive_layers_lighter():
    results = [
        curve("robust", 1000, [0.0, 0.1, 0.2]),
        curve("sensitive", 1000, [2.0, 10.0, 30.0]),
        curve("small", 10, [5.0, 20.0, 40.0]),
    ]
    proposal = propose(results, 0.6)
    weights = {r.layer: r.weights for r in results}
    reached = sum(weights[name] * s for name, s in proposal.sparsity.items()) / sum(weights.values())
    assert reached >= 0.6 and proposal.reached == pytest.approx(reached)
    assert reached < 0.6 + 0.05 * 1000 / 2010  # overshoots by less than one step of one layer
    assert proposal.sparsity["robust"] == 0.9  # the cheapest weights go first, up to the highest measured
    assert proposal.sparsity["robust"] > proposal.sparsity["sensitive"] > 0
    assert proposal.sparsity["small"] == 0.0


def test_a_proposal_ends_on_ceilings_with_more_decimals_than_it_writes():
    proposal = propose([curve("a", 100, [1.0], (0.33333,)), curve("b", 300, [1.0], (0.33333,))], 0.33333)
    assert proposal.reached == pytest.approx(0.33333) and all(s <= 0.33333 for s in proposal.sparsity.values())


def test_a_target_beyond_the_measured_sparsities_is_refused_with_what_is_reachable():
    with pytest.raises(PruneflowError, match=r"0\.95 is out of reach: .* gives 0\.9000. Add higher sparsities"):
        propose([curve("a", 100, [0, 0, 0]), curve("b", 100, [0, 0, 0])], 0.95)


def test_a_layer_of_a_nested_model_is_pruned_alone_by_its_path(tiny_data, tiny_prepared, tmp_path, deterministic_ops):
    from pruneflow.tasks.libs.models import ModelFile
    from pruneflow.tasks.libs.selection import walk
    from tests.helpers.models import train_tiny_baseline

    baseline = ModelFile.of(train_tiny_baseline(tiny_data, tmp_path / "nested.h5", "nested"))
    conv = next(path for path, layer in walk(baseline.load()) if type(layer).__name__ == "Conv2D")
    assert conv.startswith("backbone/")
    result = measure_layer(tmp_path, baseline, tiny_prepared, conv, (0.5, 0.99), batch_size=8)
    assert result.weights == 3 * 3 * 3 * 8
    assert 0.0 <= result.accuracies[1] <= 1.0 and result.dense_accuracy > 0.5
    # The baseline file is untouched, and measuring again gives the same figures.
    again = measure_layer(tmp_path, baseline, tiny_prepared, conv, (0.5, 0.99), batch_size=8)
    assert again.accuracies == result.accuracies and again.dense_accuracy == result.dense_accuracy
    with pytest.raises(PruneflowError, match="no layer 'backbone' with weights TFMOT prunes"):
        measure_layer(tmp_path, baseline, tiny_prepared, "backbone", (0.5,), batch_size=8)
