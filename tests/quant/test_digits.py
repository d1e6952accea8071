"""Quantization methods on scikit-learn's digits, with fixed seeds: the shape of the results."""

import copy

import pytest
import torch
from torch import nn

import pycompress
from pycompress.data.digits import accuracy, load_digits_split, train_classifier
from pycompress.quant import Quantizer
from pycompress.quant.qat import QATConfig, convert, prepare_qat

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def split():
    return load_digits_split(seed=0)


@pytest.fixture(scope="module")
def dense(split):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    return train_classifier(model, split, epochs=20, seed=0)


def _ptq(model, quantizer):
    model = copy.deepcopy(model)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                w = module.weight
                module.weight.copy_(quantizer.fake_quantize(w.reshape(w.shape[0], -1)).reshape(w.shape))
    return model


@torch.no_grad()
def _kl_to(dense, model, split):
    p = torch.log_softmax(dense(split.x_test), -1)
    q = torch.log_softmax(model(split.x_test), -1)
    return torch.nn.functional.kl_div(q, p, log_target=True, reduction="batchmean").item()


def test_per_channel_at_least_per_tensor_at_low_bits(dense, split):
    assert accuracy(dense, split) > 0.96
    for bits in (2, 3):
        per_tensor = _ptq(dense, Quantizer(bits, granularity="tensor"))
        per_channel = _ptq(dense, Quantizer(bits, granularity="channel"))
        # At 3 bits both keep the accuracy within a test sample or two, so the fidelity to the dense
        # model (KL of the predictions) is what tells them apart; at 2 bits accuracy does too.
        assert _kl_to(dense, per_channel, split) < _kl_to(dense, per_tensor, split)
        if bits == 2:
            assert accuracy(per_channel, split) > accuracy(per_tensor, split) + 0.2


def test_per_channel_at_least_per_tensor_cnn():
    split = load_digits_split(seed=0, image=True)
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 16, 10))
    cnn = train_classifier(cnn, split, epochs=8, seed=0)
    assert accuracy(cnn, split) > 0.95
    for bits in (2, 3):
        per_tensor = _ptq(cnn, Quantizer(bits, granularity="tensor"))
        per_channel = _ptq(cnn, Quantizer(bits, granularity="channel"))
        assert _kl_to(cnn, per_channel, split) < _kl_to(cnn, per_tensor, split)
        assert accuracy(per_channel, split) >= accuracy(per_tensor, split)


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("learned_step", [False, True])
def test_qat_at_least_post_training(dense, split, bits, learned_step):
    ptq = accuracy(_ptq(dense, Quantizer(bits)), split)
    model = prepare_qat(copy.deepcopy(dense), QATConfig(bits=bits, learned_step=learned_step))
    train_classifier(model, split, epochs=5, lr=1e-3, seed=1)
    qat = accuracy(model, split)
    packed = convert(model)
    assert all(type(m) is not nn.Linear for m in packed.modules())
    assert qat >= ptq
    assert accuracy(packed, split) == pytest.approx(qat, abs=1.0 / len(split.y_test))


def test_binary_w1a1_network_reaches_90_percent(split):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 256), nn.BatchNorm1d(256), nn.Linear(256, 256), nn.BatchNorm1d(256),
                        nn.Linear(256, 10))
    model = prepare_qat(net, QATConfig(weight="binary", activations="binary"))
    train_classifier(model, split, epochs=20, lr=1e-2, seed=0)
    packed = convert(model)
    assert isinstance(packed[2], pycompress.BinaryLinear) and packed[2].activations == "binary"
    assert accuracy(packed, split) >= 0.90


def test_mixed_precision_config_round_trip(dense, split, tmp_path):
    plan = {"0": 3, "2": 6, "4": 8}
    model = pycompress.compress_(copy.deepcopy(dense), pycompress.MixedPrecisionConfig(plan=plan))
    assert all(isinstance(model[int(i)], pycompress.WeightOnlyInt8Linear) for i in plan)
    assert model[0].qweight.abs().max().item() <= 3  # 3-bit codes
    pycompress.save(model, tmp_path / "m")
    loaded = pycompress.load(tmp_path / "m", copy.deepcopy(dense))
    assert torch.equal(loaded(split.x_test), model(split.x_test))
    with pytest.raises(ValueError, match=r"MixedPrecisionConfig: plan\['0'\] must be bits in 2..8 \(got 1\)"):
        pycompress.MixedPrecisionConfig(plan={"0": 1})


def test_ternary_post_training_keeps_95_percent(dense, split):
    ternary = pycompress.compress_(copy.deepcopy(dense), pycompress.TernaryConfig())
    assert isinstance(ternary[0], pycompress.TernaryLinear)
    assert accuracy(ternary, split) >= 0.95 * accuracy(dense, split)


def test_qat_config_errors():
    with pytest.raises(ValueError, match="QATConfig: weight must be one of"):
        QATConfig(weight="fp4")
    with pytest.raises(ValueError, match=r"Quantizer: bits must be an int in 2..8 \(got 9\)"):
        QATConfig(bits=9)
    with pytest.raises(ValueError, match="QATConfig: activations='binary' needs weight='binary'"):
        QATConfig(activations="binary")
    with pytest.raises(ValueError, match="QATConfig: learned_step needs weight='int' and granularity='channel'"):
        QATConfig(weight="binary", learned_step=True)
