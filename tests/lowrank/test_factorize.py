"""Low-rank factorization: SVD optimality, data-aware optimality on the inputs, ranks, LowRankConfig
through compress_, save/load, torch.compile, fine-tuning and bad input."""

import warnings

import pytest
import torch
from torch import nn

import pycompress
from pycompress.lowrank import factorize, rank_for_budget, rank_for_energy
from pycompress.lowrank.configs import GramObserver


def _correlated_inputs(n, K, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(K, K, generator=g) * torch.logspace(0, -3, K)[None, :]
    return torch.randn(n, K, generator=g, dtype=torch.float64) @ mix.double().T


def test_svd_is_the_best_weight_approximation():
    torch.manual_seed(0)
    w = torch.randn(48, 32, dtype=torch.float64)
    u, v = factorize(w, 8)
    s = torch.linalg.svdvals(w)
    assert u.shape == (48, 8) and v.shape == (8, 32)
    assert torch.linalg.norm(w - u @ v).item() == pytest.approx(s[8:].norm().item(), rel=1e-9)


@pytest.mark.parametrize("method", ["data_aware", "whitened"])
def test_data_aware_minimises_the_output_error(method):
    torch.manual_seed(1)
    w = torch.randn(40, 24, dtype=torch.float64)
    x = _correlated_inputs(500, 24)
    gram = x.T @ x / x.shape[0]
    svd_u, svd_v = factorize(w, 6)
    u, v = factorize(w, 6, method, gram)
    error = torch.linalg.norm(x @ (w - u @ v).T)
    assert error < 0.5 * torch.linalg.norm(x @ (w - svd_u @ svd_v).T)
    # The closed form is the optimum: the best rank-6 approximation of x w^T's row space.
    best = torch.linalg.svdvals(x @ w.T)[6:].norm()
    assert error.item() == pytest.approx(best.item(), rel=1e-4)


def test_ranks():
    s = torch.tensor([4.0, 2.0, 1.0, 1.0])
    assert rank_for_energy(s, 0.5) == 1 and rank_for_energy(s, 0.9) == 2 and rank_for_energy(s, 1.0) == 4
    assert rank_for_budget(100, 50, 0.5) == 16
    with pytest.raises(ValueError, match=r"rank_for_budget: a budget of 0.001 of a \[10, 10\] weight"):
        rank_for_budget(10, 10, 0.001)
    with pytest.raises(ValueError, match=r"factorize: rank must be an int in \[1, min\(N, K\)\] = \[1, 4\]"):
        factorize(torch.randn(4, 6), 5)
    with pytest.raises(ValueError, match=r"factorize: rank must be an int in \[1, min\(N, K\)\]"):
        factorize(torch.randn(4, 6), 0)
    with pytest.raises(ValueError, match=r"factorize: method='data_aware' needs gram"):
        factorize(torch.randn(4, 6), 2, "data_aware")


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32)).eval()


@pytest.mark.parametrize("config", [pycompress.LowRankConfig(rank=8), pycompress.LowRankConfig(energy=0.5),
                                    pycompress.LowRankConfig(budget=0.25, method="data_aware")],
                         ids=["rank", "energy", "budget-data-aware"])
def test_compress_save_load_compile(config, tmp_path):
    model = _model()
    calibration = [torch.randn(16, 64) for _ in range(4)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pycompress.compress_(model, config, calibration=calibration)
    assert isinstance(model[0], pycompress.LowRankLinear) and isinstance(model[2], pycompress.LowRankLinear)
    if config.budget is not None:
        assert model[0].rank == rank_for_budget(128, 64, 0.25)
    x = torch.randn(5, 64)
    expected = model(x)
    pycompress.save(model, tmp_path / "m")
    loaded = pycompress.load(tmp_path / "m", _model())
    assert torch.equal(loaded(x), expected)
    compiled = torch.compile(loaded, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), expected)


def test_factors_are_trainable():
    model = pycompress.compress_(_model(), pycompress.LowRankConfig(rank=4))
    before = model[0].u.detach().clone()
    loss = model(torch.randn(8, 64)).pow(2).sum()
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert not torch.equal(model[0].u.detach(), before)


def test_unprofitable_layers_stay_dense_and_bad_configs():
    model = nn.Sequential(nn.Linear(16, 16))
    with pytest.warns(UserWarning, match=r"rank 8 factors \(256 parameters\) are not smaller than the weight \(256\)"):
        pycompress.compress_(model, pycompress.LowRankConfig(rank=8))
    assert type(model[0]) is nn.Linear
    with pytest.raises(ValueError, match="LowRankConfig: give exactly one of rank, energy, budget"):
        pycompress.LowRankConfig(rank=4, energy=0.9)
    with pytest.raises(ValueError, match=r"LowRankConfig: rank must be an int >= 1 or a fraction in \(0, 1\)"):
        pycompress.LowRankConfig(rank=0)
    with pytest.raises(ValueError, match=r"LowRankConfig: rank 40 is above min\(N, K\) = 16"):
        pycompress.compress_(nn.Sequential(nn.Linear(16, 64)), pycompress.LowRankConfig(rank=40))
    with pytest.raises(ValueError, match="LowRankConfig: method must be one of svd, data_aware, whitened"):
        pycompress.LowRankConfig(rank=2, method="asvd")
    with pytest.raises(ValueError, match="this config needs calibration data"):
        pycompress.compress_(_model(), pycompress.LowRankConfig(rank=4, method="whitened"))
    observer = GramObserver()
    with pytest.raises(ValueError, match="the input of fc holds NaN or Inf"):
        observer.update(torch.tensor([[float("nan"), 1.0]]), "fc")
