"""Int8Conv2d and BinaryConv2d: the im2col GEMM path against F.conv2d with the same quantized filters."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pycompress
from pycompress.formats.int8 import pack_int8_per_channel
from pycompress.quant.lowbit import binarize_weight

GEOMETRIES = [
    dict(in_channels=3, out_channels=8, kernel_size=3),
    dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=2, padding=1),
    dict(in_channels=4, out_channels=8, kernel_size=3, padding=2, dilation=2, bias=False),
    dict(in_channels=6, out_channels=9, kernel_size=1, groups=3),
    dict(in_channels=4, out_channels=4, kernel_size=3, padding="valid", groups=4),
]


def _quantized_filters(conv, kind):
    w = conv.weight.detach().reshape(conv.out_channels, -1)
    if kind == "int8":
        packed = pack_int8_per_channel(w)
        w_q = packed.qweight.float() * packed.scale[:, None]
    else:
        signs, alpha = binarize_weight(w)
        w_q = signs * alpha[:, None]
    return w_q.reshape(conv.weight.shape)


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("kind", ["int8", "binary"])
def test_conv_matches_conv2d_with_quantized_filters(geometry, kind):
    torch.manual_seed(0)
    conv = nn.Conv2d(**geometry)
    x = torch.randn(2, geometry["in_channels"], 9, 11)
    packed = pycompress.Int8Conv2d.from_conv(conv) if kind == "int8" else pycompress.BinaryConv2d.from_conv(conv)
    args = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups)
    expected = F.conv2d(x, _quantized_filters(conv, kind), conv.bias, **args)
    out = packed(x)
    assert out.shape == expected.shape
    if kind == "binary":
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    else:
        # Activations are quantized per output position (int8): compare with the dense result.
        cos = F.cosine_similarity(out.flatten(), F.conv2d(x, conv.weight, conv.bias, **args).flatten(), dim=0)
        assert cos > 0.999


def test_binary_w1a1_conv_matches_sign_activations():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 3, padding=1)
    packed = pycompress.BinaryConv2d.from_conv(conv, activations="binary")
    x = torch.randn(2, 4, 6, 6)
    cols = F.unfold(x, 3, padding=1).transpose(1, 2)
    beta = cols.abs().mean(-1, keepdim=True)
    w = _quantized_filters(conv, "binary").reshape(8, -1)
    expected = (torch.where(cols < 0, -1.0, 1.0) * beta) @ w.T + conv.bias
    torch.testing.assert_close(packed(x), expected.transpose(1, 2).reshape(2, 8, 6, 6), rtol=1e-4, atol=1e-4)


def test_compress_cnn_round_trip_and_compile(tmp_path):
    def cnn():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, groups=2),
                             nn.Flatten(), nn.Linear(8 * 3 * 3, 10)).eval()

    for config, conv_type in ((pycompress.Int8Config(), pycompress.Int8Conv2d),
                              (pycompress.BinaryConfig(), pycompress.BinaryConv2d)):
        model = pycompress.compress_(cnn(), config)
        assert isinstance(model[0], conv_type) and isinstance(model[2], conv_type)
        x = torch.randn(2, 1, 8, 8)
        expected = model(x)
        pycompress.save(model, tmp_path / conv_type.__name__)
        loaded = pycompress.load(tmp_path / conv_type.__name__, cnn())
        assert torch.equal(loaded(x), expected)
        compiled = torch.compile(loaded, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(x), expected, rtol=1e-5, atol=1e-5)


def test_unsupported_convs_are_reported():
    model = nn.Sequential(nn.Conv2d(2, 2, 3, padding="same"), nn.Conv2d(2, 2, 3, padding_mode="reflect"))
    with pytest.warns(UserWarning) as record:
        pycompress.compress_(model, pycompress.Int8Config())
    text = str(record[0].message)
    assert "padding='same' is not supported" in text and "padding_mode='reflect' is not supported" in text
    with pytest.raises(ValueError, match="Int8Conv2d.from_conv: padding='same' is not supported"):
        pycompress.Int8Conv2d.from_conv(nn.Conv2d(2, 2, 3, padding="same"))
    with pytest.raises(ValueError, match=r"Int8Conv2d: input must be \[B, 2, H, W\]"):
        pycompress.Int8Conv2d.from_conv(nn.Conv2d(2, 2, 3))(torch.randn(1, 3, 5, 5))
