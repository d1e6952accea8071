"""Low-rank factorization: SVD optimality, data-aware optimality on the inputs, activation-scaled SVD,
the spectra, ranks, LowRankConfig through compress_, save/load, torch.compile, fine-tuning and bad input."""

import warnings

import pytest
import torch
from torch import nn

import pycompress
from pycompress.lowrank import factorize, rank_for_budget, rank_for_energy, spectrum
from pycompress.lowrank.configs import GramDiagonalObserver, GramObserver
from pycompress.ops.lowrank import lowrank_mm_reference


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


def _scaled_inputs(n, K, seed=0):
    # Inputs of very different magnitudes, as in transformer activations with outlier channels.
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(1, -2, K, dtype=torch.float64)[torch.randperm(K, generator=g)]
    return torch.randn(n, K, generator=g, dtype=torch.float64) * scales


def test_activation_scaled_is_the_svd_of_the_scaled_weight():
    torch.manual_seed(2)
    w = torch.randn(40, 24, dtype=torch.float64)
    x = _scaled_inputs(400, 24)
    gram = x.T @ x / x.shape[0]
    u, v = factorize(w, 6, "activation_scaled", gram)
    s = gram.diagonal().sqrt().sqrt()
    best = torch.linalg.svdvals(w * s)[6:].norm()
    assert torch.linalg.norm((w - u @ v) * s).item() == pytest.approx(best.item(), rel=1e-9)
    # The scaling keeps the columns of the large inputs: a far smaller output error than plain SVD,
    # though not below the data-aware optimum.
    svd_u, svd_v = factorize(w, 6)
    da_u, da_v = factorize(w, 6, "data_aware", gram)
    error = torch.linalg.norm(x @ (w - u @ v).T)
    assert error < 0.5 * torch.linalg.norm(x @ (w - svd_u @ svd_v).T)
    assert error >= torch.linalg.norm(x @ (w - da_u @ da_v).T)
    # alpha = 0 scales nothing: plain SVD.
    u0, v0 = factorize(w, 6, "activation_scaled", gram, alpha=0)
    torch.testing.assert_close(u0 @ v0, svd_u @ svd_v, rtol=0, atol=1e-12)


def test_activation_scaled_dead_inputs():
    torch.manual_seed(3)
    w = torch.randn(16, 12, dtype=torch.float64)
    x = _scaled_inputs(200, 12)
    x[:, [2, 7]] = 0
    gram = x.T @ x / x.shape[0]
    u, v = factorize(w, 4, "activation_scaled", gram)
    assert torch.isfinite(u).all() and torch.isfinite(v).all()
    # Dead inputs take the smallest live scale, so the factors stay the SVD of W diag(s) with that fill.
    s = gram.diagonal().sqrt().sqrt()
    s[[2, 7]] = s[s > 0].min()
    best = torch.linalg.svdvals(w * s)[4:].norm()
    assert torch.linalg.norm((w - u @ v) * s).item() == pytest.approx(best.item(), rel=1e-9)
    with pytest.raises(ValueError, match="factorize: gram has a zero diagonal: the calibration inputs carry no signal"):
        factorize(w, 4, "activation_scaled", torch.zeros(12, 12))
    with pytest.raises(ValueError, match=r"factorize: alpha must be a finite number >= 0 \(got -1\)"):
        factorize(w, 4, "activation_scaled", gram, alpha=-1)


def test_activation_scaled_through_compress_observes_the_gram_diagonal():
    model = _model()
    calibration = [torch.randn(16, 64) * torch.logspace(0, -2, 64) for _ in range(3)]
    full, diagonal = GramObserver(), GramDiagonalObserver()
    for batch in calibration:
        full.update(batch)
        diagonal.update(batch)
    torch.testing.assert_close(diagonal.mean_gram(), torch.diag(full.mean_gram().diagonal()), rtol=1e-12, atol=0)
    u, v = factorize(model[0].weight, 8, "activation_scaled", full.mean_gram())
    pycompress.compress_(model, pycompress.LowRankConfig(rank=8, method="activation_scaled"), calibration=calibration)
    torch.testing.assert_close(model[0].dense_weight(), u @ v, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="the input of fc holds NaN or Inf"):
        diagonal.update(torch.tensor([[float("inf"), 1.0]]), "fc")


@pytest.mark.parametrize("method", ["svd", "data_aware", "whitened", "activation_scaled"])
def test_spectrum_gives_the_error_at_every_rank(method):
    torch.manual_seed(4)
    w = torch.randn(20, 14, dtype=torch.float64)
    x = _correlated_inputs(300, 14)
    gram = x.T @ x / x.shape[0]
    s = spectrum(w, method, None if method == "svd" else gram)
    assert s.shape == (14,) and torch.all(s[:-1] >= s[1:])
    # The error in each method's own measure: weights (svd), outputs on the data (data_aware),
    # W L with L the damped Cholesky factor (whitened), scaled columns (activation_scaled).
    eye = torch.eye(14, dtype=torch.float64)
    measure = {"svd": lambda d: d, "data_aware": lambda d: x @ d.T / x.shape[0] ** 0.5,
               "whitened": lambda d: d @ torch.linalg.cholesky(gram + 1e-6 * gram.diagonal().mean() * eye),
               "activation_scaled": lambda d: d * gram.diagonal().sqrt().sqrt()}[method]
    for rank in (1, 5, 13):
        u, v = factorize(w, rank, method, None if method == "svd" else gram)
        assert torch.linalg.norm(measure(w - u @ v)).item() == pytest.approx(s[rank:].norm().item(), rel=1e-6)


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


@pytest.mark.parametrize("dtype,bias_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                                              (torch.float16, torch.float16)])
def test_forward_runs_the_fused_op(dtype, bias_dtype):
    layer = pycompress.LowRankLinear(24, 40, rank=5, dtype=dtype, bias_dtype=bias_dtype)
    with torch.no_grad():
        for tensor in (layer.u, layer.v, layer.bias):
            tensor.copy_(torch.randn_like(tensor, dtype=torch.float32))
    x = torch.randn(3, 7, 24, dtype=dtype)
    y = layer(x)
    assert y.shape == (3, 7, 40) and y.dtype == dtype
    expected = lowrank_mm_reference(x.reshape(21, 24), layer.v.detach(), layer.u.detach(), layer.bias)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(y.reshape(21, 40), expected, rtol=tol, atol=tol)
    # The forward goes through the op's backend selection: a backend this machine lacks is an error.
    if not torch.cuda.is_available():
        with pycompress.use_backend("lowrank_mm=cuda"), pytest.raises(pycompress.BackendUnavailableError):
            layer(x)


def test_factors_are_trainable():
    model = pycompress.compress_(_model(), pycompress.LowRankConfig(rank=4))
    x = torch.randn(8, 64)
    model(x).pow(2).sum().backward()
    # The same loss written with plain matmuls gives the same factor gradients.
    u, v = (t.detach().clone().requires_grad_() for t in (model[0].u, model[0].v))
    hidden = torch.relu(x @ v.T @ u.T + model[0].bias)
    (hidden @ model[2].dense_weight().T + model[2].bias).pow(2).sum().backward()
    torch.testing.assert_close(model[0].u.grad, u.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model[0].v.grad, v.grad, rtol=1e-4, atol=1e-4)
    before = model[0].u.detach().clone()
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
    with pytest.raises(ValueError,
                       match="LowRankConfig: method must be one of svd, data_aware, whitened, activation_scaled"):
        pycompress.LowRankConfig(rank=2, method="asvd")
    with pytest.raises(ValueError, match="this config needs calibration data"):
        pycompress.compress_(_model(), pycompress.LowRankConfig(rank=4, method="whitened"))
    observer = GramObserver()
    with pytest.raises(ValueError, match="the input of fc holds NaN or Inf"):
        observer.update(torch.tensor([[float("nan"), 1.0]]), "fc")
