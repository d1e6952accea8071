"""StructuredPruneConfig through compress_: real smaller layers, reported, and save/load."""

import warnings

import pytest
import torch
from torch import nn

import pycompress
from pycompress.prune.physical import count_params


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 32), nn.ReLU(), nn.Linear(32, 16)).eval()


def test_channels_through_compress():
    model = _mlp()
    params = count_params(model)
    with pytest.warns(UserWarning, match=r"left dense: 4: channels kept: .*output"):
        pycompress.compress_(model, pycompress.StructuredPruneConfig(0.5), calibration=[torch.randn(4, 64)])
    assert [tuple(m.weight.shape) for m in model if isinstance(m, nn.Linear)] == [(48, 64), (16, 48), (16, 16)]
    report = pycompress.report(model)
    assert report.replaced == {"0": "[96, 64] -> [48, 64]", "2": "[32, 96] -> [16, 48]", "4": "[16, 32] -> [16, 16]"}
    assert count_params(model) < params / 2
    assert model(torch.randn(3, 64)).shape == (3, 16)


def test_filter_fn_picks_producers():
    model = _mlp()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pycompress.compress_(model, pycompress.StructuredPruneConfig(0.25), calibration=[torch.randn(2, 64)],
                             filter_fn=lambda module, name: name == "2")
    assert [tuple(m.weight.shape) for m in model if isinstance(m, nn.Linear)] == [(96, 64), (24, 96), (16, 24)]


def test_channels_need_calibration():
    with pytest.raises(ValueError, match=r"StructuredPruneConfig\(target='channels'\) needs calibration="):
        pycompress.compress_(_mlp(), pycompress.StructuredPruneConfig(0.5))
