"""Int8Linear, compress_, save/load, torch.compile and inference mode."""

import copy
import warnings

import pytest
import torch
from torch import nn

import pycompress
from pycompress.formats.int8 import pack_int8_per_channel
from pycompress.ops.int8 import int8_mm_reference, quantize_per_token_reference


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 96)
        self.fc2 = nn.Linear(96, 48, bias=False)
        self.head = nn.Linear(48, 10)
        self.attn = nn.MultiheadAttention(48, 4, batch_first=True)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        h = torch.relu(self.fc2(h))
        h = h + self.attn(h, h, h, need_weights=False)[0]
        return self.head(h)


def test_from_linear_matches_reference_math():
    linear = nn.Linear(40, 24)
    module = pycompress.Int8Linear.from_linear(linear)
    x = torch.randn(3, 5, 40)
    y = module(x)
    q, s = quantize_per_token_reference(x.reshape(-1, 40))
    packed = pack_int8_per_channel(linear.weight)
    wq, ws = packed.qweight, packed.scale
    expected = int8_mm_reference(q, wq, s, ws, linear.bias.detach(), torch.float32).reshape(3, 5, 24)
    torch.testing.assert_close(y, expected, rtol=1e-6, atol=1e-6)
    dense = linear(x)
    cos = torch.nn.functional.cosine_similarity(y.flatten(), dense.flatten(), dim=0)
    assert cos > 0.999
    assert module.qweight.dtype == torch.int8 and module.weight_scale.shape == (24,)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs(dtype):
    linear = nn.Linear(32, 16)
    module = pycompress.Int8Linear.from_linear(linear)
    y = module(torch.randn(4, 32, dtype=dtype))
    assert y.dtype == dtype and y.shape == (4, 16)


def test_bad_input_shape():
    module = pycompress.Int8Linear.from_linear(nn.Linear(8, 4))
    with pytest.raises(ValueError, match=r"Int8Linear: input must have last dimension 8 \(got shape \[2, 7\]\)"):
        module(torch.randn(2, 7))
    with pytest.raises(TypeError, match="Int8Linear.from_linear: linear must be an nn.Linear"):
        pycompress.Int8Linear.from_linear(nn.Conv2d(2, 2, 1))


def test_compress_swaps_and_reports():
    model = MLP().eval()
    x = torch.randn(2, 7, 64)
    dense = model(x)
    with pytest.warns(UserWarning, match="NonDynamicallyQuantizableLinear subclasses nn.Linear"):
        out_model = pycompress.compress_(model, pycompress.Int8Config())
    assert out_model is model
    assert isinstance(model.fc1, pycompress.Int8Linear) and isinstance(model.fc2, pycompress.Int8Linear)
    assert isinstance(model.head, pycompress.Int8Linear)
    assert type(model.attn.out_proj) is not pycompress.Int8Linear
    rep = pycompress.report(model)
    assert set(rep.replaced) == {"fc1", "fc2", "head"} and "attn.out_proj" in rep.skipped
    y = model(x)
    cos = torch.nn.functional.cosine_similarity(y.flatten(), dense.flatten(), dim=0)
    assert cos > 0.995


def test_compress_filter_fn_and_bad_config():
    model = MLP()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pycompress.compress_(model, pycompress.Int8Config(), filter_fn=lambda m, name: name == "fc1")
    assert isinstance(model.fc1, pycompress.Int8Linear) and isinstance(model.fc2, nn.Linear)
    with pytest.raises(TypeError, match=r"compress_: config must be one of .*Int8Config.* \(got object\)"):
        pycompress.compress_(model, object())
    bare = pycompress.compress_(nn.Linear(4, 4), pycompress.Int8Config())
    assert isinstance(bare, pycompress.Int8Linear)


def test_save_load_round_trip_bit_exact(tmp_path):
    model = MLP().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pycompress.compress_(model, pycompress.Int8Config())
    x = torch.randn(3, 5, 64)
    expected = model(x)
    pycompress.save(model, tmp_path / "m")
    fresh = MLP().eval()
    loaded = pycompress.load(tmp_path / "m", fresh)
    assert isinstance(loaded.fc2, pycompress.Int8Linear) and loaded.fc2.bias is None
    assert torch.equal(loaded(x), expected)
    with pytest.raises(FileNotFoundError, match="load: path must be a directory written by pycompress.save"):
        pycompress.load(tmp_path / "nothing", MLP())


def test_torch_compile_fullgraph_and_inference_mode():
    model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 16)).eval()
    pycompress.compress_(model, pycompress.Int8Config())
    x = torch.randn(6, 32)
    eager = model(x)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.inference_mode():
        torch.testing.assert_close(compiled(x), eager, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(model(x), eager, rtol=0, atol=0)


def test_torch_compile_inductor_fullgraph():
    model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 16)).eval()
    pycompress.compress_(model, pycompress.Int8Config())
    x = torch.randn(6, 32)
    compiled = torch.compile(model, fullgraph=True)
    with torch.inference_mode():
        eager, out = model(x), compiled(x)
    # Inductor's fused GELU may differ from eager by an ulp, which can move one activation across a
    # quantization step: allow a few steps of the output's scale, not bit equality.
    torch.testing.assert_close(out, eager, rtol=0, atol=0.02 * eager.abs().max().item())
    assert torch.nn.functional.cosine_similarity(out.flatten(), eager.flatten(), dim=0) > 0.9999
