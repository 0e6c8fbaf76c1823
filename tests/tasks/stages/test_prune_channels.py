"""The prune_channels stage's pre-flight check: every fraction a run or its sweep asks for must
remove something, refused before any stage otherwise."""

import pytest

from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.libs.readings import Readings
from pruneflow.tasks.specs.config import parse_config
from pruneflow.tasks.stages.prune_channels import check_channels


def test_a_sweep_fraction_that_removes_nothing_is_refused_naming_each_group_left_whole(config_dict):
    # The tiny CNN's convolution kept, its hidden Dense excluded, its classifier whole: nothing to remove.
    layers = {"keep_first_conv": True, "exclude": ["Dense"]}
    check_channels(Readings(parse_config({**config_dict, "layers": layers})))  # no fraction asked for: nothing checked
    swept = parse_config({**config_dict, "layers": layers, "sweep": {"channel_fractions": [0.0, 0.5]}})
    with pytest.raises(PruneflowError, match=r"channel_pruning removes no channel: .*layers.keep_first_conv.*"
                                             r"layers.exclude 'Dense'.*the model's output"):
        check_channels(Readings(swept))
    check_channels(Readings(parse_config({**config_dict, "sweep": {"channel_fractions": [0.5]}})))  # removes some
    searched = {"search": {"channel_fraction": [0.0, 0.5], "stop_after_epochs": 1}}
    with pytest.raises(PruneflowError, match=r"channel_pruning removes no channel"):
        check_channels(Readings(parse_config({**config_dict, "layers": layers, "sweep": searched})))


def test_round_to_reaches_the_plan(config_dict):
    # Every group of the tiny CNN is narrower than 64 channels: rounded to a multiple of 64, none is pruned.
    wide_tiles = parse_config({**config_dict, "channel_pruning": {"fraction": 0.5, "round_to": 64}})
    assert wide_tiles.channel_spec.round_to == 64
    with pytest.raises(PruneflowError, match=r"removes no channel: .*rounded to a multiple of 64, is none"):
        check_channels(Readings(wide_tiles))
    check_channels(Readings(parse_config({**config_dict, "channel_pruning": {"fraction": 0.5, "round_to": 8}})))
