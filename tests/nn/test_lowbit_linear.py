"""WeightOnlyInt8Linear, BinaryLinear and TernaryLinear through compress_, save/load and torch.compile."""

import warnings

import pytest
import torch
from torch import nn

import pycompress
from pycompress.ops import lowbit as L
from pycompress.quant.lowbit import binarize_weight, ternarize_weight

CONFIGS = [
    (pycompress.Int8WeightOnlyConfig(), pycompress.WeightOnlyInt8Linear),
    (pycompress.Int8WeightOnlyConfig(group_size=32), pycompress.WeightOnlyInt8Linear),
    (pycompress.BinaryConfig(), pycompress.BinaryLinear),
    (pycompress.BinaryConfig(activations="binary"), pycompress.BinaryLinear),
    (pycompress.TernaryConfig(), pycompress.TernaryLinear),
]
IDS = ["w8a16", "w8a16-g32", "w1a16", "w1a1", "ternary"]


def _model():
    return nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 33, bias=False), nn.ReLU(), nn.Linear(33, 8)).eval()


def _expected(linear: nn.Linear, x: torch.Tensor, config) -> torch.Tensor:
    """The layer's output computed from the quantization rule with plain torch ops."""
    w = linear.weight.detach()
    if isinstance(config, pycompress.Int8WeightOnlyConfig):
        gs = config.group_size
        quantizer = pycompress.Quantizer(8, True, "channel" if gs is None else "group", gs)
        w_q = quantizer.fake_quantize(w)
    elif isinstance(config, pycompress.BinaryConfig):
        signs, alpha = binarize_weight(w)
        w_q = signs * alpha[:, None]
        if config.activations == "binary":
            x = torch.where(x < 0, -1.0, 1.0) * x.abs().mean(-1, keepdim=True)
    else:
        t, alpha = ternarize_weight(w)
        w_q = t * alpha[:, None]
    return torch.nn.functional.linear(x, w_q, linear.bias)


@pytest.mark.parametrize("config, module_type", CONFIGS, ids=IDS)
def test_layer_matches_quantization_rule(config, module_type):
    torch.manual_seed(1)
    linear = nn.Linear(64, 40)
    model = nn.Sequential(linear)
    compressed = pycompress.compress_(model, config)
    assert isinstance(compressed[0], module_type)
    x = torch.randn(5, 64)
    torch.testing.assert_close(compressed(x), _expected(linear, x, config), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("config, module_type", CONFIGS, ids=IDS)
def test_save_load_compile(config, module_type, tmp_path):
    torch.manual_seed(2)
    model = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pycompress.compress_(model, config)
    kinds = {type(m) for m in model if not isinstance(m, nn.ReLU)}
    assert kinds <= {module_type, nn.Linear} and module_type in kinds
    x = torch.randn(3, 7, 64)
    expected = model(x)
    pycompress.save(model, tmp_path / "m")
    loaded = pycompress.load(tmp_path / "m", _model())
    assert torch.equal(loaded(x), expected)
    compiled = torch.compile(loaded, fullgraph=True, backend="aot_eager")
    with torch.inference_mode():
        torch.testing.assert_close(compiled(x), expected, rtol=1e-6, atol=1e-6)


def test_group_size_that_does_not_divide_is_reported():
    model = nn.Sequential(nn.Linear(64, 8), nn.Linear(8, 4))
    with pytest.warns(UserWarning, match="group_size 32 does not divide in_features 8"):
        pycompress.compress_(model, pycompress.Int8WeightOnlyConfig(group_size=32))
    assert isinstance(model[0], pycompress.WeightOnlyInt8Linear) and type(model[1]) is nn.Linear


def test_bad_config_arguments():
    with pytest.raises(ValueError, match=r"BinaryConfig: activations must be one of \('float', 'binary'\) \(got 'ternary'\)"):
        pycompress.BinaryConfig(activations="ternary")
    with pytest.raises(ValueError, match=r"Int8WeightOnlyConfig: group_size must be None or a positive int \(got 0\)"):
        pycompress.Int8WeightOnlyConfig(group_size=0)
    with pytest.raises(ValueError, match=r"WeightOnlyInt8Linear: group_size must divide in_features = 10 \(got 4\)"):
        pycompress.WeightOnlyInt8Linear(10, 3, group_size=4)


def test_ternary_rule():
    w = torch.tensor([[1.0, -0.1, 0.5, -2.0], [0.0, 0.0, 0.0, 0.0]])
    t, alpha = ternarize_weight(w)
    # delta = 0.7 * 0.9 = 0.63: keeps 1.0 and -2.0, alpha = 1.5; an all-zero row keeps nothing.
    assert t[0].tolist() == [1.0, 0.0, 0.0, -1.0] and alpha[0].item() == 1.5
    assert not t[1].any() and alpha[1].item() == 0.0
    assert torch.equal(L.unpack_ternary_reference(L.pack_ternary(t), 4), t)
