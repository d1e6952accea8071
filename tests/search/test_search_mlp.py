"""Compression search on a small MLP: real timing of small shapes, real layer-wise errors."""

import fnmatch
import sys

import pytest
import torch
from torch import nn

import pycompress
from pycompress.lowrank.configs import LowRankConfig
from pycompress.prune.configs import SparseConfig
from pycompress.prune.physical import StructuredPruneConfig
from pycompress.quant.configs import Int8Config
from pycompress.recipe.stages import StageContext, stage_type
from pycompress.search import (Budget, QualityModel, SearchSpace, apply_searched, relative_error, search)
from pycompress.search import latency as latency_module
from pycompress.search.space import analyze, module_bytes

SPACE = SearchSpace(options=(Int8Config(), SparseConfig(sparsity=0.9, method="wanda", min_speedup=None),
                             LowRankConfig(rank=0.125, method="activation_scaled"),
                             LowRankConfig(rank=0.5, method="activation_scaled")))


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 768), nn.GELU(), nn.Linear(768, 256), nn.GELU(), nn.Linear(256, 768),
                         nn.GELU(), nn.Linear(768, 64)).eval()


def _data():
    g = torch.Generator().manual_seed(1)
    # Inputs with a decaying spectrum, like real activations, so that low rank is not hopeless.
    basis = torch.randn(256, 256, generator=g) * torch.logspace(0, -2, 256).unsqueeze(1)
    calibration = [torch.randn(256, 256, generator=g) @ basis for _ in range(2)]
    return calibration, torch.randn(512, 256, generator=g) @ basis


def _apply(model, recipe, calibration):
    """A recipe applied stage by stage: compress_ on the modules the pattern matches."""
    for stage in recipe.stages:
        kind = stage_type(type(stage.config))
        if kind is not None:
            kind.run(model, stage, StageContext(calibration=calibration))
        else:
            pycompress.compress_(model, stage.config, calibration=calibration,
                                 filter_fn=lambda m, name, p=stage.pattern: fnmatch.fnmatchcase(name, p))
    return model


class _Counter:
    def __init__(self):
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return _REAL_TIME(*args, **kwargs)


_REAL_TIME = latency_module.time_interleaved


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    cache = tmp_path_factory.mktemp("latency")
    calibration, example = _data()
    model = _mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    counter = _Counter()
    latency_module.time_interleaved = counter
    try:
        result = search(model, calibration=calibration, example_inputs=example, budget=Budget(latency=0.7),
                        space=SPACE, cache_dir=cache, progress=False)
    finally:
        latency_module.time_interleaved = _REAL_TIME
    unchanged = all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    return dict(model=model, calibration=calibration, example=example, result=result, cache=cache,
                first_timings=counter.calls, unchanged=unchanged)


def test_greedy_meets_budget_and_leaves_model_unchanged(searched):
    result = searched["result"]
    assert searched["unchanged"]
    assert searched["first_timings"] > 0
    assert result.predicted_latency_s <= 0.7 * result.dense_latency_s
    assert result.predicted_latency_s < result.dense_latency_s and result.error > 0
    assert result.recipe.stages, "a 0.7 budget needs at least one compressed layer"
    chosen = [c for c in result.candidates if c.assignment == result.assignment]
    assert len(chosen) == 1 and chosen[0].feasible and chosen[0].error == result.error


def test_recipe_applies_and_predicted_size_is_exact(searched):
    result, model, calibration = searched["result"], searched["model"], searched["calibration"]
    compressed = _apply(_mlp(), result.recipe, calibration)
    for stage in result.recipe.stages:
        assert type(compressed.get_submodule(stage.pattern)) is not nn.Linear, stage
    assert module_bytes(compressed) == result.predicted_size_bytes
    assert module_bytes(model) == result.dense_size_bytes
    # The package's own application gives the same model.
    again = apply_searched(model, result.recipe, calibration)
    x = torch.cat(calibration)
    with torch.no_grad():
        assert torch.allclose(again(x), compressed(x), atol=1e-5)
        # The error proxy estimates the squared relative output error on the calibration data.
        end_to_end = relative_error([model(x)], [compressed(x)]) ** 2
    assert 0.5 < end_to_end / result.error < 2, (end_to_end, result.error)


def test_second_search_is_a_cache_hit(searched):
    counter = _Counter()
    latency_module.time_interleaved = counter
    try:
        again = search(searched["model"], calibration=searched["calibration"], example_inputs=searched["example"],
                       budget=Budget(latency=0.7), space=SPACE, cache_dir=searched["cache"], progress=False)
    finally:
        latency_module.time_interleaved = _REAL_TIME
    assert counter.calls == 0
    assert again.assignment == searched["result"].assignment
    assert again.predicted_latency_s == searched["result"].predicted_latency_s


def test_pareto_front_is_non_dominated(searched):
    result = searched["result"]
    front = result.pareto
    assert front and all(c in result.candidates for c in front)
    for c in front:
        assert not any(o.latency_s <= c.latency_s and o.error <= c.error and (o.latency_s, o.error) != (c.latency_s, c.error)
                       for o in result.candidates)
    dominated = [c for c in result.candidates if c not in front]
    for c in dominated:
        assert any(o.latency_s <= c.latency_s and o.error <= c.error for o in front)


def test_evolutionary_is_deterministic_and_no_worse_than_greedy(searched):
    kwargs = dict(calibration=searched["calibration"], example_inputs=searched["example"], budget=Budget(latency=0.7),
                  space=SPACE, cache_dir=searched["cache"], progress=False, strategy="evolutionary")
    a = search(searched["model"], seed=3, **kwargs)
    b = search(searched["model"], seed=3, **kwargs)
    assert a.assignment == b.assignment and a.error == b.error
    assert a.error <= searched["result"].error + 1e-12
    assert a.predicted_latency_s <= 0.7 * a.dense_latency_s
    assert len(a.candidates) > len(searched["result"].candidates)


def test_size_budget(searched):
    result = search(searched["model"], calibration=searched["calibration"], example_inputs=searched["example"],
                    budget=Budget(size=0.3), space=SPACE, cache_dir=searched["cache"], progress=False)
    assert result.predicted_size_bytes <= 0.3 * result.dense_size_bytes
    compressed = _apply(_mlp(), result.recipe, searched["calibration"])
    assert module_bytes(compressed) == result.predicted_size_bytes


def test_unreachable_budget_names_the_minimum(searched):
    with pytest.raises(ValueError, match=r"Budget\(latency=0.02\).*minimum reachable in this search space is"):
        search(searched["model"], calibration=searched["calibration"], example_inputs=searched["example"],
               budget=Budget(latency=0.02), space=SPACE, cache_dir=searched["cache"], progress=False)
    with pytest.raises(ValueError, match=r"size.*minimum reachable"):
        search(searched["model"], calibration=searched["calibration"], example_inputs=searched["example"],
               budget=Budget(size_bytes=1000), space=SPACE, cache_dir=searched["cache"], progress=False)


def test_layer_and_output_errors(searched):
    model, calibration = searched["model"], searched["calibration"]
    ms = analyze(model, searched["example"], SPACE)
    quality = QualityModel(model, calibration, ms)
    site = ms.sites[0]
    low, high = (quality.layer_error(site, LowRankConfig(rank=f, method="activation_scaled")) for f in (0.125, 0.5))
    int8 = quality.layer_error(site, Int8Config())
    assert 0 < int8 < 0.05 and 0 < high < low < 1
    # Both errors are those of the real compressed layer, on the layer's calibration inputs (the model's
    # inputs) and at the model's output.
    compressed = pycompress.compress_(_mlp(), Int8Config(), filter_fn=lambda m, name: name == "0")
    x = torch.cat(calibration)
    with torch.no_grad():
        assert int8 == pytest.approx(relative_error([model[0](x)], [compressed[0](x)]), rel=1e-4)
        output = relative_error([model(x)], [compressed(x)]) ** 2
    assert quality.output_error_of(site, Int8Config()) == pytest.approx(output, rel=1e-4)
    quality.release(site)
    with pytest.raises(ValueError, match="ask layer_error first"):
        quality.output_error_of(ms.sites[1], Int8Config())


def test_plot(searched, tmp_path, monkeypatch):
    result = searched["result"]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install matplotlib"):
            result.plot(tmp_path / "search.png")
        return
    path = result.plot(tmp_path / "search.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        result.plot(tmp_path / "again.png")


def test_bad_arguments(searched):
    model, calibration, example = searched["model"], searched["calibration"], searched["example"]
    ok = dict(calibration=calibration, example_inputs=example, budget=Budget(latency=0.7), space=SPACE,
              cache_dir=searched["cache"], progress=False)
    with pytest.raises(ValueError, match="strategy must be one of greedy, evolutionary"):
        search(model, **{**ok, "strategy": "random"})
    with pytest.raises(ValueError, match="calibration must be a non-empty list"):
        search(model, **{**ok, "calibration": []})
    with pytest.raises(ValueError, match="calibration must be a non-empty list"):
        search(model, **{**ok, "calibration": iter(calibration)})
    with pytest.raises(TypeError, match="budget must be a Budget"):
        search(model, **{**ok, "budget": 0.5})
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        search("model", **ok)
    with pytest.raises(TypeError, match="fidelity must be None or a callable"):
        search(model, **{**ok, "fidelity": 0.9})
    with pytest.raises(TypeError, match="fidelity must return a finite number"):
        search(model, **{**ok, "fidelity": lambda m: float("nan")})
    with pytest.raises(ValueError, match="evaluations must be a positive int"):
        search(model, **{**ok, "evaluations": 0})


def test_budget_and_space_validation():
    with pytest.raises(ValueError, match="at least one of"):
        Budget()
    with pytest.raises(ValueError, match="latency must be a fraction"):
        Budget(latency=1.5)
    with pytest.raises(ValueError, match="not both"):
        Budget(latency=0.5, latency_s=0.1)
    with pytest.raises(ValueError, match="size_bytes must be a positive int"):
        Budget(size_bytes=True)
    with pytest.raises(ValueError, match="latency_s must be a positive number"):
        Budget(latency_s=-1.0)
    assert Budget(latency=0.5).limits(2.0, 100) == {"latency": 1.0}
    assert Budget(latency_s=0.3, size=0.5).limits(2.0, 100) == {"latency": 0.3, "size": 50.0}
    with pytest.raises(TypeError, match="per-layer compress_ configs"):
        SearchSpace(options=(StructuredPruneConfig(amount=0.5, target="ffn"),))
    with pytest.raises(TypeError, match="per-layer compress_ configs"):
        SearchSpace(options=("int8",))
    with pytest.raises(ValueError, match="must not repeat"):
        SearchSpace(options=(Int8Config(), Int8Config()))
    with pytest.raises(ValueError, match="head_amounts must be a tuple of fractions"):
        SearchSpace(head_amounts=(1.5,))
    with pytest.raises(ValueError, match="max_removed_blocks must be a fraction"):
        SearchSpace(max_removed_blocks=1)
