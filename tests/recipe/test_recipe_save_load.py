"""Save once, load back bit for bit, also when compression changed the structure: pruned heads, FFN
neurons and channels, removed blocks, shared blocks and factorized embeddings load into a fresh model of
the original architecture."""

import json
import types
import warnings

import pytest
import torch
from torch import nn

import pycompress
from pycompress import (FactorizedEmbeddingConfig, Int8Config, ShareLayersConfig, Sparse24Config,
                        StructuredPruneConfig)
from pycompress.recipe import (PruneLayersConfig, Recipe, Stage, apply_recipe, load_compressed, save_compressed,
                               saved_recipe, saved_source)

from _recipe_case import bert_batches, mlp, mlp_batches, tiny_bert

pytest.importorskip("transformers")

RECIPES = {
    "heads": [Stage(StructuredPruneConfig(amount=0.5, target="heads", importance="data"))],
    "ffn": [Stage(StructuredPruneConfig(amount=0.3, target="ffn", round_to=4))],
    "layers": [Stage(PruneLayersConfig(n=2))],
    "sharing": [Stage(ShareLayersConfig(num_shared=2))],
    "ffn-24-int8": [Stage(StructuredPruneConfig(amount=0.25, target="ffn")),
                    Stage(Sparse24Config(min_speedup=None), pattern="encoder.layer.*.intermediate.dense"),
                    Stage(Int8Config())],
    "layers-heads-embedding-int8": [Stage(PruneLayersConfig(remove=(0, 2))),
                                    Stage(StructuredPruneConfig(amount=0.5, target="heads")),
                                    Stage(FactorizedEmbeddingConfig(dim=8)),
                                    Stage(Int8Config(), pattern="encoder.layer.1.*")],
}


def _compressed(name: str):
    recipe = Recipe(RECIPES[name], name=name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return apply_recipe(tiny_bert(), recipe, calibration=bert_batches(), progress=False).model, recipe


def _outputs(model) -> list:
    with torch.no_grad():
        return [model(**batch).last_hidden_state for batch in bert_batches(3, seed=7)]


@pytest.mark.parametrize("name", list(RECIPES))
def test_save_once_load_bit_exact_into_a_fresh_model(name, tmp_path):
    model, recipe = _compressed(name)
    expected = _outputs(model)
    save_compressed(model, tmp_path, recipe=recipe)
    fresh = tiny_bert(seed=3)
    loaded = load_compressed(tmp_path, fresh)
    assert loaded is fresh
    assert all(torch.equal(a, b) for a, b in zip(_outputs(loaded), expected))
    assert {k: tuple(v.shape) for k, v in loaded.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert loaded.config.num_hidden_layers == model.config.num_hidden_layers == len(loaded.encoder.layer)
    assert saved_recipe(tmp_path) == recipe


def test_the_structure_is_what_makes_a_pruned_model_load(tmp_path):
    model, recipe = _compressed("heads")
    save_compressed(model, tmp_path, recipe=recipe)
    manifest = json.loads((tmp_path / "pycompress.json").read_text())
    attention = manifest["structure"]["modules"]["encoder.layer.0.attention.self"]
    assert attention["num_attention_heads"] == 2 and attention["all_head_size"] == 16
    assert manifest["structure"]["stacks"] == {"encoder.layer": 4}
    del manifest["structure"]
    (tmp_path / "pycompress.json").write_text(json.dumps(manifest))
    with pytest.raises(RuntimeError, match="size mismatch"):
        pycompress.load(tmp_path, tiny_bert())


def test_manifests_without_structure_still_load(tmp_path):
    model = pycompress.compress_(tiny_bert(), Int8Config())
    pycompress.save(model, tmp_path)
    manifest = json.loads((tmp_path / "pycompress.json").read_text())
    del manifest["structure"]
    (tmp_path / "pycompress.json").write_text(json.dumps(manifest))
    assert all(torch.equal(a, b) for a, b in zip(_outputs(pycompress.load(tmp_path, tiny_bert(seed=2))),
                                                 _outputs(model)))


def test_a_stack_shorter_than_saved_is_an_error(tmp_path):
    model, _ = _compressed("layers")
    save_compressed(model, tmp_path)
    short = tiny_bert()
    del short.encoder.layer[1:]
    with pytest.raises(ValueError, match=r"load: 'encoder.layer' holds 1 modules, fewer than the 2 saved in .*; load "
                                         r"into the original \(uncompressed\) architecture"):
        load_compressed(tmp_path, short)


def test_a_single_packed_layer_loads_as_its_replacement(tmp_path):
    layer = pycompress.compress_(nn.Linear(32, 16), Int8Config())
    pycompress.save(layer, tmp_path)
    assert set(json.loads((tmp_path / "pycompress.json").read_text())) == {"manifest_version", "layers"}
    loaded = pycompress.load(tmp_path, nn.Linear(32, 16))
    x = torch.randn(3, 32)
    assert isinstance(loaded, pycompress.Int8Linear) and torch.equal(loaded(x), layer(x))


def test_load_compressed_builds_the_model_from_its_source(tmp_path, monkeypatch):
    import pycompress.models

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = apply_recipe(mlp(), Recipe([Stage(StructuredPruneConfig(amount=0.5), pattern="[02]"),
                                             Stage(Int8Config())]), calibration=mlp_batches(), progress=False)
    save_compressed(report.model, tmp_path / "with", source="tests:mlp")
    save_compressed(report.model, tmp_path / "without")
    assert saved_source(tmp_path / "with") == "tests:mlp" and saved_recipe(tmp_path / "without") is None
    built = []

    def load_model_spec(spec):
        built.append(spec)
        return types.SimpleNamespace(model=mlp(seed=9))

    monkeypatch.setattr(pycompress.models, "load_model_spec", load_model_spec, raising=False)
    loaded = load_compressed(tmp_path / "with")
    assert built == ["tests:mlp"]
    assert all(torch.equal(loaded(x), report.model(x)) for x in mlp_batches())
    with pytest.raises(ValueError, match=r"saved_source: .*records no source model"):
        load_compressed(tmp_path / "without")
    with pytest.raises(FileNotFoundError, match="load_compressed: path must be a directory written by save_compressed"):
        load_compressed(tmp_path / "missing", mlp())


def test_save_compressed_checks_its_arguments_and_drops_a_stale_recipe(tmp_path):
    model = mlp()
    recipe = Recipe([Stage(Int8Config())])
    save_compressed(model, tmp_path, recipe=recipe)
    assert saved_recipe(tmp_path) == recipe
    save_compressed(model, tmp_path)
    assert saved_recipe(tmp_path) is None
    with pytest.raises(TypeError, match="save_compressed: recipe must be None or a pycompress.recipe.Recipe"):
        save_compressed(model, tmp_path, recipe="r.yaml")
    with pytest.raises(TypeError, match="save: source must be None or a non-empty string"):
        save_compressed(model, tmp_path, source=3)
    with pytest.raises(TypeError, match="save_compressed: model must be an nn.Module"):
        save_compressed("model", tmp_path)
