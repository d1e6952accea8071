"""Truncated-SVD rank sweep of a digits MLP (64-256-256-10): accuracy stays flat down to a modest rank,
then falls off a cliff."""

import copy

import pytest
import torch
from torch import nn

from pycompress.data.digits import accuracy, load_digits_split, train_classifier
from pycompress.lowrank import factorize
from pycompress.nn import LowRankLinear

RANKS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)

# Measured (CPU, float32), accuracy in % by rank (both hidden layers at min(rank, full rank)), dense 98.4:
#   1: 10.9   2: 22.7   3: 26.7   4: 46.5   6: 83.7   8: 91.8   12: 95.3   16: 96.2   24: 97.3
#   32: 98.0  48: 98.4  64: 98.4  128: 98.2  256: 98.4
FLAT_FROM = 32


@pytest.fixture(scope="module")
def sweep():
    # Tiny layers: thread hand-offs cost more than they save, far more on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        split = load_digits_split()
        torch.manual_seed(0)
        mlp = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
        train_classifier(mlp, split, epochs=10, lr=1e-3)
        curve = {}
        for rank in RANKS:
            model = copy.deepcopy(mlp)
            for i in (0, 2):
                layer = model[i]
                u, v = factorize(layer.weight, min(rank, layer.in_features, layer.out_features))
                model[i] = LowRankLinear.from_factors(layer, u, v)
            curve[rank] = accuracy(model, split)
        return accuracy(mlp, split), curve, len(split.y_test)
    finally:
        torch.set_num_threads(threads)


def test_flat_then_cliff(sweep):
    dense, curve, n_test = sweep
    assert dense >= 0.97
    # Full rank reproduces the layers up to rounding: at most one test sample may flip.
    assert abs(curve[256] - dense) <= 1 / n_test
    for rank in RANKS:
        if rank >= FLAT_FROM:
            assert curve[rank] >= dense - 0.01, (rank, curve)
    assert curve[1] < dense - 0.2 and curve[2] < dense - 0.2, curve
    assert curve[8] < curve[FLAT_FROM], curve
