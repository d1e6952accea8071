"""Depthwise-separable factorization of Conv2d: exactness on per-channel rank-m weights, the parameter
and multiply-add counts, a digits CNN after the transform and a short fine-tune, save/load, torch.compile
and bad input."""

import copy
import warnings

import pytest
import torch
from torch import nn

import pycompress
from pycompress.data.digits import accuracy, load_digits_split, train_classifier
from pycompress.lowrank import SeparableConvConfig, separable_
from pycompress.nn import FORMATS
from pycompress.nn.lowrank import SeparableConv2d


def _rank_m_conv(cin, cout, k, m, seed=0, **kwargs):
    """A conv whose every slice W[:, i] ([cout, k*k]) has rank m."""
    g = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(cin, cout, k, **kwargs)
    slices = torch.randn(cin, cout, m, generator=g) @ torch.randn(cin, m, k * k, generator=g)
    with torch.no_grad():
        conv.weight.copy_(slices.reshape(cin, cout, k, k).transpose(0, 1))
    return conv


@pytest.mark.parametrize("cin,cout,k,m,kwargs", [
    (4, 8, 3, 1, dict(padding=1)),
    (3, 6, 3, 2, dict(stride=2, padding=2, dilation=2, bias=False)),
    (2, 5, 5, 3, dict(padding=(1, 2), padding_mode="reflect")),
    (3, 2, 3, 4, dict()),  # m above out: the extra components start at zero
])
def test_exact_when_each_input_channel_has_rank_m(cin, cout, k, m, kwargs):
    conv = _rank_m_conv(cin, cout, k, min(m, cout), **kwargs)
    separable = SeparableConv2d.from_conv(conv, m)
    x = torch.randn(2, cin, 11, 9)
    torch.testing.assert_close(separable(x), conv(x), rtol=1e-5, atol=1e-5)
    dw, pw = separable.depthwise, separable.pointwise
    assert (dw.groups, dw.out_channels, dw.stride, dw.padding, dw.dilation, dw.padding_mode) == (
        cin, cin * m, conv.stride, conv.padding, conv.dilation, conv.padding_mode)
    assert pw.kernel_size == (1, 1) and (pw.bias is None) == (conv.bias is None)


def test_best_rank_m_approximation_per_channel():
    conv = nn.Conv2d(3, 6, 3)
    separable = SeparableConv2d.from_conv(conv, 2)
    # The composed weight, channel by channel: pointwise [out, m] @ depthwise [m, k*k].
    pw = separable.pointwise.weight.view(6, 3, 2)
    dw = separable.depthwise.weight.view(3, 2, 9)
    for i in range(3):
        w = conv.weight[:, i].reshape(6, 9).double()
        s = torch.linalg.svdvals(w)
        error = torch.linalg.norm(w - (pw[:, i] @ dw[i]).double())
        assert error.item() == pytest.approx(s[2:].norm().item(), rel=1e-4)


def test_reduction_matches_hand_count():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1))
    with pytest.warns(UserWarning, match="left dense: 2: a 1x1 kernel has nothing to separate"):
        report = separable_(model, torch.randn(2, 4, 10, 10), multiplier=2)
    assert report.replaced == {"0": "separable_conv2d"} and list(report.skipped) == ["2"]
    # Dense: conv 8*4*9 + 8 and 1x1 8*8 + 8 parameters; per output pixel 8*36 and 8*8 MACs, 2*100 pixels.
    assert (report.params_before, report.macs_before) == (296 + 72, 2 * 100 * (8 * 36 + 8 * 8))
    # Separable: depthwise 8 channels * 9 taps, pointwise 8*8 + 8; per pixel 8*9 + 8*8 MACs.
    assert (report.params_after, report.macs_after) == (72 + 72 + 72, 2 * 100 * (8 * 9 + 8 * 8 + 8 * 8))
    assert report.param_reduction == pytest.approx(1 - 216 / 368)
    assert report.mac_reduction == pytest.approx(1 - 40000 / 70400)


def test_skips_and_bad_input():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Conv2d(4, 2, 3), nn.Conv2d(4, 4, 1))
    with pytest.warns(UserWarning) as caught:
        pycompress.compress_(model, SeparableConvConfig(multiplier=3))
    message = str(caught[0].message)
    assert "0: groups=2: only groups=1 convs are separated" in message
    assert "1: multiplier 3: the separable form (132 weights) is not smaller than the conv (72)" in message
    assert "2: a 1x1 kernel has nothing to separate" in message
    assert [type(m) for m in model] == [nn.Conv2d] * 3
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=r"SeparableConvConfig: multiplier must be an int >= 1"):
            SeparableConvConfig(multiplier=bad)
    with pytest.raises(ValueError, match=r"SeparableConvConfig: multiplier 10 is above k\*k = 9 of 1 \(3x3 kernel\)"):
        pycompress.compress_(nn.Sequential(nn.Conv2d(4, 4, 1), nn.Conv2d(4, 64, 3)), SeparableConvConfig(10))
    with pytest.raises(ValueError, match=r"SeparableConv2d.from_conv: multiplier must be an int in \[1, k\*k\] = "
                                         r"\[1, 9\] for a 3x3 kernel \(got 0\)"):
        SeparableConv2d.from_conv(nn.Conv2d(4, 4, 3), 0)
    with pytest.raises(ValueError, match=r"SeparableConv2d: multiplier must be an int >= 1 \(got 0\)"):
        SeparableConv2d(4, 4, 3, multiplier=0)
    with pytest.raises(TypeError, match="SeparableConv2d.from_conv: conv must be a plain nn.Conv2d"):
        SeparableConv2d.from_conv(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="SeparableConv2d.from_conv: conv must have groups=1"):
        SeparableConv2d.from_conv(nn.Conv2d(4, 4, 3, groups=4))
    nan_conv = nn.Conv2d(2, 2, 3)
    with torch.no_grad():
        nan_conv.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="SeparableConv2d.from_conv: conv.weight holds NaN or Inf"):
        SeparableConv2d.from_conv(nan_conv)
    with pytest.raises(TypeError, match="separable_: model must contain the convs, not be one"):
        separable_(nn.Conv2d(4, 4, 3), torch.randn(1, 4, 5, 5))


def test_save_load_and_compile(tmp_path):
    # pycompress.load rebuilds the layers named in the manifest from the types in pycompress.nn.FORMATS.
    assert FORMATS[SeparableConv2d.format_name] is SeparableConv2d

    def fresh():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                             nn.Conv2d(8, 8, 5, padding="same", padding_mode="circular", bias=False))

    model = fresh()
    pycompress.compress_(model, SeparableConvConfig(multiplier=2))
    assert isinstance(model[0], SeparableConv2d) and isinstance(model[2], SeparableConv2d)
    x = torch.randn(2, 3, 12, 12)
    expected = model(x)
    pycompress.save(model, tmp_path / "m")
    loaded = pycompress.load(tmp_path / "m", fresh())
    assert isinstance(loaded[2], SeparableConv2d) and loaded[2].depthwise.padding == "same"
    assert torch.equal(loaded(x), expected)
    compiled = torch.compile(loaded, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), expected)


@pytest.fixture(scope="module")
def one_thread():
    # Tiny convolutions: thread hand-offs cost more than they save, far more on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_digits_cnn_after_separation_and_fine_tune(one_thread):
    split = load_digits_split(image=True)
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(512, 10))
    train_classifier(cnn, split, epochs=15, lr=1e-3)
    dense = accuracy(cnn, split)
    model = copy.deepcopy(cnn)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = separable_(model, split.x_test[:1], multiplier=2)
    assert report.replaced == {"0": "separable_conv2d", "2": "separable_conv2d"}
    transformed = accuracy(model, split)
    train_classifier(model, split, epochs=3, lr=1e-3)
    tuned = accuracy(model, split)
    # Measured: dense 97.3%, separable (m=2) 92.4% before and 96.0% after 3 epochs of fine-tuning;
    # multiply-adds 309248 -> 92288 (-70%), parameters 9930 -> 6540 (-34%; the classifier holds 5130).
    assert (report.macs_before, report.macs_after) == (309248, 92288)
    assert (report.params_before, report.params_after) == (9930, 6540)
    assert dense >= 0.95
    assert tuned >= dense - 0.03, (dense, transformed, tuned)
    assert tuned > transformed
