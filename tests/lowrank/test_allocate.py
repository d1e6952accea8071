"""Global rank allocation: the greedy on a hand-checked case, LowRankConfig(allocation="global") against
a uniform per-layer budget at the same parameter count, the budget held, and bad budgets."""

import warnings

import pytest
import torch
from torch import nn

import pycompress
from pycompress.lowrank import allocate_ranks, rank_for_budget


def test_greedy_by_error_reduction_per_parameter():
    # Both layers [4, 4] (8 parameters a rank, 32 dense). Layer 0 gains 1/4 of its energy per rank;
    # layer 1's second singular value holds 1/5 of its energy, its others nothing.
    spectra = [torch.ones(4), torch.tensor([2.0, 1.0, 0.0, 0.0])]
    shapes = [(4, 4), (4, 4)]
    assert allocate_ranks(spectra, shapes, 0.5) == [1, 1]
    assert allocate_ranks(spectra, shapes, 0.75) == [2, 1]
    assert allocate_ranks(spectra, shapes, 1.0) == [3, 1]
    # Zero gains are not bought: parameters for nothing.
    assert allocate_ranks([torch.tensor([1.0, 0.0, 0.0]), torch.ones(3)], [(3, 3), (3, 3)], 1.0) == [1, 2]
    assert allocate_ranks(spectra, shapes, 1.0, max_ranks=[2, 4]) == [2, 2]
    # Costs differ: a layer twice as wide pays twice per rank for the same relative gain.
    assert allocate_ranks([torch.ones(4), torch.ones(4)], [(4, 4), (12, 4)], 0.625) == [3, 1]


def test_allocate_ranks_bad_input():
    with pytest.raises(ValueError, match=r"allocate_ranks: a budget of 0\.4 \(13 of 32 parameters\) is below the "
                                         r"minimum reachable, 0\.5 \(every layer at rank 1: 16 parameters\)"):
        allocate_ranks([torch.ones(4), torch.ones(4)], [(4, 4), (4, 4)], 0.4)
    with pytest.raises(ValueError, match=r"allocate_ranks: budget must be a fraction .* in \(0, 1\] \(got 1\.5\)"):
        allocate_ranks([torch.ones(4)], [(4, 4)], 1.5)
    with pytest.raises(ValueError, match="allocate_ranks: spectra and shapes must be non-empty and of equal length"):
        allocate_ranks([torch.ones(4)], [(4, 4), (4, 4)], 0.5)
    with pytest.raises(ValueError, match=r"allocate_ranks: max_ranks must give each layer a cap in \[1, min\(N, K\)\]"):
        allocate_ranks([torch.ones(4)], [(4, 4)], 0.5, max_ranks=[5])


class _Heads(nn.Module):
    """Three layers, each on its own slice of the input: with isotropic inputs every method measures a
    layer by its weight's own spectrum. ``a`` is nearly low-rank (singular values 0.6^i: rank 3 holds
    95% of its energy), ``b`` a random matrix with a flat spectrum (every rank buys little), ``c`` has
    columns fading by 100x, a spectrum in between: a uniform budget wastes on a and b ranks c needs."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a, self.b, self.c = nn.Linear(48, 64), nn.Linear(64, 64), nn.Linear(64, 32)
        q1, _ = torch.linalg.qr(torch.randn(64, 48, generator=g))
        q2, _ = torch.linalg.qr(torch.randn(48, 48, generator=g))
        with torch.no_grad():
            self.a.weight.copy_(q1 * 0.6 ** torch.arange(48.0) @ q2.T)
            self.b.weight.copy_(torch.randn(64, 64, generator=g) / 8)
            self.c.weight.copy_(torch.randn(32, 64, generator=g) * torch.logspace(0, -2, 64) / 8)

    def forward(self, x):
        xa, xb, xc = x.split([48, 64, 64], -1)
        return torch.cat([self.a(xa), self.b(xb), self.c(xc)], -1)

    def layers(self):
        return (self.a, self.b, self.c)


def _total_error(dense, compressed, inputs=None):
    """Sum over layers of ||X (W - W')^T||^2 / ||X W^T||^2, with X the layer's slice of ``inputs``, or
    of the weight errors ||W - W'||^2 / ||W||^2 when ``inputs`` is None."""
    total = 0.0
    slices = inputs.double().split([48, 64, 64], -1) if inputs is not None else (None,) * 3
    for layer, packed, x in zip(dense.layers(), compressed.layers(), slices):
        w = layer.weight.detach().double()
        diff = w - packed.dense_weight().double()
        if x is not None:
            w, diff = x @ w.T, x @ diff.T
        total += (diff.norm() ** 2 / w.norm() ** 2).item()
    return total


def _ranks(model):
    return [layer.rank for layer in model.layers()]


def _factor_params(model):
    return sum(layer.rank * (layer.in_features + layer.out_features) for layer in model.layers())


DENSE = 48 * 64 + 64 * 64 + 64 * 32


@pytest.mark.parametrize("method", ["svd", "data_aware", "activation_scaled"])
def test_global_allocation_beats_uniform_at_equal_parameters(method):
    calibration = [torch.randn(64, 176, generator=torch.Generator().manual_seed(s)) for s in range(4)]
    uniform = pycompress.compress_(_Heads(), pycompress.LowRankConfig(budget=0.3, method=method),
                                   calibration=calibration)
    assert _ranks(uniform) == [rank_for_budget(64, 48, 0.3), rank_for_budget(64, 64, 0.3),
                               rank_for_budget(32, 64, 0.3)]
    params = _factor_params(uniform)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        glob = pycompress.compress_(_Heads(), pycompress.LowRankConfig(budget=params / DENSE, method=method,
                                                                       allocation="global"),
                                    calibration=calibration)
    assert _factor_params(glob) <= params
    ranks = _ranks(glob)
    assert ranks[0] < _ranks(uniform)[0] and ranks[2] > _ranks(uniform)[2], ranks
    inputs = None if method == "svd" else torch.cat(calibration)
    error, uniform_error = _total_error(_Heads(), glob, inputs), _total_error(_Heads(), uniform, inputs)
    # Measured (ranks global / uniform [8, 9, 6], summed relative error global / uniform):
    # svd [3, 10, 10] 0.726 / 0.876, data_aware [4, 10, 9] 0.654 / 0.798,
    # activation_scaled [3, 10, 10] 0.715 / 0.855.
    assert error < 0.9 * uniform_error, (error, uniform_error)


@pytest.mark.parametrize("budget", [0.05, 0.1, 0.37, 0.8, 1.0])
def test_global_budget_is_held(budget):
    model = pycompress.compress_(_Heads(), pycompress.LowRankConfig(budget=budget, allocation="global"))
    params = _factor_params(model)
    assert params <= budget * DENSE
    # The budget is spent up to less than one more rank of the cheapest layer still below its cap
    # (ranks at which the factors would outgrow the weight are never given).
    caps = [(64 * 48 - 1) // 112, (64 * 64 - 1) // 128, (32 * 64 - 1) // 96]
    layers = model.layers()
    assert all(layer.rank <= cap for layer, cap in zip(layers, caps))
    open_costs = [layer.in_features + layer.out_features for layer, cap in zip(layers, caps) if layer.rank < cap]
    assert not open_costs or params + min(open_costs) > budget * DENSE


def test_global_allocation_bad_budgets_and_configs():
    minimum = (112 + 128 + 96) / DENSE
    with pytest.raises(ValueError, match=rf"LowRankConfig\(allocation='global'\): allocate_ranks: a budget of 0\.02 "
                                         rf".* below the minimum reachable, {minimum:.4g}"):
        pycompress.compress_(_Heads(), pycompress.LowRankConfig(budget=0.02, allocation="global"))
    with pytest.raises(ValueError, match=r"LowRankConfig: allocation='global' needs budget \(got rank\)"):
        pycompress.LowRankConfig(rank=4, allocation="global")
    with pytest.raises(ValueError, match=r"LowRankConfig: allocation must be 'layer' or 'global' \(got 'model'\)"):
        pycompress.LowRankConfig(budget=0.5, allocation="model")
    with pytest.raises(ValueError, match="this config needs calibration data"):
        pycompress.compress_(_Heads(), pycompress.LowRankConfig(budget=0.5, method="whitened", allocation="global"))


def test_global_allocation_reports_layers_it_cannot_shrink(tmp_path):
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 64), nn.Linear(64, 64))
    with pytest.warns(UserWarning, match=r"left dense: 0: no rank of a \[2, 2\] weight has factors smaller"):
        pycompress.compress_(model, pycompress.LowRankConfig(budget=0.5, allocation="global"))
    assert type(model[0]) is nn.Linear
    assert isinstance(model[1], pycompress.LowRankLinear) and isinstance(model[2], pycompress.LowRankLinear)
    assert model[1].rank * 66 + model[2].rank * 128 <= 0.5 * (2 * 64 + 64 * 64)
    x = torch.randn(3, 2)
    expected = model(x)
    pycompress.save(model, tmp_path / "m")
    loaded = pycompress.load(tmp_path / "m", nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 64), nn.Linear(64, 64)))
    assert torch.equal(loaded(x), expected)
