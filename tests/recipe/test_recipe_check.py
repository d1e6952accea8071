"""check_recipe: each compatibility rule rejects before anything runs (the model is left untouched), with
the stage, the layers and the reason; what is allowed runs."""

import re
import warnings

import pytest
import torch
from torch import nn

import pycompress
from pycompress import (BinaryConfig, ClusterConfig, FactorizedEmbeddingConfig, Int8Config, Int8StaticConfig,
                        Int8WeightOnlyConfig, LowRankConfig, MixedPrecisionConfig, SeparableConvConfig,
                        ShareLayersConfig, Sparse24Config, SparseConfig, StructuredPruneConfig, TernaryConfig)
from pycompress.recipe import PruneLayersConfig, Recipe, RecipeError, Stage, apply_recipe, check_recipe
from pycompress.recipe.check import _OUTPUTS, trainable

from _recipe_case import FakeTrainConfig, bert_batches, mlp_batches, same, snapshot, tiny_bert

pytest.importorskip("transformers")

FFN_IN = "encoder.layer.*.intermediate.dense"


def _rejected(model, stages, *, match: str, **kwargs) -> str:
    """The RecipeError of apply_recipe, after checking that the model is exactly as it was."""
    before = snapshot(model)
    with pytest.raises(RecipeError) as info:
        apply_recipe(model, Recipe(stages), progress=False, **kwargs)
    assert same(before, snapshot(model)), "a rejected recipe changed the model"
    message = str(info.value)
    assert re.search(match, message), message
    return message


def test_a_pattern_must_match_a_module_the_config_applies_to():
    model = tiny_bert()
    _rejected(model, [Stage(Int8Config()), Stage(Int8Config(), pattern="decoder.*", name="q")],
              match=r"^check_recipe: stage 1 'q': pattern 'decoder\.\*' matches no module of the model")
    _rejected(model, [Stage(Int8Config(), pattern="*.LayerNorm")],
              match=r"stage 0 'Int8Config': pattern '\*\.LayerNorm' matches 'embeddings.LayerNorm', .* and 5 more, "
                    r"none of which Int8Config applies to")
    _rejected(model, [Stage(FakeTrainConfig(), pattern="nothing.here")], train_data=[],
              match=r"stage 0 'FakeTrainConfig': pattern 'nothing.here' matches no module")


def test_a_config_must_be_registered():
    class NotAConfig:
        pass

    _rejected(tiny_bert(), [Stage(Int8Config()), Stage(NotAConfig())],
              match=r"stage 1 'NotAConfig': NotAConfig is neither a compress_ config \(pycompress.register_handler\) "
                    r"nor a registered stage type")


@pytest.mark.parametrize("first, second, fmt", [
    (LowRankConfig(rank=4), Sparse24Config(), r"lowrank \(LowRankLinear\)"),
    (Sparse24Config(), Int8Config(), r"sparse24 \(Sparse24Linear\)"),
    (Int8Config(), ClusterConfig(bits=4), r"int8 \(Int8Linear\)"),
])
def test_an_explicit_pattern_cannot_pack_a_layer_twice(first, second, fmt):
    message = _rejected(tiny_bert(), [Stage(first, pattern=FFN_IN, name="a"), Stage(second, pattern="encoder.layer.1.*",
                                                                                     name="b")],
                        match=rf"^check_recipe: stage 1 'b': pattern 'encoder.layer.1.\*' names layers that an earlier "
                              rf"stage packs: stage 0 'a' packs 'encoder.layer.1.intermediate.dense' into {fmt}")
    assert "pattern None offers only the layers still dense" in message


def test_everything_stages_take_the_layers_left_dense():
    model = tiny_bert()
    batch = bert_batches(1)[0]
    report = apply_recipe(model, Recipe([Stage(Sparse24Config(min_speedup=None), pattern=FFN_IN),
                                         Stage(Int8Config(), pattern="encoder.layer.0.attention.*"),
                                         Stage(Int8WeightOnlyConfig())]), progress=False)
    layers = dict(report.model.named_modules())
    assert type(layers["encoder.layer.2.intermediate.dense"]).__name__ == "Sparse24Linear"
    assert type(layers["encoder.layer.0.attention.self.key"]).__name__ == "Int8Linear"
    assert type(layers["encoder.layer.2.attention.self.key"]).__name__ == "WeightOnlyInt8Linear"
    assert len(report.stages[0].replaced) == 4 and len(report.stages[1].replaced) == 4
    assert len(report.stages[2].replaced) == 4 * 6 + 1 - 8
    assert torch.isfinite(report.model(**batch).last_hidden_state).all()


def test_training_cannot_follow_formats_without_trainable_weights():
    _rejected(tiny_bert(), [Stage(Sparse24Config(), pattern=FFN_IN, name="24"), Stage(FakeTrainConfig(), name="train")],
              train_data=[],
              match=r"^check_recipe: stage 1 'train': FakeTrainConfig trains, but stage 0 '24' packs "
                    r"'encoder.layer.0.intermediate.dense', .* into sparse24 \(Sparse24Linear\), which hold no "
                    r"trainable weights; train before those stages")
    # Low-rank factors and codebooks train.
    check_recipe(tiny_bert(), Recipe([Stage(LowRankConfig(rank=4), pattern=FFN_IN), Stage(ClusterConfig(bits=4)),
                                      Stage(FakeTrainConfig())]))


@pytest.mark.parametrize("structural, reshaped", [
    (StructuredPruneConfig(amount=0.5, target="heads"), r"StructuredPruneConfig\(target='heads'\) reshapes "
                                                        r"'encoder.layer.0.attention.self.query'"),
    (StructuredPruneConfig(amount=0.5, target="ffn"), r"StructuredPruneConfig\(target='ffn'\) reshapes "
                                                      r"'encoder.layer.0.intermediate.dense'"),
    (ShareLayersConfig(num_shared=2), r"ShareLayersConfig reshapes 'encoder.layer.0', 'encoder.layer.1'"),
    (PruneLayersConfig(remove=(3,)), r"PruneLayersConfig reshapes 'encoder.layer'"),
])
def test_structural_stages_cannot_follow_packing_of_their_layers(structural, reshaped):
    _rejected(tiny_bert(), [Stage(Int8Config(), pattern="encoder.layer.1.*", name="q"), Stage(structural, name="s")],
              match=rf"^check_recipe: stage 1 's': {reshaped}.*, but earlier stages pack layers among them: "
                    r"stage 0 'q' packs 'encoder.layer.1.[a-z.]+', .* into int8 \(Int8Linear\); structural stages "
                    r"must come before")


def test_structural_stages_may_follow_packing_of_other_layers():
    model = tiny_bert()
    batch = bert_batches(1)[0]
    report = apply_recipe(model, Recipe([Stage(Int8Config(), pattern="encoder.layer.*.attention.*"),
                                         Stage(StructuredPruneConfig(amount=0.5, target="ffn")),
                                         Stage(ShareLayersConfig(num_shared=2, part="ffn"))]), progress=False)
    layers = report.model.encoder.layer
    assert layers[0].intermediate.dense.out_features == 32
    assert layers[0].intermediate.dense.weight is layers[1].intermediate.dense.weight
    assert torch.isfinite(report.model(**batch).last_hidden_state).all()


def test_channel_pruning_must_come_before_any_packing():
    _rejected(tiny_bert(), [Stage(Int8Config(), pattern="pooler.dense", name="q"),
                            Stage(StructuredPruneConfig(amount=0.5), name="c")], calibration=mlp_batches(1),
              match=r"stage 1 'c': StructuredPruneConfig\(target='channels'\) may reshape any layer .*known only by "
                    r"tracing the model.*stage 0 'q' packs 'pooler.dense' into int8")


def test_heads_and_ffn_pruning_take_no_pattern_and_need_bert_blocks():
    _rejected(tiny_bert(), [Stage(StructuredPruneConfig(amount=0.5, target="heads"), pattern="encoder.layer.0.*")],
              match=r"target='heads' prunes every BERT-style block; a pattern cannot limit it")
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))
    _rejected(mlp, [Stage(StructuredPruneConfig(amount=0.5, target="ffn"))],
              match=r"stage 0 'StructuredPruneConfig': StructuredPruneConfig\(target='ffn'\): the model has no "
                    r"BERT-style FFN")


def test_layer_removal_renumbers_the_blocks_for_later_patterns():
    model = tiny_bert()
    _rejected(model, [Stage(PruneLayersConfig(n=1)), Stage(Int8Config(), pattern="encoder.layer.3.*")],
              calibration=bert_batches(1),
              match=r"stage 1 'Int8Config': pattern 'encoder.layer.3.\*' matches no module")
    _rejected(model, [Stage(PruneLayersConfig(remove=(0, 1, 2, 3)))],
              match=r"stage 0 'PruneLayersConfig': PruneLayersConfig: removing 4 of the 4 blocks of 'encoder.layer' "
                    r"leaves none")
    _rejected(model, [Stage(PruneLayersConfig(remove=(5,)))],
              match=r"remove names blocks \[5\], beyond the 4 blocks of 'encoder.layer'")
    _rejected(model, [Stage(PruneLayersConfig(n=1, blocks="encoder.layers"))],
              match=r"blocks='encoder.layers' names no submodule of the model")
    report = apply_recipe(model, Recipe([Stage(PruneLayersConfig(remove=(1,))),
                                         Stage(Int8Config(), pattern="encoder.layer.2.*")]), progress=False)
    assert report.stages[0].summary == {"removed": [1], "blocks": "4 -> 3"}
    assert model.config.num_hidden_layers == 3
    assert sorted(report.stages[1].replaced) == [f"encoder.layer.2.{n}" for n in (
        "attention.output.dense", "attention.self.key", "attention.self.query", "attention.self.value",
        "intermediate.dense", "output.dense")]


def test_sharing_checks_its_groups_against_the_blocks_left():
    _rejected(tiny_bert(), [Stage(PruneLayersConfig(n=2)), Stage(ShareLayersConfig(groups=[[0, 1], [2, 3]]))],
              calibration=bert_batches(1), match=r"stage 1 'ShareLayersConfig': ShareLayersConfig: groups name blocks "
                                                 r"\[2, 3\], beyond the 2 blocks of 'encoder.layer'")


def test_stage_names_must_be_unique_and_unnamed_stages_are_numbered():
    _rejected(tiny_bert(), [Stage(Int8Config(), name="a"), Stage(Int8WeightOnlyConfig(), name="a")],
              match=r"stage names must be unique \('a' given to several stages\)")
    report = apply_recipe(tiny_bert(), Recipe([Stage(Int8Config(), pattern="encoder.layer.0.*"),
                                               Stage(Int8Config(), pattern="encoder.layer.1.*")]), progress=False)
    assert [s.name for s in report.stages] == ["Int8Config", "Int8Config-2"]


def test_bad_arguments():
    with pytest.raises(TypeError, match="check_recipe: model must be an nn.Module"):
        check_recipe("model", Recipe([Stage(Int8Config())]))
    with pytest.raises(TypeError, match="check_recipe: recipe must be a pycompress.recipe.Recipe"):
        check_recipe(tiny_bert(), [Stage(Int8Config())])
    with pytest.raises(RecipeError, match="check_recipe: recipe 'r' has no stages"):
        check_recipe(tiny_bert(), Recipe([], name="r"))


class _Parts(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(32, 16)
        self.conv = nn.Conv2d(4, 8, 3)
        self.embed = nn.Embedding(40, 16)


_PACKING = [Int8Config(), Int8StaticConfig(), Int8WeightOnlyConfig(), BinaryConfig(), TernaryConfig(),
            Sparse24Config(min_speedup=None), SparseConfig(sparsity=0.5, min_speedup=None), LowRankConfig(rank=2),
            ClusterConfig(bits=2, iters=2), SeparableConvConfig(multiplier=1), FactorizedEmbeddingConfig(dim=4),
            MixedPrecisionConfig(plan={"fc": 4})]


@pytest.mark.parametrize("config", _PACKING, ids=lambda c: type(c).__name__)
def test_the_check_predicts_each_format_and_whether_it_trains(config):
    # The check's table says what compress_ turns each layer into; here compress_ runs and both are compared,
    # and trainable() is compared with the packed module's parameters.
    torch.manual_seed(0)
    model = _Parts()
    original = dict(model.named_modules())
    calibration = [(torch.randn(2, 32), torch.randn(2, 4, 6, 6), torch.randint(0, 40, (2, 3)))]

    def forward(fc_in, conv_in, ids):
        return model.fc(fc_in), model.conv(conv_in), model.embed(ids)

    model.forward = forward
    handler = pycompress.api._HANDLERS[type(config)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pycompress.compress_(model, config, calibration=calibration)
    packed = 0
    for name, before in original.items():
        if not name or not handler.applies(before):
            continue
        after = model.get_submodule(name)
        predicted = _OUTPUTS[type(config)](before, config, name)
        if after is before:
            assert predicted is None or pycompress.report(model).skipped.get(name), name
            continue
        assert type(after) is predicted, (name, type(after), predicted)
        assert trainable(predicted) == any(p.requires_grad for p in after.parameters()), name
        packed += 1
    assert packed >= 1
