"""Wanda and SparseGPT: the masks and weight updates of one layer, and sequential calibration of models."""

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from pycompress.prune import oneshot
from pycompress.prune import PruneConfig, make_permanent, prune_, sparsegpt_prune, sparsity_report, wanda_mask


def _correlated_inputs(tokens=512, features=64, seed=0):
    """Inputs whose features are strongly correlated and of very different scales."""
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(tokens, features // 4, generator=g)
    mixing = torch.randn(features // 4, features, generator=g)
    scales = torch.logspace(-1, 1, features)[torch.randperm(features, generator=g)]
    return (latent @ mixing + 0.1 * torch.randn(tokens, features, generator=g)) * scales


def _hessian(x):
    x = x.double()
    return 2 * x.T @ x / x.shape[0]


def _nm_valid(keep, n=2, m=4):
    return bool((keep.reshape(-1, m).sum(1) == n).all())


def test_wanda_mask_keeps_the_best_scores_of_every_row_and_group():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(16, 32, generator=g)
    norm = torch.rand(32, generator=g) * 10
    score = w.abs() * norm
    keep = wanda_mask(w, norm, 0.75)
    assert (keep.sum(1) == 8).all()
    for row in range(16):
        assert score[row][keep[row]].min() > score[row][~keep[row]].max()
    assert not torch.equal(keep, wanda_mask(w, torch.ones(32), 0.75))
    keep24 = wanda_mask(w, norm, nm=(2, 4))
    assert _nm_valid(keep24)
    groups, kept = score.reshape(-1, 4), keep24.reshape(-1, 4)
    assert (groups.masked_fill(~kept, float("inf")).min(1).values > groups.masked_fill(kept, -1).max(1).values).all()


def test_wanda_mask_keeps_pruned_entries_pruned():
    g = torch.Generator().manual_seed(2)
    w, norm = torch.randn(8, 16, generator=g), torch.rand(16, generator=g)
    prior = torch.rand(8, 16, generator=g) > 0.3
    for keep in (wanda_mask(w, norm, 0.5, prior=prior), wanda_mask(w, norm, nm=(2, 4), prior=prior)):
        assert not keep[~prior].any()


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
def test_sparsegpt_exact_sparsity_and_zeros(sparsity):
    x = _correlated_inputs()
    w = torch.randn(24, 64, generator=torch.Generator().manual_seed(3))
    pruned, keep = sparsegpt_prune(w, _hessian(x), sparsity, block_size=16)
    assert pruned.dtype == w.dtype and pruned.shape == w.shape and keep.dtype == torch.bool
    assert int((~keep).sum()) == round(sparsity * w.numel())
    assert (pruned[~keep] == 0).all() and (pruned[keep] != 0).all()


def test_sparsegpt_nm_pattern_and_determinism():
    x = _correlated_inputs()
    w = torch.randn(24, 64, generator=torch.Generator().manual_seed(4))
    pruned, keep = sparsegpt_prune(w, _hessian(x), nm=(2, 4), block_size=32)
    assert _nm_valid(keep) and _nm_valid(pruned != 0)
    again, keep_again = sparsegpt_prune(w, _hessian(x), nm=(2, 4), block_size=32)
    assert torch.equal(pruned, again) and torch.equal(keep, keep_again)


def test_sparsegpt_reconstructs_the_layer_output_better_than_magnitude_and_wanda():
    x = _correlated_inputs(tokens=2048, features=128)
    w = torch.randn(32, 128, generator=torch.Generator().manual_seed(5)) / 8
    h = _hessian(x)

    def error(weight):
        return ((x @ w.T - x @ weight.T).norm() / (x @ w.T).norm()).item()

    norm = x.norm(dim=0)
    # measured relative errors (magnitude, wanda, sparsegpt): 50% .275 .054 .035; 2:4 .375 .144 .061;
    # 80% .594 .228 .170
    for nm, sparsity in ((None, 0.5), ((2, 4), 0.5), (None, 0.8)):
        magnitude = w * wanda_mask(w, torch.ones(128), sparsity, nm=nm)
        wanda = w * wanda_mask(w, norm, sparsity, nm=nm)
        sparsegpt = sparsegpt_prune(w, h, sparsity, nm=nm, block_size=32)[0]
        assert error(sparsegpt) < 0.5 * error(magnitude), (nm, sparsity)
        assert error(sparsegpt) < 0.85 * error(wanda), (nm, sparsity)
        assert error(wanda) < 0.6 * error(magnitude), (nm, sparsity)


def test_sparsegpt_dead_inputs_and_damping():
    x = _correlated_inputs()
    x[:, 5] = 0
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(6))
    pruned, keep = sparsegpt_prune(w, _hessian(x), 0.25)
    assert torch.isfinite(pruned).all() and (pruned[:, 5] == 0).all() and not keep[:, 5].any()
    # indefinite: the first damping (0.01 * mean diag) is too small, a tenfold larger one works
    indefinite = torch.diag(torch.tensor([1.0, 1.0, 1.0, -0.05]))
    pruned, _ = sparsegpt_prune(torch.randn(2, 4), indefinite, 0.5, block_size=4)
    assert torch.isfinite(pruned).all()
    with pytest.raises(ValueError, match="not positive definite even with damping"):
        sparsegpt_prune(torch.randn(2, 2), torch.tensor([[1.0, 1000.0], [1000.0, 1.0]]), 0.5)


def test_single_layer_errors():
    w, h = torch.randn(4, 8), torch.eye(8)
    with pytest.raises(ValueError, match=r"sparsegpt_prune: hessian must have shape \[8, 8\] \(got \[4, 4\]\)"):
        sparsegpt_prune(w, torch.eye(4), 0.5)
    with pytest.raises(ValueError, match="sparsegpt_prune: weight must be 2-D"):
        sparsegpt_prune(torch.randn(8), h, 0.5)
    with pytest.raises(ValueError, match="hessian has NaN or Inf"):
        sparsegpt_prune(w, h * float("nan"), 0.5)
    with pytest.raises(ValueError, match=r"block_size \(6\) must be a multiple of m = 4"):
        sparsegpt_prune(w, h, nm=(2, 4), block_size=6)
    with pytest.raises(ValueError, match=r"sparsity must be a number in \[0, 1\)"):
        sparsegpt_prune(w, h, 1.5)
    with pytest.raises(ValueError, match="damping must be a positive number"):
        sparsegpt_prune(w, h, 0.5, damping=0)
    with pytest.raises(ValueError, match=r"wanda_mask: input_norm must have shape \[8\]"):
        wanda_mask(w, torch.ones(4), 0.5)
    with pytest.raises(ValueError, match=r"nm must be a tuple \(n, m\) with 0 < n < m"):
        wanda_mask(w, torch.ones(8), nm=(4, 2))
    with pytest.raises(ValueError, match=r"the number of input features \(8\) must be a multiple of m = 3"):
        wanda_mask(w, torch.ones(8), nm=(1, 3))
    with pytest.raises(ValueError, match="prior must have the weight's shape"):
        wanda_mask(w, torch.ones(8), 0.5, prior=torch.ones(8, 4, dtype=torch.bool))


# Sequential calibration on a small residual network whose blocks sit in an nn.ModuleList.

class _Block(nn.Module):
    def __init__(self, width, hidden):
        super().__init__()
        self.up = nn.Linear(width, hidden)
        self.down = nn.Linear(hidden, width)

    def forward(self, x, scale=1.0):
        return x + scale * self.down(torch.relu(self.up(x)))


class _Net(nn.Module):
    """inp -> 3 residual blocks -> head. ``break_chain`` adds 0 between blocks: the same numbers, but a
    block's input is no longer the very tensor the block before returned."""

    def __init__(self, break_chain=False):
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(8, 16)
        self.blocks = nn.ModuleList(_Block(16, 32) for _ in range(3))
        self.head = nn.Linear(16, 4)
        self.break_chain = break_chain

    def forward(self, x):
        x = self.inp(x)
        for block in self.blocks:
            x = block(x, scale=1.0)
            if self.break_chain:
                x = x + 0
        return self.head(x)


def _batches():
    g = torch.Generator().manual_seed(7)
    return [torch.randn(32, 8, generator=g) for _ in range(3)]


def _reference(model, config, groups):
    """Prune ``groups`` (lists of layer names) in order, each calibrated on the model as pruned so far
    (layers of one group from the same pass), with the single-layer functions."""
    modules = dict(model.named_modules())
    for group in groups:
        inputs = {name: [] for name in group}
        hooks = [modules[name].register_forward_pre_hook(lambda m, a, name=name: inputs[name].append(a[0]))
                 for name in group]
        with torch.no_grad():
            for batch in _batches():
                model(batch)
        for hook in hooks:
            hook.remove()
        for name in group:
            x, layer = torch.cat(inputs[name]), modules[name]
            nm = (config.n, config.m) if config.structure == "nm" else None
            if config.method == "wanda":
                keep = wanda_mask(layer.weight, x.double().norm(dim=0), config.sparsity, nm=nm)
            else:
                pruned, keep = sparsegpt_prune(layer.weight, _hessian(x), config.sparsity, nm=nm)
                with torch.no_grad():
                    layer.weight.copy_(pruned)
            torch_prune.custom_from_mask(layer, "weight", keep)
    return model


_ORDER = ["inp"] + [f"blocks.{i}.{p}" for i in range(3) for p in ("up", "down")] + ["head"]
_GROUPS = {
    "layer": [[name] for name in _ORDER],
    "block": [["inp"]] + [[f"blocks.{i}.up", f"blocks.{i}.down"] for i in range(3)] + [["head"]],
    "none": [_ORDER],
}


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("sequential", ["layer", "block", "none"])
def test_sequential_calibration_matches_a_layer_by_layer_reference(method, sequential, monkeypatch):
    config = PruneConfig(0.6, method=method, sequential=sequential)
    expected = _reference(_Net(), config, _GROUPS[sequential])
    captures = []
    capture = oneshot._capture_inputs
    monkeypatch.setattr(oneshot, "_capture_inputs", lambda *args: captures.append(args) or capture(*args))
    for break_chain in (False, True):
        captures.clear()
        model = prune_(_Net(break_chain), config, data=_batches())
        # blocks after the first take their inputs from the block before, unless the chain is broken
        assert len(captures) == (0 if sequential == "none" else 3 if break_chain else 1)
        for name in _ORDER:
            got, want = model.get_submodule(name), expected.get_submodule(name)
            assert torch.equal(got.weight_mask, want.weight_mask), (name, break_chain)
            torch.testing.assert_close(got.weight, want.weight, rtol=1e-4, atol=1e-5)


def test_sequential_modes_differ():
    masks = {}
    for sequential in ("layer", "block", "none"):
        model = prune_(_Net(), PruneConfig(0.6, method="sparsegpt", sequential=sequential), data=_batches())
        masks[sequential] = model.blocks[2].down.weight_mask
    assert not torch.equal(masks["layer"], masks["none"]) and not torch.equal(masks["block"], masks["none"])


class _Attention(nn.Module):
    """Query, key and value read the same tensor: one stage. Padding tokens carry huge values."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.q, self.k, self.v, self.out = (nn.Linear(8, 8) for _ in range(4))

    def forward(self, hidden, attention_mask):
        scores = self.q(hidden) @ self.k(hidden).transpose(1, 2) / 8 ** 0.5
        scores = scores.masked_fill(~attention_mask.bool()[:, None, :], -1e4)
        return self.out(scores.softmax(-1) @ self.v(hidden))


def _dict_batches(pad_value):
    g = torch.Generator().manual_seed(8)
    batches = []
    for _ in range(2):
        hidden = torch.randn(4, 6, 8, generator=g)
        mask = torch.ones(4, 6, dtype=torch.long)
        mask[:, 4:] = 0
        hidden[:, 4:] = pad_value
        batches.append({"hidden": hidden, "attention_mask": mask})
    return batches


def test_dict_batches_shared_inputs_and_padding_left_out():
    config = PruneConfig(0.5, method="sparsegpt", structure="nm")
    small = prune_(_Attention(), config, data=_dict_batches(0.0))
    huge = prune_(_Attention(), config, data=_dict_batches(1e3))
    for name in ("q", "k", "v", "out"):
        assert torch.equal(getattr(small, name).weight, getattr(huge, name).weight), name
        assert _nm_valid(getattr(small, name).weight_mask.bool())


@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("sklearn")
    from pycompress.data.digits import accuracy, load_digits_split, train_classifier

    split = load_digits_split(seed=0)
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    dense = train_classifier(mlp, split, epochs=20, seed=0)
    calibration = [split.x_train[i:i + 256] for i in range(0, 1024, 256)]
    return split, dense, calibration, accuracy


def test_digits_sparsity_and_accuracy(digits):
    split, dense, calibration, accuracy = digits
    models = {method: prune_(copy.deepcopy(dense), PruneConfig(0.8, method=method), data=calibration)
              for method in ("magnitude", "wanda", "sparsegpt")}
    # measured: dense 0.973, magnitude 0.931, wanda 0.895, sparsegpt 0.967
    assert accuracy(models["sparsegpt"], split) >= accuracy(models["magnitude"], split) + 0.02
    assert accuracy(models["wanda"], split) >= 0.85
    for layer in (0, 2, 4):
        in_features = dense[layer].in_features
        kept = models["wanda"][layer].weight_mask.sum(1)
        assert (kept == round(0.2 * in_features)).all()
        assert sparsity_report(models["sparsegpt"])[str(layer)] == round(0.8 * dense[layer].weight.numel()) / \
            dense[layer].weight.numel()
    for method in ("wanda", "sparsegpt"):
        model = prune_(copy.deepcopy(dense), PruneConfig(0.5, method=method, structure="nm"), data=calibration)
        assert all(_nm_valid(model[layer].weight != 0) for layer in (0, 2))
        assert accuracy(model, split) >= accuracy(dense, split) - 0.02


def test_interplay_with_torch_prune_and_make_permanent(digits):
    split, dense, calibration, _ = digits
    for method in ("wanda", "sparsegpt"):
        model = copy.deepcopy(dense)
        torch_prune.l1_unstructured(model[2], "weight", amount=0.3)
        before = model[2].weight_mask.bool().clone()
        prune_(model, PruneConfig(0.6, method=method), data=calibration)
        assert not model[2].weight_mask.bool()[~before].any()
        assert sparsity_report(model)["2"] == pytest.approx(0.6, abs=0.01)
        assert torch.equal(model[2].weight, model[2].weight_orig * model[2].weight_mask)
        out = model(split.x_test)
        make_permanent(model)
        assert not hasattr(model[2], "weight_orig") and sparsity_report(model)["2"] == pytest.approx(0.6, abs=0.01)
        torch.testing.assert_close(model(split.x_test), out)
    # SparseGPT on an already pruned layer writes its updated weights into weight_orig
    model = copy.deepcopy(dense)
    torch_prune.identity(model[4], "weight")
    prune_(model, PruneConfig(0.5, method="sparsegpt"), data=calibration)
    kept = model[4].weight_mask.bool()
    assert not torch.equal(model[4].weight_orig[kept], dense[4].weight[kept])


def test_calibrated_pruning_errors(digits):
    _, dense, calibration, _ = digits
    with pytest.raises(ValueError, match="prune_: method='wanda' needs data: an iterable of calibration batches"):
        prune_(copy.deepcopy(dense), PruneConfig(0.5, method="wanda"))
    with pytest.raises(ValueError, match="method='sparsegpt' needs calibration data, and data yielded no batches"):
        prune_(copy.deepcopy(dense), PruneConfig(0.5, method="sparsegpt"), data=[])
    with pytest.raises(ValueError, match=r"wanda: the inputs of layer 0 have NaN or Inf values"):
        prune_(copy.deepcopy(dense), PruneConfig(0.5, method="wanda"), data=[calibration[0] * float("inf")])
    with pytest.raises(ValueError, match="structure='ln' ranks channels by their Ln norm"):
        PruneConfig(0.5, method="sparsegpt", structure="ln")
    with pytest.raises(ValueError, match="method='wanda' compares weights within a layer"):
        PruneConfig(0.5, method="wanda", scope="global")
    with pytest.raises(ValueError, match=r"block_size \(126\) must be a multiple of m = 4"):
        PruneConfig(0.5, method="sparsegpt", structure="nm", block_size=126)
    with pytest.raises(ValueError, match="sequential must be one of block, layer, none"):
        PruneConfig(0.5, method="wanda", sequential="all")
    with pytest.raises(ValueError, match="damping must be a positive number"):
        PruneConfig(0.5, method="sparsegpt", damping=-1.0)
    with pytest.raises(ValueError, match=r"structure='nm' needs ints 0 < n < m \(got n=4, m=4\)"):
        PruneConfig(0.5, structure="nm", n=4)
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(144, 10))
    with pytest.raises(ValueError, match="method='wanda' prunes nn.Linear layers only; leave out 0 with filter_fn"):
        prune_(conv, PruneConfig(0.5, method="wanda"), data=[torch.randn(2, 1, 14, 14)])
    shared = nn.Linear(8, 8)
    twice = nn.Sequential(shared, nn.ReLU(), shared)
    with pytest.raises(ValueError, match="layer 0 ran 2 times in one forward pass"):
        prune_(twice, PruneConfig(0.5, method="sparsegpt"), data=[torch.randn(4, 8)])
    with pytest.raises(ValueError, match="method='movement' scores weights while fine-tuning"):
        prune_(copy.deepcopy(dense), PruneConfig(0.5, method="movement"), data=calibration)
