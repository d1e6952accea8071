"""A digits CNN physically channel-pruned to half its multiply-accumulates keeps its accuracy after a
short fine-tune (fixed seeds)."""

import copy

import pytest
import torch
from torch import nn

from pycompress.data.digits import accuracy, load_digits_split, train_classifier
from pycompress.prune.physical import count_macs, count_params, prune_channels_

pytest.importorskip("sklearn")


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10),
    )


def test_half_the_macs_within_two_points_after_fine_tuning():
    split = load_digits_split(seed=0, image=True)
    dense = train_classifier(_cnn(), split, epochs=6, lr=3e-3, seed=0)
    x = split.x_test[:1]
    pruned = prune_channels_(copy.deepcopy(dense), 0.3, example_inputs=x)
    assert [m.out_channels for m in pruned if isinstance(m, nn.Conv2d)] == [11, 22]
    assert (pruned[8].in_features, pruned[8].out_features, pruned[10].in_features) == (22 * 16, 22, 22)
    assert count_macs(pruned, x) / count_macs(dense, x) <= 0.5
    assert count_params(pruned) < 0.5 * count_params(dense)
    assert pruned(split.x_test).shape == (len(split.x_test), 10)
    # Measured: dense 98.4%, pruned 75.7% before and 98.0% after 2 epochs of fine-tuning.
    train_classifier(pruned, split, epochs=2, lr=1e-3, seed=1)
    assert accuracy(pruned, split) >= accuracy(dense, split) - 0.02
