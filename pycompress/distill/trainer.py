"""Knowledge distillation (and plain supervised training) with one training loop.

    student = distill(student, teacher, batches, DistillConfig(steps=300, lr=1e-4))
    model = train(model, batches, loss_fn, TrainConfig(steps=100))

``data`` is an iterable of batches, iterated again for every epoch: a tensor (the model's input), an
``(inputs, labels)`` pair, or a dict of tensors passed as keyword arguments (Hugging Face style; a
``"labels"`` entry is taken out and used as the hard labels).

What the student learns from depends on what the models return:

- logits (a tensor, or an output with ``.logits``): alpha * T^2 KL(teacher || student) + (1 - alpha) * CE
  with the labels (``DistillationLoss``);
- an encoder output without logits (``.last_hidden_state``): feature distillation of the last hidden state
  over the real tokens (``attention_mask``), through a learned projection when the widths differ.

With ``layer_map`` set, intermediate layers are matched too: student layer i learns from teacher layer
round_half_up((i + 1) * Lt / Ls) - 1 ("uniform"), or from the teacher layers listed, weighted by
``feature_weight`` (hidden states) and ``attention_weight`` (attention maps). Dict batches are then called
with ``output_hidden_states=True`` / ``output_attentions=True``; other models must return ``hidden_states`` /
``attentions`` themselves. Hugging Face models that use SDPA attention return no attention maps: load them
with ``attn_implementation="eager"`` to distil attention.

The teacher runs in eval mode under no_grad; the student is trained with AdamW (weight decay on matrices
only, not on biases and norms), ``grad_accum`` micro-batches per optimizer step, gradient clipping, and
mixed precision per ``amp``: "auto" is float16 with a GradScaler on CUDA and bfloat16 on a CPU with native
bfloat16 (AVX512-BF16 or AMX; elsewhere bfloat16 is emulated and slower than float32, so "auto" stays in
float32); "bf16" and "fp16" force the type; None trains in the models' own dtype.

Checkpoints (student, projection heads, optimizer, schedule, scaler, step and every rank's RNG state) are
written every ``checkpoint_every`` steps and at the end, atomically (a temporary file renamed into place).
With ``resume=True`` training continues from the latest one, skipping the batches already seen, so that an
interrupted run ends with the same weights as an uninterrupted one (bit for bit on CPU when the batch order
does not depend on the global RNG: a list, or a DataLoader given its own generator).

Distributed: when torch.distributed is initialized with more than one rank, the student (with the
projection heads) is wrapped in DistributedDataParallel, rank r trains on batches r, r + w, r + 2w, ... of
each epoch (an incomplete last round is dropped so that every rank takes the same number of steps), only
rank 0 writes checkpoints and shows progress, and the RNG is seeded with ``seed + rank``. Parameters the
loss does not reach (e.g. a BERT pooler under feature distillation) are found on the first batch and DDP
is told about them (``find_unused_parameters``) only when there are some.

FSDP2 (``torch.distributed.fsdp.fully_shard``) and compressed modules:
Tried on 2 CPU ranks (gloo, torch 2.13) with per-layer fully_shard groups and a plain AdamW loop:
QAT models (prepare_qat: int8, LSQ 4-bit, binary) train sharded and match one process on the same data
to 7e-8; the packed modules (Int8Linear, WeightOnlyInt8Linear) keep their int8 weights in buffers,
which FSDP2 does not shard (every rank holds the whole packed weight, only float parameters such as
the bias are sharded) and run inference exactly as unsharded; tensors tied by share_layers_ must sit in
one FSDP group: FSDP2 refuses ties across groups, and with fully_shard on the common parent of the tied
blocks they train and stay tied. This loop does not drive FSDP: it wraps the student in DDP
and checkpoints full state dicts from rank 0, so a student already sharded with fully_shard (or wrapped
in FullyShardedDataParallel) is refused with an error, not half-trained.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import itertools
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from pycompress.distill.loss import FEATURE_LOSSES, DistillationLoss, FeatureDistillation, \
    _check_temperature, attention_distillation_loss

AMP_MODES = ("auto", "bf16", "fp16", None)
SCHEDULES = ("constant", "linear", "cosine")
LAYER_MAPS = (None, "uniform")
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)\.pt$")
# Fields that change neither the weights nor the batch order: a run may resume with other values.
_BOOKKEEPING = ("checkpoint_every", "keep_checkpoints", "log_every")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The training loop. ``steps``: optimizer steps, each over ``grad_accum`` micro-batches. ``lr`` peaks
    after ``warmup_steps`` of linear warm-up, then follows ``schedule`` ("constant", "linear" or "cosine"
    decay to 0 at ``steps``). ``max_grad_norm``: clip the global gradient norm (None: no clipping).
    ``amp``: "auto", "bf16", "fp16" or None (module docstring). ``checkpoint_every``: steps between
    checkpoints (None: only the final one), keeping the last ``keep_checkpoints``. ``log_every``: steps
    between progress/history updates. ``seed``: seeds the RNG for the run (the caller's RNG state is
    restored afterwards); None leaves the RNG alone."""

    steps: int = 100
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 0
    schedule: str = "constant"
    max_grad_norm: Optional[float] = 1.0
    grad_accum: int = 1
    amp: Optional[str] = "auto"
    checkpoint_every: Optional[int] = 100
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: Optional[int] = 0

    def __post_init__(self):
        name = type(self).__name__
        for field in ("steps", "grad_accum", "log_every", "keep_checkpoints"):
            value = getattr(self, field)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name}: {field} must be an int >= 1 (got {value!r})")
        if not _is_int(self.warmup_steps) or not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(f"{name}: warmup_steps must be an int in [0, steps={self.steps}] "
                             f"(got {self.warmup_steps!r})")
        if self.checkpoint_every is not None and (not _is_int(self.checkpoint_every) or self.checkpoint_every < 1):
            raise ValueError(f"{name}: checkpoint_every must be None or an int >= 1 (got {self.checkpoint_every!r})")
        if not _is_number(self.lr) or not self.lr > 0:
            raise ValueError(f"{name}: lr must be a number > 0 (got {self.lr!r})")
        if not _is_number(self.weight_decay) or not self.weight_decay >= 0:
            raise ValueError(f"{name}: weight_decay must be a number >= 0 (got {self.weight_decay!r})")
        if self.max_grad_norm is not None and (not _is_number(self.max_grad_norm) or not self.max_grad_norm > 0):
            raise ValueError(f"{name}: max_grad_norm must be None or a number > 0 (got {self.max_grad_norm!r})")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"{name}: schedule must be one of {', '.join(SCHEDULES)} (got {self.schedule!r})")
        if self.amp not in AMP_MODES:
            raise ValueError(f"{name}: amp must be one of 'auto', 'bf16', 'fp16' or None (got {self.amp!r})")
        if self.seed is not None and not _is_int(self.seed):
            raise ValueError(f"{name}: seed must be None or an int (got {self.seed!r})")


@dataclasses.dataclass(frozen=True)
class DistillConfig(TrainConfig):
    """TrainConfig plus what the student learns from (module docstring). ``temperature`` and ``alpha``:
    the soft-target loss on logits (alpha = 1: no hard labels). ``feature_loss``: "mse" or "cosine" for
    hidden states. ``layer_map``: None (outputs only), "uniform", or a tuple giving the teacher layer
    (0-based) each student layer learns from. ``feature_weight`` / ``attention_weight``: weights of the
    mapped layers' hidden-state and attention losses."""

    temperature: float = 4.0
    alpha: float = 0.5
    feature_loss: str = "mse"
    layer_map: Union[None, str, tuple] = None
    feature_weight: float = 1.0
    attention_weight: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        _check_temperature("DistillConfig", self.temperature)
        if not _is_number(self.alpha) or not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"DistillConfig: alpha must be a number in [0, 1] (got {self.alpha!r})")
        if self.feature_loss not in FEATURE_LOSSES:
            raise ValueError(f"DistillConfig: feature_loss must be one of {', '.join(FEATURE_LOSSES)} "
                             f"(got {self.feature_loss!r})")
        for field in ("feature_weight", "attention_weight"):
            value = getattr(self, field)
            if not _is_number(value) or not value >= 0:
                raise ValueError(f"DistillConfig: {field} must be a number >= 0 (got {value!r})")
        layer_map = self.layer_map
        if isinstance(layer_map, (list, tuple)):
            if not layer_map or not all(_is_int(j) and j >= 0 for j in layer_map):
                raise ValueError(f"DistillConfig: layer_map given as teacher layers must be a non-empty sequence "
                                 f"of ints >= 0 (got {layer_map!r})")
            object.__setattr__(self, "layer_map", tuple(layer_map))
        elif layer_map not in LAYER_MAPS:
            raise ValueError(f"DistillConfig: layer_map must be None, 'uniform' or a tuple of teacher layer indices "
                             f"(got {layer_map!r})")


def uniform_layer_map(student_layers: int, teacher_layers: int) -> tuple:
    """Teacher layer (0-based) for each student layer: round_half_up((i + 1) * Lt / Ls) - 1, so that the
    last student layer learns from the last teacher layer: (3, 6) -> (1, 3, 5); (4, 6) -> (1, 2, 4, 5)."""
    if not (_is_int(student_layers) and _is_int(teacher_layers) and student_layers >= 1 and teacher_layers >= 1):
        raise ValueError(f"uniform_layer_map: layer counts must be ints >= 1 "
                         f"(got {student_layers!r}, {teacher_layers!r})")
    return tuple((2 * (i + 1) * teacher_layers + student_layers) // (2 * student_layers) - 1
                 for i in range(student_layers))


# ---------------------------------------------------------------------------------------------- batches

def _split_batch(batch) -> tuple:
    """(inputs, labels) of one batch (module docstring)."""
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, Mapping):
        inputs = dict(batch)
        return inputs, inputs.pop("labels", None)
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    length = f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else ""
    raise TypeError(f"data: each batch must be a tensor, an (inputs, labels) pair or a dict of tensors "
                    f"(got {type(batch).__name__}{length})")


def _to(value, device: torch.device):
    if isinstance(value, Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, Mapping):
        return {k: _to(v, device) for k, v in value.items()}
    return value


def _call(model: nn.Module, inputs, extra: dict):
    if isinstance(inputs, Mapping):
        return model(**inputs, **extra)
    return model(inputs)


def _stream(data: Iterable, rank: int, world: int):
    """Endless batches for one rank: epoch after epoch, batch rank of every complete round of ``world``."""
    epoch = 0
    while True:
        taken = 0
        round_ = []
        for batch in data:
            round_.append(batch)
            if len(round_) == world:
                yield round_[rank]
                taken += 1
                round_ = []
        if taken == 0:
            if epoch == 0:
                raise ValueError(f"data yielded fewer than {world} batch(es): nothing to train on"
                                 + (f" for each of the {world} ranks" if world > 1 else ""))
            raise ValueError("data yielded no batches on its second pass: it must be re-iterable (a list, a "
                             "DataLoader), not a one-shot iterator")
        epoch += 1


# ---------------------------------------------------------------------------------------------- outputs

@dataclasses.dataclass
class _Outputs:
    logits: Optional[Tensor]
    hidden: Optional[Tensor]
    hidden_states: Optional[tuple]
    attentions: Optional[tuple]


def _field(out, name: str):
    if isinstance(out, Mapping):
        return out.get(name)
    return getattr(out, name, None)


def _parse(out, who: str) -> _Outputs:
    if isinstance(out, Tensor):
        return _Outputs(out, None, None, None)
    logits, hidden = _field(out, "logits"), _field(out, "last_hidden_state")
    if logits is None and hidden is None:
        raise TypeError(f"distill: the {who} must return a tensor of logits or an output with .logits or "
                        f".last_hidden_state (got {type(out).__name__})")
    return _Outputs(logits, hidden, _field(out, "hidden_states") or None, _field(out, "attentions") or None)


def _shape(x: Tensor) -> list:
    return list(x.shape)


# ---------------------------------------------------------------------------------------------- objectives

class _DistillObjective(nn.Module):
    """forward(inputs, labels) -> (loss, terms): teacher under no_grad, student, the distillation loss.
    The student and the projection heads are submodules (what DDP wraps and checkpoints save); the teacher
    is not."""

    def __init__(self, student: nn.Module, teacher: nn.Module, config: DistillConfig, loss_fn: Optional[Callable]):
        super().__init__()
        self.student = student
        self.heads = nn.ModuleDict()
        object.__setattr__(self, "teacher", teacher)
        self.config = config
        self.loss_fn = loss_fn
        self.criterion = DistillationLoss(config.temperature, config.alpha)
        self.pairs: tuple = ()
        self.extra: dict = {}

    def setup(self, inputs, labels) -> None:
        """Check the outputs of the first batch and build the projection heads, before any step."""
        c = self.config
        if c.layer_map is not None and isinstance(inputs, Mapping):
            if c.feature_weight > 0:
                self.extra["output_hidden_states"] = True
            if c.attention_weight > 0:
                self.extra["output_attentions"] = True
        with torch.no_grad():
            t_raw, s_raw = _call(self.teacher, inputs, self.extra), _call(self.student, inputs, self.extra)
        if self.loss_fn is not None:
            return
        t, s = _parse(t_raw, "teacher"), _parse(s_raw, "student")
        device = next(self.student.parameters()).device
        if (s.logits is None) != (t.logits is None):
            has, lacks = ("student", "teacher") if s.logits is not None else ("teacher", "student")
            raise ValueError(f"distill: the {has} returns logits and the {lacks} does not; both must return "
                             f"logits (KD) or both hidden states (feature distillation)")
        if s.logits is not None:
            if s.logits.shape != t.logits.shape:
                raise ValueError(f"distill: student logits {_shape(s.logits)} and teacher logits {_shape(t.logits)} "
                                 f"differ in shape; KD needs the same classes at the same positions")
        else:
            if labels is not None:
                raise ValueError("distill: the batches carry labels but the models return no logits to use them")
            self.heads["last"] = self._head(s.hidden, t.hidden, "last hidden state", device)
        if c.layer_map is None:
            return
        need = [("hidden_states", "feature_weight")] if c.feature_weight > 0 else []
        need += [("attentions", "attention_weight")] if c.attention_weight > 0 else []
        for field, weight in need:
            for who, out in (("student", s), ("teacher", t)):
                if getattr(out, field) is None:
                    hint = " (Hugging Face models with SDPA attention return none: load them with " \
                           "attn_implementation='eager')" if field == "attentions" else ""
                    raise ValueError(f"distill: layer_map with {weight} > 0 needs the {who}'s {field}, and its "
                                     f"output has none{hint}")
        ls, lt = self._layer_counts(s), self._layer_counts(t)
        mapping = uniform_layer_map(ls, lt) if c.layer_map == "uniform" else c.layer_map
        if len(mapping) != ls or max(mapping) >= lt:
            raise ValueError(f"distill: layer_map {mapping} must give one teacher layer in [0, {lt}) for each of "
                             f"the {ls} student layers")
        self.pairs = tuple(enumerate(mapping))
        if c.feature_weight > 0:
            for i, j in self.pairs:
                self.heads[f"layer{i}"] = self._head(s.hidden_states[i + 1], t.hidden_states[j + 1],
                                                     f"layer {i} / teacher layer {j} hidden state", device)

    def _layer_counts(self, out: _Outputs) -> int:
        # hidden_states holds the embeddings' output and then one entry per layer.
        counts = {len(out.hidden_states) - 1} if out.hidden_states is not None else set()
        counts |= {len(out.attentions)} if out.attentions is not None else set()
        if len(counts) != 1 or min(counts) < 1:
            raise ValueError(f"distill: cannot tell the number of layers from hidden_states / attentions of "
                             f"lengths {sorted(counts)}")
        return counts.pop()

    def _head(self, s: Tensor, t: Tensor, what: str, device) -> FeatureDistillation:
        if s.dim() < 2 or s.shape[:-1] != t.shape[:-1]:
            raise ValueError(f"distill: student {what} {_shape(s)} and teacher {what} {_shape(t)} must have the "
                             f"same leading dims (only the width may differ: a projection maps it)")
        return FeatureDistillation(s.shape[-1], t.shape[-1], self.config.feature_loss).to(device)

    def forward(self, inputs, labels) -> tuple:
        with torch.no_grad():
            t_raw = _call(self.teacher, inputs, self.extra)
        s_raw = _call(self.student, inputs, self.extra)
        if self.loss_fn is not None:
            return _loss_and_terms(self.loss_fn(s_raw, t_raw, labels))
        s, t = _parse(s_raw, "student"), _parse(t_raw, "teacher")
        mask = inputs.get("attention_mask") if isinstance(inputs, Mapping) else None
        c = self.config
        if s.logits is not None:
            loss, terms = self.criterion.terms(s.logits, t.logits, labels, _mask_for(mask, s.logits))
        else:
            loss = self.heads["last"](s.hidden, t.hidden, _mask_for(mask, s.hidden))
            terms = {"feat": loss.detach()}
        if self.pairs and c.feature_weight > 0:
            layers = torch.stack([self.heads[f"layer{i}"](s.hidden_states[i + 1], t.hidden_states[j + 1],
                                                          _mask_for(mask, s.hidden_states[i + 1]))
                                  for i, j in self.pairs]).mean()
            loss = loss + c.feature_weight * layers
            terms["layers"] = layers.detach()
        if self.pairs and c.attention_weight > 0:
            attn = torch.stack([attention_distillation_loss(s.attentions[i], t.attentions[j], mask)
                                for i, j in self.pairs]).mean()
            loss = loss + c.attention_weight * attn
            terms["attn"] = attn.detach()
        return loss, terms


def _mask_for(mask: Optional[Tensor], x: Tensor) -> Optional[Tensor]:
    """The attention mask when it covers the leading dims of ``x`` (token-level tensors), else None (e.g.
    sequence-level logits [B, C] have no padding)."""
    return mask if mask is not None and tuple(mask.shape) == tuple(x.shape[:-1]) else None


def _loss_and_terms(value) -> tuple:
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], Mapping):
        loss, terms = value
        terms = {k: v.detach() if isinstance(v, Tensor) else torch.tensor(float(v)) for k, v in terms.items()}
    else:
        loss, terms = value, {}
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        raise TypeError(f"loss_fn must return a scalar tensor or (scalar tensor, dict of terms) "
                        f"(got {type(loss).__name__}{f' of shape {_shape(loss)}' if isinstance(loss, Tensor) else ''})")
    return loss, terms


class _SupervisedObjective(nn.Module):
    """forward(inputs, labels) -> (loss, terms) with loss_fn(model(inputs), labels)."""

    def __init__(self, model: nn.Module, loss_fn: Callable):
        super().__init__()
        self.student = model
        self.heads = nn.ModuleDict()
        self.loss_fn = loss_fn

    def setup(self, inputs, labels) -> None:
        """Nothing to check or build: the loss function sees the raw outputs."""

    def forward(self, inputs, labels) -> tuple:
        return _loss_and_terms(self.loss_fn(_call(self.student, inputs, {}), labels))


# ---------------------------------------------------------------------------------------------- the loop

def _cpu_has_native_bf16() -> bool:
    # bfloat16 instructions (AVX512-BF16 or AMX): without them bfloat16 matmuls are emulated.
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def resolve_amp(amp: Optional[str], device: torch.device) -> tuple:
    """(autocast dtype or None, use a GradScaler) for ``amp`` on ``device``."""
    if amp == "auto":
        if device.type == "cuda":
            return torch.float16, True
        if device.type == "cpu" and _cpu_has_native_bf16():
            return torch.bfloat16, False
        return None, False
    if amp is None:
        return None, False
    if not torch.amp.is_autocast_available(device.type):
        raise ValueError(f"amp={amp!r}: autocast is not available on {device.type}")
    return (torch.bfloat16, False) if amp == "bf16" else (torch.float16, True)


def _lr_factor(config: TrainConfig) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if config.schedule == "constant":
            return 1.0
        progress = (step - config.warmup_steps) / max(config.steps - config.warmup_steps, 1)
        return 1.0 - progress if config.schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _param_groups(module: nn.Module, weight_decay: float) -> list:
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ValueError("train: the model has no trainable parameters (all have requires_grad=False)")
    # Biases and norm scales are not decayed (they set offsets and scales, not capacity).
    decay = [p for p in params if p.dim() >= 2]
    rest = [p for p in params if p.dim() < 2]
    return [group for group in ({"params": decay, "weight_decay": weight_decay},
                                {"params": rest, "weight_decay": 0.0}) if group["params"]]


def _checkpoints(directory: Path) -> list:
    """(step, path) of the checkpoints in ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name))]
    return sorted(found)


def _rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _fsdp_sharded(module: nn.Module) -> bool:
    if not dist.is_available():
        return False
    from torch.distributed import fsdp

    kinds = tuple(getattr(fsdp, name) for name in ("FSDPModule", "FullyShardedDataParallel") if hasattr(fsdp, name))
    return any(isinstance(m, kinds) for m in module.modules())


def _config_fields(config: TrainConfig) -> dict:
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in _BOOKKEEPING}


class _Run:
    """One training run of an objective: the loop shared by distill() and train()."""

    def __init__(self, objective: nn.Module, config: TrainConfig, *, checkpoint_dir, resume: bool, progress: bool,
                 desc: str):
        self.objective, self.config, self.desc = objective, config, desc
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.resume, self.progress = resume, progress
        self.history: list = []
        params = list(objective.student.parameters())
        if not params:
            raise ValueError(f"{desc}: the model has no parameters to train")
        if _fsdp_sharded(objective.student):
            raise ValueError(f"{desc}: the model is sharded with FSDP (fully_shard / FullyShardedDataParallel); "
                             f"this loop trains unsharded or DDP-replicated models only (see the module notes)")
        self.device = params[0].device
        self.distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1

    def run(self, data: Iterable) -> None:
        try:
            iter(data)
        except TypeError as exc:
            raise TypeError(f"{self.desc}: data must be an iterable of batches (got {type(data).__name__})") from exc
        devices = [self.device] if self.device.type == "cuda" else []
        seed = self.config.seed
        with torch.random.fork_rng(devices=devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed + self.rank)
            self._run(data)

    def _run(self, data: Iterable) -> None:
        student = self.objective.student
        was_training = student.training
        try:
            self._loop(data)
        finally:
            student.train(was_training)

    def _loop(self, data: Iterable) -> None:
        c, objective = self.config, self.objective
        self.amp_dtype, use_scaler = resolve_amp(c.amp, self.device)
        stream = _stream(data, self.rank, self.world)
        first = next(stream)
        inputs, labels = self._prepare(first)
        objective.student.eval()
        with self._autocast():
            objective.setup(inputs, labels)
        ddp_kwargs = self._find_unused(inputs, labels) if self.distributed else None
        objective.student.train()

        optimizer = torch.optim.AdamW(_param_groups(objective, c.weight_decay), lr=c.lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(c))
        scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        state = self._load(optimizer, scheduler, scaler)
        step = state["step"] if state else 0
        model = objective
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.device.index] if self.device.type == "cuda" else None
            model = DistributedDataParallel(objective, device_ids=device_ids, **ddp_kwargs)
        stream = itertools.chain([first], stream)
        if state and step < c.steps:
            for _ in range(step * c.grad_accum):
                next(stream)
            _set_rng_state(state["rng"][self.rank], self.device)

        sums: dict = {}
        counted = 0
        with tqdm(total=c.steps, initial=step, desc=self.desc, unit="step", leave=False,
                  disable=not self.progress or self.rank != 0) as bar:
            while step < c.steps:
                for k in range(c.grad_accum):
                    inputs, labels = self._prepare(next(stream))
                    sync = k == c.grad_accum - 1
                    with (model.no_sync() if self.distributed and not sync else contextlib.nullcontext()):
                        with self._autocast():
                            loss, terms = model(inputs, labels)
                        scaler.scale(loss / c.grad_accum).backward()
                    for key, value in {"loss": loss.detach(), **terms}.items():
                        sums[key] = sums.get(key, 0.0) + value.float()
                    counted += 1
                if c.max_grad_norm is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(objective.parameters(), c.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                step += 1
                bar.update(1)
                if step % c.log_every == 0 or step == c.steps:
                    means = {key: (value / counted).item() for key, value in sums.items()}
                    self.history.append({"step": step, **means})
                    bar.set_postfix({key: f"{value:.4g}" for key, value in means.items()}, refresh=False)
                    sums, counted = {}, 0
                if self.checkpoint_dir is not None and (
                        step == c.steps or (c.checkpoint_every is not None and step % c.checkpoint_every == 0)):
                    self._save(step, optimizer, scheduler, scaler)

    def _prepare(self, batch) -> tuple:
        inputs, labels = _split_batch(batch)
        return _to(inputs, self.device), _to(labels, self.device)

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _find_unused(self, inputs, labels) -> dict:
        """DDP settings: find_unused_parameters only when the loss leaves some trainable parameter without a
        gradient (checked with one backward pass on the first batch, in eval mode)."""
        with self._autocast():
            loss, _ = self.objective(inputs, labels)
        loss.float().backward()
        unused = [p for p in self.objective.parameters() if p.requires_grad and p.grad is None]
        self.objective.zero_grad(set_to_none=True)
        return {"find_unused_parameters": bool(unused)}

    # ------------------------------------------------------------------------------------------ checkpoints

    def _load(self, optimizer, scheduler, scaler) -> Optional[dict]:
        if self.checkpoint_dir is None or not self.resume:
            return None
        found = _checkpoints(self.checkpoint_dir)
        path = [str(found[-1][1]) if found else None]
        if self.distributed:
            # Every rank resumes from the checkpoint rank 0 sees.
            dist.broadcast_object_list(path, src=0)
        if path[0] is None:
            return None
        state = torch.load(path[0], map_location="cpu", weights_only=True)
        expected, saved = _config_fields(self.config), state["config"]
        differing = sorted(k for k in expected if saved.get(k) != expected[k])
        if differing:
            raise ValueError(f"{self.desc}: the checkpoint {path[0]} was written with another config (differs in "
                             f"{', '.join(differing)}); resume with the same config or resume=False")
        if len(state["rng"]) != self.world:
            raise ValueError(f"{self.desc}: the checkpoint {path[0]} was written by {len(state['rng'])} rank(s), "
                             f"this run has {self.world}")
        self.objective.student.load_state_dict(state["model"])
        self.objective.heads.load_state_dict(state["heads"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        return state

    def _save(self, step: int, optimizer, scheduler, scaler) -> None:
        rng = [_rng_state(self.device)]
        if self.distributed:
            gathered = [None] * self.world
            dist.all_gather_object(gathered, {k: v.cpu() for k, v in rng[0].items()})
            rng = gathered
        if self.rank != 0:
            return
        state = {
            "step": step,
            "config": _config_fields(self.config),
            "model": self.objective.student.state_dict(),
            "heads": self.objective.heads.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rng,
        }
        directory = self.checkpoint_dir
        directory.mkdir(parents=True, exist_ok=True)
        final = directory / f"checkpoint-{step:08d}.pt"
        tmp = directory / f".{final.name}.tmp"
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        for _, old in _checkpoints(directory)[:-self.config.keep_checkpoints]:
            old.unlink()


# ---------------------------------------------------------------------------------------------- public API

@contextlib.contextmanager
def trainable_only(model: nn.Module, pattern: Optional[str], what: str = "trainable_only"):
    """Within the block, only the parameters of the modules whose names match the fnmatch ``pattern`` (and
    of their submodules) keep requires_grad; the flags are restored afterwards. None: leave all as they are."""
    if pattern is None:
        yield
        return
    chosen = {id(p) for name, module in model.named_modules() if fnmatch.fnmatchcase(name, pattern)
              for p in module.parameters()}
    if not chosen:
        raise ValueError(f"{what}: pattern {pattern!r} matches no module with parameters")
    flags = {p: p.requires_grad for p in model.parameters()}
    try:
        for p in flags:
            if id(p) not in chosen:
                p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)


def _check_module(fn: str, name: str, value) -> None:
    if not isinstance(value, nn.Module):
        raise TypeError(f"{fn}: {name} must be an nn.Module (got {type(value).__name__})")


class Distiller:
    """Distils ``student`` from ``teacher`` (module docstring). After ``fit``: ``heads`` holds the trained
    projection heads and ``history`` the mean losses logged every ``config.log_every`` steps.

    ``loss_fn(student_output, teacher_output, labels)``, when given, replaces the built-in loss; it returns
    a scalar tensor or (scalar tensor, dict of named terms to log)."""

    def __init__(self, student: nn.Module, teacher: nn.Module, config: Optional[DistillConfig] = None, *,
                 loss_fn: Optional[Callable] = None):
        _check_module("distill", "student", student)
        _check_module("distill", "teacher", teacher)
        config = DistillConfig() if config is None else config
        if not isinstance(config, DistillConfig):
            raise TypeError(f"distill: config must be a DistillConfig (got {type(config).__name__})")
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(f"distill: loss_fn must be callable (got {type(loss_fn).__name__})")
        s_devices = {p.device for p in student.parameters()}
        t_devices = {p.device for p in teacher.parameters()}
        if s_devices and t_devices and s_devices != t_devices:
            raise ValueError(f"distill: student and teacher must be on the same device "
                             f"(got {sorted(map(str, s_devices))} and {sorted(map(str, t_devices))})")
        self.student, self.teacher, self.config = student, teacher, config
        self.loss_fn = loss_fn
        self.heads = nn.ModuleDict()
        self.history: list = []

    def fit(self, data: Iterable, *, checkpoint_dir: Union[str, os.PathLike, None] = None, resume: bool = True,
            progress: bool = True) -> nn.Module:
        """Train the student for ``config.steps`` steps on ``data``; returns the student (in its original
        train/eval mode)."""
        objective = _DistillObjective(self.student, self.teacher, self.config, self.loss_fn)
        run = _Run(objective, self.config, checkpoint_dir=checkpoint_dir, resume=resume, progress=progress,
                   desc="distill")
        teacher_training = self.teacher.training
        self.teacher.eval()
        try:
            run.run(data)
        finally:
            self.teacher.train(teacher_training)
        self.heads, self.history = objective.heads, run.history
        return self.student


def distill(student: nn.Module, teacher: nn.Module, data: Iterable, config: Optional[DistillConfig] = None, *,
            checkpoint_dir: Union[str, os.PathLike, None] = None, resume: bool = True, progress: bool = True,
            loss_fn: Optional[Callable] = None) -> nn.Module:
    """Distil ``student`` from ``teacher`` on ``data`` in place (module docstring); returns the student."""
    return Distiller(student, teacher, config, loss_fn=loss_fn).fit(
        data, checkpoint_dir=checkpoint_dir, resume=resume, progress=progress)


def train(model: nn.Module, data: Iterable, loss_fn: Callable, config: Optional[TrainConfig] = None, *,
          checkpoint_dir: Union[str, os.PathLike, None] = None, resume: bool = True, progress: bool = True,
          history: Optional[list] = None) -> nn.Module:
    """Supervised training of ``model`` in place with ``loss_fn(model_output, labels)`` (a scalar tensor, or
    (scalar tensor, dict of named terms)), on the same loop as distill(): AdamW, accumulation, mixed
    precision, checkpoints and DDP. ``history``, when given, receives the logged mean losses."""
    _check_module("train", "model", model)
    if not callable(loss_fn):
        raise TypeError(f"train: loss_fn must be callable (got {type(loss_fn).__name__})")
    config = TrainConfig() if config is None else config
    if not isinstance(config, TrainConfig):
        raise TypeError(f"train: config must be a TrainConfig (got {type(config).__name__})")
    run = _Run(_SupervisedObjective(model, loss_fn), config, checkpoint_dir=checkpoint_dir, resume=resume,
               progress=progress, desc="train")
    run.run(data)
    if history is not None:
        history.extend(run.history)
    return model


__all__ = ["DistillConfig", "Distiller", "TrainConfig", "distill", "resolve_amp", "train", "trainable_only",
           "uniform_layer_map"]
