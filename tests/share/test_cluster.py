"""k-means weight clustering (kmeans_weights), CodebookLinear and ClusterConfig through compress_:
clustering properties, the packed layout, save/load, torch.compile, centroid fine-tuning, a digits MLP
and bad input."""

import copy
import re
import warnings

import pytest
import torch
from torch import nn

import pycompress
from pycompress.data.digits import accuracy, load_digits_split, train_classifier
from pycompress.ops.codebook import codebook_mm_reference
from pycompress.share import ClusterConfig, CodebookLinear, kmeans_weights


def _decode(indices, centroids):
    """Dense weight of a clustering: row g(n) of centroids indexed by indices [N, K]."""
    if centroids.shape[0] == 1:
        return centroids[0][indices]
    return centroids.gather(1, indices)


def _brute_force_nearest(w, centroids):
    rows = centroids if centroids.shape[0] == w.shape[0] else centroids.expand(w.shape[0], -1)
    return (w[:, :, None] - rows[:, None, :]).abs().argmin(-1)


# ---------------------------------------------------------------------------------------------
# kmeans_weights


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("init", ["linear", "quantile"])
def test_kmeans_assigns_nearest_sorted_centroids(bits, per_channel, init):
    w = torch.randn(24, 37)
    indices, centroids = kmeans_weights(w, bits, per_channel, init=init)
    assert indices.dtype == torch.int64 and indices.shape == (24, 37)
    assert centroids.dtype == torch.float32 and centroids.shape == (24 if per_channel else 1, 2**bits)
    assert torch.isfinite(centroids).all()
    assert (centroids.diff(dim=1) >= 0).all()
    assert int(indices.min()) >= 0 and int(indices.max()) < 2**bits
    nearest_error = (w - _decode(_brute_force_nearest(w, centroids), centroids)).abs()
    torch.testing.assert_close((w - _decode(indices, centroids)).abs(), nearest_error, rtol=0, atol=1e-6)


@pytest.mark.parametrize("per_channel", [False, True])
def test_converged_centroids_are_cluster_means(per_channel):
    w = torch.randn(16, 64)
    indices, centroids = kmeans_weights(w, 3, per_channel, iters=500)
    groups = centroids.shape[0]
    flat_w, flat_i = w.reshape(groups, -1), indices.reshape(groups, -1)
    for g in range(groups):
        for c in flat_i[g].unique():
            torch.testing.assert_close(centroids[g, c], flat_w[g][flat_i[g] == c].mean())


def test_kmeans_error_matches_scikit_learn():
    cluster = pytest.importorskip("sklearn.cluster")
    w = torch.randn(64, 64)
    indices, centroids = kmeans_weights(w, 3, init="quantile", iters=200)
    ours = (w - _decode(indices, centroids)).square().sum().item()
    fitted = cluster.KMeans(8, n_init=4, random_state=0).fit(w.reshape(-1, 1).double().numpy())
    assert ours <= fitted.inertia_ * 1.02, (ours, fitted.inertia_)  # Lloyd's local optimum


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("init", ["linear", "quantile"])
def test_exact_when_the_weight_has_few_distinct_values(per_channel, init):
    values = torch.tensor([-1.5, -0.25, 0.0, 0.75, 2.0])
    w = values[torch.randint(5, (12, 40))]
    for bits in (3, 4, 8):  # 8, 16 or 256 clusters for at most 5 values: some clusters stay empty
        indices, centroids = kmeans_weights(w, bits, per_channel, init=init)
        assert torch.isfinite(centroids).all()
        assert torch.equal(_decode(indices, centroids), w)
    constant = torch.full((3, 5), 0.5)
    indices, centroids = kmeans_weights(constant, 2, per_channel, init=init)
    assert torch.equal(_decode(indices, centroids), constant)


def test_empty_clusters_move_to_the_worst_represented_weights():
    # Linear init over [0, 100] puts two of four centroids in the empty gap between a dense clump
    # near 0 and one outlier; they must move into the clump rather than stay unused.
    w = torch.cat([torch.linspace(-1.0, 1.0, 999), torch.tensor([100.0])]).reshape(20, 50)
    indices, centroids = kmeans_weights(w, 2, init="linear")
    assert indices.unique().numel() == 4
    assert centroids[0, -1].item() == 100.0
    error = (w - _decode(indices, centroids)).abs()
    assert error.max().item() < 0.35  # three centroids over [-1, 1] leave errors of 1/3 at most


def test_kmeans_is_deterministic():
    w, importance = torch.randn(32, 48), torch.rand(48)
    first = kmeans_weights(w, 4, True, importance=importance, init="quantile")
    second = kmeans_weights(w.clone(), 4, True, importance=importance.clone(), init="quantile")
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_importance_lowers_the_weighted_error():
    w = torch.randn(16, 64)
    importance = torch.ones(64)
    importance[:8] = 1000.0  # eight input columns carry almost all the activation energy
    plain = kmeans_weights(w, 2, True)
    weighted = kmeans_weights(w, 2, True, importance=importance)

    def weighted_error(result):
        return ((w - _decode(*result)).square() * importance).sum().item()

    assert weighted_error(weighted) < 0.75 * weighted_error(plain)  # measured ratio 0.66
    # Zero energy in some columns is allowed (dead inputs) and still gives finite centroids.
    importance[8:] = 0.0
    assert torch.isfinite(kmeans_weights(w, 2, True, importance=importance)[1]).all()


@pytest.mark.parametrize("bits", [1, 9, 0, -4])
def test_bits_out_of_range(bits):
    with pytest.raises(ValueError, match=rf"kmeans_weights: bits must be in 2\.\.8 \(got {bits}\)"):
        kmeans_weights(torch.randn(4, 4), bits)
    with pytest.raises(ValueError, match=rf"ClusterConfig: bits must be in 2\.\.8 \(got {bits}\)"):
        ClusterConfig(bits=bits)
    with pytest.raises(ValueError, match=rf"CodebookLinear: bits must be in 2\.\.8 \(got {bits}\)"):
        CodebookLinear(4, 4, bits=bits)


@pytest.mark.parametrize("bits", [4.0, "4", True, None])
def test_bits_not_an_int(bits):
    with pytest.raises(TypeError, match=r"kmeans_weights: bits must be an int in 2\.\.8"):
        kmeans_weights(torch.randn(4, 4), bits)
    with pytest.raises(TypeError, match=r"ClusterConfig: bits must be an int in 2\.\.8"):
        ClusterConfig(bits=bits)


@pytest.mark.parametrize("per_channel", [1, "yes", None])
def test_per_channel_must_be_bool(per_channel):
    with pytest.raises(TypeError, match="kmeans_weights: per_channel must be a bool"):
        kmeans_weights(torch.randn(4, 4), 4, per_channel)
    with pytest.raises(TypeError, match="ClusterConfig: per_channel must be a bool"):
        ClusterConfig(bits=4, per_channel=per_channel)
    with pytest.raises(TypeError, match="CodebookLinear: per_channel must be a bool"):
        CodebookLinear(4, 4, per_channel=per_channel)


def test_bad_weights_and_arguments():
    w = torch.randn(4, 6)
    for bad in (float("nan"), float("inf")):
        poisoned = w.clone()
        poisoned[1, 2] = bad
        with pytest.raises(ValueError, match="kmeans_weights: w must be finite"):
            kmeans_weights(poisoned, 4)
    with pytest.raises(ValueError, match=r"kmeans_weights: w must be a non-empty floating-point tensor \[N, K\] "
                                         r"\(got int64 \[4, 6\]\)"):
        kmeans_weights(torch.ones(4, 6, dtype=torch.int64), 4)
    for shape in ([0, 6], [24]):
        with pytest.raises(ValueError, match=re.escape(f"w must be a non-empty floating-point tensor [N, K] "
                                                       f"(got float32 {shape})")):
            kmeans_weights(torch.ones(shape), 4)
    with pytest.raises(TypeError, match="kmeans_weights: w must be a floating-point tensor"):
        kmeans_weights([[1.0, 2.0]], 4)
    with pytest.raises(ValueError, match=r"importance must be None or a floating-point tensor \[K\] = \[6\]"):
        kmeans_weights(w, 4, importance=torch.ones(4))
    with pytest.raises(ValueError, match="importance must be finite and >= 0"):
        kmeans_weights(w, 4, importance=-torch.ones(6))
    with pytest.raises(ValueError, match="kmeans_weights: init must be one of linear, quantile"):
        kmeans_weights(w, 4, init="random")
    with pytest.raises(ValueError, match=r"kmeans_weights: iters must be an int >= 1 \(got 0\)"):
        kmeans_weights(w, 4, iters=0)
    with pytest.raises(ValueError, match="ClusterConfig: init must be one of linear, quantile"):
        ClusterConfig(init="kmeans++")
    with pytest.raises(TypeError, match="ClusterConfig: weighted must be a bool"):
        ClusterConfig(weighted="yes")


# ---------------------------------------------------------------------------------------------
# CodebookLinear


def _clustered(in_features, out_features, bits, per_channel, dtype=torch.float32, bias=True):
    linear = nn.Linear(in_features, out_features, bias=bias).to(dtype)
    indices, centroids = kmeans_weights(linear.weight, bits, per_channel)
    return linear, indices, centroids, CodebookLinear.from_clusters(linear, indices, centroids, per_channel)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("per_channel", [False, True])
def test_codebook_linear_layout_and_forward(bits, per_channel):
    linear, indices, centroids, module = _clustered(37, 20, bits, per_channel)
    storage = 16 if bits <= 4 else 256
    assert module.idx.dtype == torch.uint8
    assert module.idx.shape == ((20, 19) if bits <= 4 else (20, 37))
    assert isinstance(module.codebook, nn.Parameter)
    assert module.codebook.shape == (20 if per_channel else 1, storage)
    assert torch.equal(module.codebook[:, :2**bits].detach(), centroids)
    assert not module.codebook[:, 2**bits:].any()
    assert torch.equal(module.dense_weight(), _decode(indices, centroids))
    x = torch.randn(2, 5, 37)
    expected = codebook_mm_reference(x.reshape(-1, 37), module.idx, module.codebook.detach(), module.bias)
    torch.testing.assert_close(module(x), expected.reshape(2, 5, 20), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(module(x), nn.functional.linear(x, _decode(indices, centroids), linear.bias),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_codebook_linear_half_precision(dtype):
    linear, indices, centroids, module = _clustered(32, 8, 4, True, dtype=dtype)
    assert module.codebook.dtype == dtype and module.weight_dtype == str(dtype).replace("torch.", "")
    assert module.bias.dtype == dtype
    x = torch.randn(3, 32, dtype=dtype)
    expected = (x.float() @ _decode(indices, centroids).to(dtype).float().T + linear.bias.float()).to(dtype)
    out = module(x)
    assert out.dtype == dtype
    torch.testing.assert_close(out, expected)


def test_from_clusters_checks_its_inputs():
    linear = nn.Linear(6, 4)
    indices, centroids = kmeans_weights(linear.weight, 2, True)
    with pytest.raises(ValueError, match=r"centroids must be \[G, 2\^bits\] with G = 1 \(per_channel=False\)"):
        CodebookLinear.from_clusters(linear, indices, centroids, False)
    with pytest.raises(ValueError, match=r"centroids must be \[G, 2\^bits\] .* \(got shape \[4, 3\]\)"):
        CodebookLinear.from_clusters(linear, indices, centroids[:, :3], True)
    with pytest.raises(ValueError, match=r"indices must be \[out, in\] = \[4, 6\] \(got shape \[6, 4\]\)"):
        CodebookLinear.from_clusters(linear, indices.T, centroids, True)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 4\) \(got min 0, max 7\)"):
        CodebookLinear.from_clusters(linear, indices.clamp(max=0) + torch.eye(4, 6, dtype=torch.int64) * 7,
                                     centroids, True)


def _model():
    return nn.Sequential(nn.Linear(48, 64), nn.ReLU(), nn.Linear(64, 33, bias=False), nn.ReLU(),
                         nn.Linear(33, 8)).eval()


@pytest.mark.parametrize("config", [ClusterConfig(bits=3, per_channel=False), ClusterConfig(bits=6)],
                         ids=["3bit-tensor", "6bit-channel"])
def test_compress_save_load_compile(config, tmp_path):
    model = pycompress.compress_(_model(), config)
    assert [type(m) for m in model[::2]] == [CodebookLinear] * 3
    assert set(pycompress.report(model).replaced.values()) == {"codebook"}
    x = torch.randn(3, 7, 48)
    expected = model(x)
    pycompress.save(model, tmp_path / "m")
    loaded = pycompress.load(tmp_path / "m", _model())
    for saved, restored in zip(model[::2], loaded[::2]):
        assert isinstance(restored, CodebookLinear)
        assert (restored.bits, restored.per_channel) == (config.bits, config.per_channel)
        assert torch.equal(restored.idx, saved.idx) and torch.equal(restored.codebook, saved.codebook)
    assert torch.equal(loaded(x), expected)
    compiled = torch.compile(loaded, fullgraph=True, backend="aot_eager")
    with torch.inference_mode():
        torch.testing.assert_close(compiled(x), expected, rtol=1e-6, atol=1e-6)


def test_training_moves_the_centroids_only():
    linear, _, _, module = _clustered(32, 16, 3, True)
    idx, start = module.idx.clone(), module.codebook.detach().clone()
    assert [name for name, _ in module.named_parameters()] == ["codebook"]
    x = torch.randn(256, 32)
    # A target the clustering's shared values can reach: the same layer with its weights scaled.
    target = nn.functional.linear(x, 1.5 * linear.weight, linear.bias).detach()
    opt = torch.optim.Adam(module.parameters(), lr=1e-2)
    losses = []
    for _ in range(50):
        loss = nn.functional.mse_loss(module(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], (losses[0], losses[-1])
    assert torch.equal(module.idx, idx)
    assert not torch.equal(module.codebook[:, :8].detach(), start[:, :8])
    assert not module.codebook[:, 8:].any()  # unused entries get no gradient


def test_compress_reports_layers_it_cannot_take():
    class Custom(nn.Linear):
        pass

    poisoned = nn.Linear(8, 8)
    with torch.no_grad():
        poisoned.weight[0, 0] = float("nan")
    model = nn.Sequential(nn.Linear(8, 8), Custom(8, 8), poisoned)
    with pytest.warns(UserWarning, match="1 layers replaced, 2 left dense"):
        pycompress.compress_(model, ClusterConfig(bits=4))
    skipped = pycompress.report(model).skipped
    assert "subclasses nn.Linear" in skipped["1"] and "NaN or Inf" in skipped["2"]
    assert isinstance(model[0], CodebookLinear) and type(model[1]) is Custom and type(model[2]) is nn.Linear


def test_weighted_config_needs_calibration_and_uses_it():
    model = _model()
    with pytest.raises(ValueError, match="calibration: this config needs calibration data"):
        pycompress.compress_(copy.deepcopy(model), ClusterConfig(bits=2, weighted=True))
    calibration = [torch.randn(16, 48) for _ in range(2)]
    plain = pycompress.compress_(copy.deepcopy(model), ClusterConfig(bits=2))
    weighted = pycompress.compress_(copy.deepcopy(model), ClusterConfig(bits=2, weighted=True),
                                    calibration=calibration)
    assert not torch.equal(plain[0].codebook, weighted[0].codebook)


def test_weighted_config_reports_layers_the_calibration_never_reaches():
    class PartlyUsed(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            return self.used(x)

    model = PartlyUsed()
    with pytest.warns(UserWarning, match="1 layers replaced, 1 left dense"):
        pycompress.compress_(model, ClusterConfig(bits=2, weighted=True), calibration=[torch.randn(4, 8)])
    assert isinstance(model.used, CodebookLinear) and type(model.unused) is nn.Linear
    assert "calibration batches never reached this layer" in pycompress.report(model).skipped["unused"]


# ---------------------------------------------------------------------------------------------
# a trained digits MLP


@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("sklearn")
    split = load_digits_split(seed=0)
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
    return split, train_classifier(mlp, split, epochs=15, lr=3e-3, seed=0)


@pytest.mark.parametrize("per_channel", [True, False])
def test_digits_mlp_with_16_clusters_keeps_its_accuracy(digits, per_channel):
    split, dense = digits
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clustered = pycompress.compress_(copy.deepcopy(dense), ClusterConfig(bits=4, per_channel=per_channel))
    assert len(pycompress.report(clustered).replaced) == 3
    # Measured: dense 0.9866, 4-bit per channel 0.9866, per tensor 0.9866 (2-bit per tensor: 0.9710).
    assert accuracy(clustered, split) >= accuracy(dense, split) - 0.005
