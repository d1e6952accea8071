"""Sparse24Linear and SparseLinear through compress_ (pruning + packing + the speed decision),
save/load and torch.compile."""

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

import pycompress
from pycompress.ops.sparse24 import is_sparse24
from pycompress.prune import PruneConfig, prune_

ALWAYS = dict(min_speedup=None)
CONFIGS = [
    (pycompress.Sparse24Config(**ALWAYS), pycompress.Sparse24Linear),
    (pycompress.SparseConfig(0.9, **ALWAYS), pycompress.SparseLinear),
    (pycompress.SparseConfig(0.75, block=16, **ALWAYS), pycompress.SparseLinear),
]
IDS = ["2:4", "csr-90", "bsr16-75"]


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 32, bias=False), nn.ReLU(), nn.Linear(32, 16)).eval()


def _pruned_reference(model, config):
    """The same model pruned with plain masks: what the packed model must compute."""
    if isinstance(config, pycompress.Sparse24Config):
        return prune_(model, PruneConfig(0.5, structure="nm"))
    if config.block is None:
        return prune_(model, PruneConfig(config.sparsity))
    for module in model.modules():
        if isinstance(module, nn.Linear):
            b = config.block
            N, K = module.weight.shape
            norms = module.weight.detach().reshape(N // b, b, K // b, b).pow(2).sum((1, 3)).flatten()
            keep = torch.zeros_like(norms, dtype=torch.bool)
            keep[norms.topk(round((1 - config.sparsity) * norms.numel())).indices] = True
            mask = keep.view(N // b, K // b).repeat_interleave(b, 0).repeat_interleave(b, 1)
            torch_prune.custom_from_mask(module, "weight", mask.float())
    return model


@pytest.mark.parametrize("config, module_type", CONFIGS, ids=IDS)
def test_compress_prunes_and_packs(config, module_type):
    model, reference = _model(), _pruned_reference(_model(), config)
    x = torch.randn(7, 64)
    with pycompress.use_backend("reference"), warnings.catch_warnings():
        warnings.simplefilter("error")
        compressed = pycompress.compress_(model, config)
        out = compressed(x)
    packed = [m for m in compressed.modules() if isinstance(m, module_type)]
    assert len(packed) == 3
    for module in packed:
        w = module.dense_weight()
        if module_type is pycompress.Sparse24Linear:
            assert is_sparse24(w) and (w == 0).float().mean() == 0.5
        else:
            assert (w == 0).float().mean().item() >= config.sparsity - 0.01
    torch.testing.assert_close(out, reference(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config, module_type", CONFIGS, ids=IDS)
def test_save_load_compile(config, module_type, tmp_path):
    model = pycompress.compress_(_model(), config)
    x = torch.randn(5, 64)
    with pycompress.use_backend("reference"):
        expected = model(x)
        pycompress.save(model, tmp_path / "m")
        loaded = pycompress.load(tmp_path / "m", _model())
        assert isinstance(loaded[2], module_type)
        assert torch.equal(loaded(x), expected)
        compiled = torch.compile(loaded, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(x), expected)


def test_keeps_dense_when_not_faster():
    model = _model()
    with pytest.warns(UserWarning, match=r"kept dense \(pruned\): csr at 90% sparsity measured .*x the dense layer's "
                                         r"speed at 16 tokens on cpu \(needs >= 1000.0x\)"):
        pycompress.compress_(model, pycompress.SparseConfig(0.9, min_speedup=1000.0, tokens=16))
    report = pycompress.report(model)
    assert len(report.skipped) == 3 and not report.replaced
    for module in model.modules():
        if isinstance(module, nn.Linear):
            assert type(module) is nn.Linear and not hasattr(module, "weight_mask")
            assert (module.weight == 0).float().mean().item() == pytest.approx(0.9, abs=0.01)


def test_already_24_weights_and_torch_prune_masks():
    model = _model()
    torch_prune.ln_structured(model[0], "weight", amount=0.25, n=2, dim=0)
    prune_(model, PruneConfig(0.5, structure="nm"))
    x = torch.randn(3, 64)
    expected = model(x)
    with pycompress.use_backend("reference"):
        compressed = pycompress.compress_(model, pycompress.Sparse24Config(method=None, **ALWAYS))
        torch.testing.assert_close(compressed(x), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="sparse24_compress: w is not 2:4 sparse"):
        pycompress.compress_(_model(), pycompress.Sparse24Config(method=None, **ALWAYS))


def test_skips_layers_the_format_cannot_take():
    model = nn.Sequential(nn.Linear(40, 64), nn.Linear(64, 48))
    with pytest.warns(UserWarning, match="in_features 40 is not a multiple of 16"):
        pycompress.compress_(model, pycompress.Sparse24Config(**ALWAYS))
    assert type(model[0]) is nn.Linear and isinstance(model[1], pycompress.Sparse24Linear)
    assert (model[0].weight != 0).all()
    with pytest.warns(UserWarning, match=r"shape \[48, 64\] is not a multiple of the block size 32"):
        pycompress.compress_(nn.Sequential(nn.Linear(64, 48)), pycompress.SparseConfig(0.5, block=32, **ALWAYS))


def test_bad_configs():
    with pytest.raises(ValueError, match=r"SparseConfig: sparsity must be a number in \[0, 1\) \(got 1.0\)"):
        pycompress.SparseConfig(1.0)
    with pytest.raises(ValueError, match=r"SparseConfig: sparsity must be a number in \[0, 1\) \(got -0.1\)"):
        pycompress.SparseConfig(-0.1)
    with pytest.raises(ValueError, match=r"SparseConfig: block must be None or one of \(16, 32, 64\)"):
        pycompress.SparseConfig(0.5, block=8)
    with pytest.raises(ValueError, match="Sparse24Config: method must be None or one of magnitude, wanda, sparsegpt"):
        pycompress.Sparse24Config(method="random")
    with pytest.raises(ValueError, match="SparseConfig: min_speedup must be None or a positive number"):
        pycompress.SparseConfig(0.5, min_speedup=0)
    with pytest.raises(ValueError, match="Sparse24Linear: in_features must be a multiple of 16"):
        pycompress.Sparse24Linear(40, 8)
    with pytest.raises(ValueError, match=r"SparseLinear: block must be one of \(16, 32, 64\) for layout='bsr'"):
        pycompress.SparseLinear(64, 64, layout="bsr")
