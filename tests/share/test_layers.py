"""Cross-layer sharing: tied tensors (one object per group), average or first-block initialisation, parts
of BERT blocks, fine-tuning, bad input, compress_, save/load with one copy per shared tensor, and
torch.compile."""

import copy
import json
import warnings

import pytest
import torch
from torch import nn

import pycompress
from pycompress.prune.physical import count_params
from pycompress.share.layers import ShareLayersConfig, consecutive_groups, share_layers_


class _Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc1 = nn.Linear(width, 2 * width)
        self.norm = nn.BatchNorm1d(2 * width)
        self.fc2 = nn.Linear(2 * width, width)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.norm(self.fc1(x))))


class _Stack(nn.Module):
    def __init__(self, n=6, width=8):
        super().__init__()
        self.embed = nn.Linear(5, width)
        self.blocks = nn.ModuleList(_Block(width) for _ in range(n))
        self.heads = nn.ModuleList([nn.Linear(width, 3), nn.Linear(width, 3)])

    def forward(self, x):
        h = self.embed(x)
        for block in self.blocks:
            h = block(h)
        return self.heads[0](h) + self.heads[1](h)


def _stack(n=6, width=8):
    torch.manual_seed(0)
    model = _Stack(n, width)
    with torch.no_grad():
        for block in model.blocks:
            block.norm.running_mean.normal_()
            block.norm.running_var.uniform_(0.5, 2.0)
            block.norm.num_batches_tracked.fill_(int(torch.randint(1, 100, ())))
    return model.eval()


def test_consecutive_groups():
    assert consecutive_groups(6, 3) == ((0, 1), (2, 3), (4, 5))
    assert consecutive_groups(5, 2) == ((0, 1, 2), (3, 4))
    assert consecutive_groups(4, 1) == ((0, 1, 2, 3),)
    with pytest.raises(ValueError, match=r"num_shared must be an int in \[1, 4\) for 4 blocks \(got 4\)"):
        consecutive_groups(4, 4)


@pytest.mark.parametrize("init", ["average", "first"])
def test_pairs_share_one_set_of_tensors(init):
    model = _stack()
    original = copy.deepcopy(model)
    before = count_params(model)
    plan = share_layers_(model, 3, init=init)
    assert plan.stack == "blocks" and plan.groups == ((0, 1), (2, 3), (4, 5)) and plan.paths == ("",)
    per_block = count_params(model.blocks[0])
    assert (plan.params_before, plan.params_after) == (before, before - 3 * per_block) == (before, count_params(model))
    assert str(plan) == (f"blocks: 6 blocks in 3 groups share whole blocks; parameters {before:,} -> "
                         f"{before - 3 * per_block:,}")
    for a, b in ((0, 1), (2, 3), (4, 5)):
        blocks = model.blocks
        for (name, x), (_, y) in zip(blocks[a].state_dict(keep_vars=True).items(),
                                     blocks[b].state_dict(keep_vars=True).items()):
            assert x is y, name
        assert isinstance(blocks[a].fc1.weight, nn.Parameter)
        first, second = original.blocks[a], original.blocks[b]
        expected = (first.fc1.weight + second.fc1.weight) / 2 if init == "average" else first.fc1.weight
        torch.testing.assert_close(blocks[a].fc1.weight, expected, rtol=0, atol=1e-7)
        expected = (first.norm.running_var + second.norm.running_var) / 2 if init == "average" \
            else first.norm.running_var
        torch.testing.assert_close(blocks[a].norm.running_var, expected, rtol=0, atol=1e-7)
        # Integer buffers keep the first block's value.
        assert blocks[a].norm.num_batches_tracked == first.norm.num_batches_tracked
    assert model.blocks[1].fc1.weight is not model.blocks[2].fc1.weight
    assert model.heads[0].weight is not model.heads[1].weight
    # Tying with init="first" is block 0 run twice, block 2 run twice, ...
    x = torch.randn(4, 5)
    if init == "first":
        reference = copy.deepcopy(original)
        for i in (1, 3, 5):
            reference.blocks[i] = reference.blocks[i - 1]
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)
    else:
        assert (model(x) - original(x)).abs().max() > 1e-3


def test_explicit_groups_and_untouched_blocks():
    model = _stack(5)
    plan = share_layers_(model, groups=[[0, 4], [2]], blocks="blocks")
    assert plan.groups == ((0, 4),)
    assert model.blocks[0].fc2.bias is model.blocks[4].fc2.bias
    assert len({id(b.fc1.weight) for b in model.blocks}) == 4


def test_default_stack_is_the_longest_list_of_identical_blocks():
    model = _stack(4)
    model.mixed = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 6), nn.Linear(4, 4), nn.Linear(4, 4),
                                 nn.Linear(4, 4)])
    assert share_layers_(model, 2).stack == "blocks"
    model = _stack(2)
    with pytest.raises(ValueError, match=r"several stacks of 2 identical blocks \('blocks', 'heads'\); choose one"):
        share_layers_(model, 1)
    with pytest.raises(ValueError, match="has no nn.ModuleList of at least 2 blocks with the same parameters"):
        share_layers_(nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3)), 1)


def test_parts_by_submodule_name():
    model = _stack(4)
    before = count_params(model)
    plan = share_layers_(model, 2, part=("fc1", "norm"))
    assert plan.paths == ("fc1", "norm")
    assert model.blocks[0].fc1.weight is model.blocks[1].fc1.weight
    assert model.blocks[0].norm.running_mean is model.blocks[1].norm.running_mean
    assert model.blocks[0].fc2.weight is not model.blocks[1].fc2.weight
    shared = count_params(model.blocks[0].fc1) + count_params(model.blocks[0].norm)
    assert plan.params_after == before - 2 * shared


def test_a_tie_inside_the_blocks_stays():
    model = _stack(4)
    for block in model.blocks:
        block.alias = nn.Linear(8, 16, bias=False)
        block.alias.weight = block.fc1.weight
    share_layers_(model, 2)
    assert model.blocks[0].alias.weight is model.blocks[1].fc1.weight
    assert model.blocks[2].alias.weight is model.blocks[2].fc1.weight is model.blocks[3].fc1.weight


def test_bad_arguments():
    model = _stack(4)
    model.blocks[2] = _Block(6)
    with pytest.raises(ValueError, match=r"blocks blocks.0 and blocks.2 differ at 'fc1.weight' \(parameter float32 "
                                         r"\[16, 8\] on cpu vs parameter float32 \[12, 6\] on cpu\)"):
        share_layers_(model, groups=[[0, 1, 2]], blocks="blocks")
    model.blocks[2] = _Block(8)
    model.blocks[2].fc1 = nn.Linear(8, 16, bias=False)
    with pytest.raises(ValueError, match=r"blocks blocks.0 and blocks.2 differ at 'fc1.bias' \(present in only one"):
        share_layers_(model, groups=[[0, 2]], blocks="blocks")
    # Blocks 1 and 3 are alike and may share even though block 2 is not.
    share_layers_(model, groups=[[1, 3]], blocks="blocks")
    model = _stack(4)
    for kwargs, match in (
        ({}, "give exactly one of groups"),
        ({"num_shared": 2, "groups": [[0, 1]]}, "give exactly one of groups"),
        ({"num_shared": 0}, "num_shared must be an int >= 1"),
        ({"num_shared": 4}, "num_shared must be below the 4 blocks of 'blocks'"),
        ({"groups": [[0, 1], [1, 2]]}, "groups must not share a block"),
        ({"groups": [[0, 9]]}, r"groups name blocks \[9\], beyond the 4 blocks"),
        ({"groups": [[0], [1]]}, "no group holds 2 or more blocks"),
        ({"groups": [0, 1]}, "groups must be a non-empty sequence of non-empty sequences"),
        ({"num_shared": 2, "part": "mlp"}, "part must be one of block, attention, ffn"),
        ({"num_shared": 2, "part": "attention"}, r"part='attention' is not a known layout of blocks.0 \(_Block"),
        ({"num_shared": 2, "part": ("fc3",)}, "part names 'fc3', which is not a sub-module of blocks.0"),
        ({"num_shared": 2, "init": "mean"}, "init must be one of average, first"),
        ({"num_shared": 2, "blocks": "embed"}, r"blocks='embed' must name an nn.ModuleList or nn.Sequential of at "
                                               r"least 2 blocks \(got Linear\)"),
        ({"num_shared": 2, "blocks": "encoder"}, "blocks must name a submodule of the model"),
    ):
        with pytest.raises(ValueError, match=match):
            share_layers_(model, **kwargs)
    assert len({id(b.fc1.weight) for b in model.blocks}) == 4


def test_gradient_step_keeps_tied_tensors_identical():
    model = _stack(4).train()
    share_layers_(model, 2)
    # The same weights, untied: the shared tensor's gradient is the sum over the blocks that use it.
    untied = copy.deepcopy(model)
    for i in (1, 3):
        untied.blocks[i] = copy.deepcopy(untied.blocks[i])
    assert untied.blocks[0].fc1.weight is not untied.blocks[1].fc1.weight
    x, target = torch.randn(16, 5), torch.randn(16, 3)
    nn.functional.mse_loss(model(x), target).backward()
    nn.functional.mse_loss(untied(x), target).backward()
    for a, b in ((0, 1), (2, 3)):
        expected = untied.blocks[a].fc1.weight.grad + untied.blocks[b].fc1.weight.grad
        torch.testing.assert_close(model.blocks[a].fc1.weight.grad, expected)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    assert len(optimizer.param_groups[0]["params"]) == len(list(model.parameters()))
    before = model.blocks[0].fc1.weight.detach().clone()
    optimizer.step()
    assert not torch.equal(model.blocks[1].fc1.weight, before)
    assert model.blocks[0].fc1.weight is model.blocks[1].fc1.weight
    assert torch.equal(model.blocks[2].norm.running_mean, model.blocks[3].norm.running_mean)


@pytest.fixture(scope="module")
def bert_config():
    transformers = pytest.importorskip("transformers")
    return transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                   intermediate_size=48, max_position_embeddings=40)


def _bert(config, seed=0):
    from transformers import BertModel

    torch.manual_seed(seed)
    return BertModel(config).eval()


def _ids():
    g = torch.Generator().manual_seed(1)
    return torch.randint(1, 120, (2, 9), generator=g)


def test_bert_parts(bert_config):
    model = _bert(bert_config)
    layer = model.encoder.layer[0]
    attention, ffn = count_params(layer.attention), count_params(layer.intermediate) + count_params(layer.output.dense)
    before = count_params(model)
    plan = share_layers_(_bert(bert_config), 2, part="attention")
    assert plan.stack == "encoder.layer" and plan.paths == ("attention",)
    assert plan.params_after == before - 2 * attention
    plan = share_layers_(model, 2, part="ffn")
    assert plan.paths == ("intermediate", "output.dense") and plan.params_after == before - 2 * ffn
    layers = model.encoder.layer
    assert layers[0].intermediate.dense.weight is layers[1].intermediate.dense.weight
    assert layers[2].output.dense.bias is layers[3].output.dense.bias
    assert layers[0].output.LayerNorm.weight is not layers[1].output.LayerNorm.weight
    assert layers[0].attention.self.query.weight is not layers[1].attention.self.query.weight
    assert torch.isfinite(model(_ids()).last_hidden_state).all()


def test_compress_reports_the_sharing(bert_config):
    model = _bert(bert_config)
    before = count_params(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = pycompress.compress_(model, ShareLayersConfig(num_shared=2))
    assert result is model
    per_layer = count_params(model.encoder.layer[0])
    replaced = pycompress.report(model).replaced
    assert replaced["encoder.layer.1"] == "block shared with encoder.layer.0"
    assert replaced["encoder.layer.3"] == "block shared with encoder.layer.2"
    assert replaced["encoder.layer"] == (f"encoder.layer: 4 blocks in 2 groups share whole blocks; parameters "
                                         f"{before:,} -> {before - 2 * per_layer:,}")
    # filter_fn limits the stacks offered to the default search.
    with pytest.raises(ValueError, match="has no nn.ModuleList of at least 2 blocks"):
        pycompress.compress_(_bert(bert_config), ShareLayersConfig(num_shared=2),
                             filter_fn=lambda module, name: name != "encoder.layer")


def test_save_load_one_copy_per_shared_tensor(bert_config, tmp_path):
    from safetensors import safe_open

    dense = _bert(bert_config)
    pycompress.save(dense, tmp_path / "dense")
    model = _bert(bert_config)
    share_layers_(model, 2)
    ids = _ids()
    expected = model(ids).last_hidden_state
    pycompress.save(model, tmp_path / "shared")
    manifest = json.loads((tmp_path / "shared" / "pycompress.json").read_text())
    per_layer = dict(model.encoder.layer[0].named_parameters())
    assert len(manifest["ties"]) == 2 * len(per_layer)
    assert ["encoder.layer.0.attention.self.query.weight", "encoder.layer.1.attention.self.query.weight"] \
        in manifest["ties"]
    with safe_open(str(tmp_path / "shared" / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    with safe_open(str(tmp_path / "dense" / "model.safetensors"), "pt") as f:
        dense_names = set(f.keys())
    assert names == {n for n in dense_names if not n.startswith(("encoder.layer.1.", "encoder.layer.3."))}
    shared_bytes = 2 * 4 * sum(p.numel() for p in per_layer.values())
    saved = (tmp_path / "dense" / "model.safetensors").stat().st_size - \
        (tmp_path / "shared" / "model.safetensors").stat().st_size
    # The rest is the smaller header (fewer tensor names).
    assert shared_bytes <= saved < shared_bytes + 8192, (saved, shared_bytes)

    loaded = pycompress.load(tmp_path / "shared", _bert(bert_config, seed=1))
    assert loaded.encoder.layer[0].output.dense.weight is loaded.encoder.layer[1].output.dense.weight
    assert count_params(loaded) == count_params(model)
    assert torch.equal(loaded(ids).last_hidden_state, expected)


def test_load_checks_the_ties(tmp_path):
    model = _stack(4)
    share_layers_(model, 2)
    pycompress.save(model, tmp_path / "m")
    with pytest.raises(ValueError, match=r"load: model has no submodule 'blocks.3.fc1' for the tied tensor"):
        pycompress.load(tmp_path / "m", _stack(3))
    narrow = _stack(4)
    narrow.blocks[1] = _Block(6)
    with pytest.raises(ValueError, match=r"load: 'blocks.1.fc1.weight' \(parameter \[12, 6\]\) cannot be tied to "
                                         r"'blocks.0.fc1.weight' \(parameter \[16, 8\]\)"):
        pycompress.load(tmp_path / "m", narrow)


def test_save_load_keeps_other_ties_and_untied_manifests(tmp_path):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.head = nn.Linear(4, 10, bias=False)
            self.head.weight = self.embed.weight

        def forward(self, ids):
            return self.head(self.embed(ids))

    torch.manual_seed(0)
    model = Tied()
    ids = torch.tensor([1, 5, 7])
    pycompress.save(model, tmp_path / "tied")
    untied = Tied()
    untied.head.weight = nn.Parameter(torch.zeros(10, 4))
    loaded = pycompress.load(tmp_path / "tied", untied)
    assert loaded.head.weight is loaded.embed.weight
    assert torch.equal(loaded(ids), model(ids))
    # A model without ties writes the manifest as before: no "ties" entry.
    pycompress.save(nn.Linear(3, 2), tmp_path / "plain")
    assert set(json.loads((tmp_path / "plain" / "pycompress.json").read_text())) == {"manifest_version", "layers"}


def test_torch_compile_of_a_shared_model(bert_config):
    # Two layers keep the trace short; they share one set of tensors.
    config = copy.deepcopy(bert_config)
    config.num_hidden_layers = 2
    model = _bert(config)
    share_layers_(model, 1)
    ids = _ids()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(ids).last_hidden_state, model(ids).last_hidden_state)
    stack = _stack(4)
    share_layers_(stack, 2, part=("fc1",))
    x = torch.randn(3, 5)
    torch.testing.assert_close(torch.compile(stack, fullgraph=True, backend="aot_eager")(x), stack(x))
