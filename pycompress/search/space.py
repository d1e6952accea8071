"""The search space: per-layer compression options, and the structure options of BERT-style encoders.

Per nn.Linear ("site"), one of the configs in ``SearchSpace.options`` or none (dense). For a stack of
BERT-style blocks (``model.<blocks>``, each with ``attention.self.query/key/value``,
``attention.output.dense``, ``intermediate.dense`` and ``output.dense``), one global ``Structure``: the
fraction of attention heads removed (StructuredPruneConfig target="heads"), the fraction of FFN neurons
removed (target="ffn") and the number of whole blocks removed. A structure shrinks the sites' shapes:

    query/key/value [h d, H] -> [h' d, H]     attention.output.dense [H, h d] -> [H, h' d]
    intermediate.dense [F, H] -> [F', H]      output.dense [H, F] -> [H, F']

with h' = kept_count(h, heads) and F' = kept_count(F, ffn, round_to), and the sites of removed blocks
leave the search.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import math
import warnings
from collections.abc import Mapping
from typing import Callable, Optional

import torch
from torch import nn

from pycompress.api import _HANDLERS, compress_, report
from pycompress.lowrank.configs import LowRankConfig
from pycompress.prune.configs import Sparse24Config, SparseConfig
from pycompress.prune.physical import StructuredPruneConfig, attention_blocks, ffn_blocks, kept_count
from pycompress.quant.configs import Int8Config, Int8WeightOnlyConfig, linear_skip_reason
from pycompress.share.cluster import ClusterConfig


def default_options() -> tuple:
    """The per-layer options searched by default: W8A8, weight-only int8, 2:4 and unstructured
    sparsity (Wanda), activation-scaled low-rank at 1/8 to 1/2 of min(N, K), and 4- and 8-bit
    per-channel codebooks. Sparse formats always pack (min_speedup=None): the search times them itself."""
    return (
        Int8Config(),
        Int8WeightOnlyConfig(),
        Sparse24Config(method="wanda", min_speedup=None),
        *(SparseConfig(sparsity=s, method="wanda", min_speedup=None) for s in (0.5, 0.7, 0.9)),
        *(LowRankConfig(rank=f, method="activation_scaled") for f in (0.125, 0.25, 0.375, 0.5)),
        *(ClusterConfig(bits=b) for b in (4, 8)),
    )


def _check_amounts(field: str, amounts) -> tuple:
    if not isinstance(amounts, (tuple, list)) or any(
            isinstance(a, bool) or not isinstance(a, (int, float)) or not 0.0 < a < 1.0 for a in amounts):
        raise ValueError(f"SearchSpace: {field} must be a tuple of fractions in (0, 1) (got {amounts!r})")
    return tuple(sorted(set(float(a) for a in amounts)))


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """What the search may choose. ``options``: per-layer configs (registered with compress_, applying
    to nn.Linear); ``head_amounts`` / ``ffn_amounts``: fractions of attention heads / FFN neurons that
    may be removed from every BERT-style block (kept FFN widths rounded to ``ffn_round_to``);
    ``max_removed_blocks``: the largest fraction of the blocks of the stack ``blocks`` that may be
    removed (0: none; at least one block always stays). Structure options apply only to models that
    have such blocks."""

    options: tuple = dataclasses.field(default_factory=default_options)
    head_amounts: tuple = (0.25, 1 / 3, 0.5)
    ffn_amounts: tuple = (0.25, 0.5, 0.75)
    ffn_round_to: int = 16
    max_removed_blocks: float = 0.5
    blocks: str = "encoder.layer"

    def __post_init__(self):
        if not isinstance(self.options, (tuple, list)):
            raise TypeError(f"SearchSpace: options must be a tuple of configs (got {type(self.options).__name__})")
        for config in self.options:
            if type(config) not in _HANDLERS or isinstance(config, StructuredPruneConfig):
                known = ", ".join(sorted(t.__name__ for t in _HANDLERS if t is not StructuredPruneConfig))
                raise TypeError(f"SearchSpace: options must be per-layer compress_ configs ({known}); got "
                                f"{config!r} (structure is searched through head_amounts, ffn_amounts and "
                                "max_removed_blocks)")
        if len(set(self.options)) != len(self.options):
            raise ValueError("SearchSpace: options must not repeat a config")
        object.__setattr__(self, "options", tuple(self.options))
        object.__setattr__(self, "head_amounts", _check_amounts("head_amounts", self.head_amounts))
        object.__setattr__(self, "ffn_amounts", _check_amounts("ffn_amounts", self.ffn_amounts))
        if isinstance(self.ffn_round_to, bool) or not isinstance(self.ffn_round_to, int) or self.ffn_round_to < 1:
            raise ValueError(f"SearchSpace: ffn_round_to must be a positive int (got {self.ffn_round_to!r})")
        m = self.max_removed_blocks
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0.0 <= m < 1.0:
            raise ValueError(f"SearchSpace: max_removed_blocks must be a fraction in [0, 1) (got {m!r})")
        if not isinstance(self.blocks, str) or not self.blocks:
            raise ValueError(f"SearchSpace: blocks must be the dotted name of a block stack (got {self.blocks!r})")


def option_label(config) -> str:
    """A short name of a config: its class and the fields that differ from their defaults."""
    if config is None:
        return "dense"
    fields = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        default = field.default if field.default is not dataclasses.MISSING else None
        if field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        if value != default:
            fields.append(f"{field.name}={value!r}")
    return f"{type(config).__name__}({', '.join(fields)})"


@dataclasses.dataclass(frozen=True)
class Structure:
    """A global structure choice: the fractions of attention heads and FFN neurons removed from every
    block, and the number of blocks removed."""

    heads: float = 0.0
    ffn: float = 0.0
    removed: int = 0

    @property
    def is_dense(self) -> bool:
        return self.heads == 0.0 and self.ffn == 0.0 and self.removed == 0

    def __str__(self) -> str:
        parts = [f"heads -{self.heads:.0%}" if self.heads else "", f"ffn -{self.ffn:.0%}" if self.ffn else "",
                 f"{self.removed} blocks removed" if self.removed else ""]
        return ", ".join(p for p in parts if p) or "no structure change"


ROLES = ("qkv", "attn_out", "ffn_up", "ffn_down")


@dataclasses.dataclass(frozen=True)
class Site:
    """One searched nn.Linear: its name, weight shape [out_features, in_features], whether it has a
    bias, the input rows it sees in one forward of the example inputs (``tokens``), and, inside a
    block of the stack, the block index, the residual branch it feeds ("attention" | "ffn") and its
    role (one of ROLES, or None when a structure change leaves its shape alone)."""

    name: str
    out_features: int
    in_features: int
    bias: bool
    tokens: int
    block: Optional[int] = None
    branch: Optional[str] = None
    role: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class BlockStack:
    """The BERT-style block stack: its dotted name, block count, heads and head size of each
    attention, FFN inner width; ``structural`` says whether heads and FFN pruning apply."""

    name: str
    count: int
    heads: int
    head_size: int
    intermediate: int
    structural: bool


def call_model(model: nn.Module, batch):
    """``model(**batch)`` for a dict of inputs, ``model(*batch)`` for a tuple or list, else ``model(batch)``."""
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def hidden(value):
    """The hidden state of a block's or attention's output (Hugging Face modules may return tuples)."""
    return value[0] if isinstance(value, (tuple, list)) else value


class _Single(nn.Module):
    """A model holding one layer, so that compress_ (and its calibration) can run on that layer alone."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)


def compress_layer(linear: nn.Linear, config, calibration: list):
    """``config`` applied by compress_ to a copy of ``linear``, calibrated on ``calibration`` (input
    rows [M, in_features] of the layer): the compressed module, or the reason the handler left it dense."""
    holder = _Single(copy.deepcopy(linear))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compress_(holder, config, filter_fn=lambda m, name: name == "layer", calibration=calibration)
    outcome = report(holder)
    if "layer" in outcome.skipped:
        return outcome.skipped["layer"]
    if "layer" not in outcome.replaced:
        return f"{type(config).__name__} does not apply to nn.Linear"
    return holder.layer


def module_bytes(module: nn.Module) -> int:
    """Bytes of the parameters and buffers of ``module`` (shared tensors once)."""
    seen, total = set(), 0
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        if tensor is None or tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        total += tensor.numel() * tensor.element_size()
    return total


def signature(module: nn.Module, inputs=None) -> str:
    """A short hash of a module's structure (names, types, parameter shapes and dtypes) and of the
    shapes and dtypes of ``inputs``: two modules with equal signatures take equal time."""
    parts = [f"{name}:{type(m).__name__}" for name, m in module.named_modules()]
    parts += [f"{name}:{list(t.shape)}:{t.dtype}" for name, t in
              itertools.chain(module.named_parameters(), module.named_buffers())]

    def describe(value):
        if isinstance(value, torch.Tensor):
            return f"T{list(value.shape)}{value.dtype}"
        if isinstance(value, Mapping):
            return "{" + ",".join(f"{k}={describe(v)}" for k, v in sorted(value.items())) + "}"
        if isinstance(value, (tuple, list)):
            return "(" + ",".join(describe(v) for v in value) + ")"
        return repr(value)

    parts.append(describe(inputs))
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:16]


@dataclasses.dataclass
class ModelSpace:
    """The search space of one model: the sites, the block stack (or None), the structures (a grid,
    dense first), the options, the layers left out (name -> why) and, captured from one forward of
    the example inputs, the first block's positional and keyword inputs (for timing it)."""

    sites: list
    stack: Optional[BlockStack]
    structures: list
    options: tuple
    skipped: dict
    block_inputs: Optional[tuple] = None
    space: SearchSpace = dataclasses.field(default_factory=SearchSpace)

    def shape(self, site: Site, structure: Structure) -> tuple:
        """(out_features, in_features) of ``site`` under ``structure``."""
        N, K = site.out_features, site.in_features
        if self.stack is None or site.role is None:
            return N, K
        heads = kept_count(self.stack.heads, structure.heads) * self.stack.head_size
        inner = kept_count(self.stack.intermediate, structure.ffn, self.space.ffn_round_to)
        return {"qkv": (heads, K), "attn_out": (N, heads), "ffn_up": (inner, K), "ffn_down": (N, inner)}[site.role]


def _roles(model: nn.Module, stack_name: str, count: int) -> dict:
    """Linear name -> (block, branch, role) for the layers of the stack's blocks."""
    roles = {}
    attention = dict(attention_blocks(model))
    ffn = dict(ffn_blocks(model))
    for i in range(count):
        prefix = f"{stack_name}.{i}"
        for name in attention:
            if name.startswith(prefix + "."):
                for part in ("query", "key", "value"):
                    roles[f"{name}.self.{part}"] = (i, "attention", "qkv")
                roles[f"{name}.output.dense"] = (i, "attention", "attn_out")
        if prefix in ffn:
            roles[f"{prefix}.intermediate.dense"] = (i, "ffn", "ffn_up")
            roles[f"{prefix}.output.dense"] = (i, "ffn", "ffn_down")
    return roles


def _block_stack(model: nn.Module, name: str) -> Optional[nn.Module]:
    try:
        stack = model.get_submodule(name)
    except AttributeError:
        return None
    if not isinstance(stack, (nn.ModuleList, nn.Sequential)) or len(stack) == 0:
        return None
    return stack


def _stack_info(model: nn.Module, stack, name: str) -> BlockStack:
    """Heads and FFN structure apply when every block has one BERT-style attention and FFN of the
    same sizes as the first block's."""
    attention = attention_blocks(model)
    ffn = dict(ffn_blocks(model))
    shapes = set()
    for i in range(len(stack)):
        prefix = f"{name}.{i}"
        mine = [a for n, a in attention if n.startswith(prefix + ".")]
        if len(mine) != 1 or prefix not in ffn:
            return BlockStack(name, len(stack), 0, 0, 0, structural=False)
        inner = mine[0].self
        shapes.add((inner.num_attention_heads, inner.attention_head_size,
                    ffn[prefix].intermediate.dense.out_features))
    if len(shapes) != 1:
        return BlockStack(name, len(stack), 0, 0, 0, structural=False)
    heads, size, intermediate = shapes.pop()
    return BlockStack(name, len(stack), heads, size, intermediate, structural=True)


def _structures(stack: Optional[BlockStack], space: SearchSpace) -> list:
    if stack is None:
        return [Structure()]
    heads, ffn = (0.0,), (0.0,)
    if stack.structural:
        # Amounts that keep the same number of units are one choice (the smallest amount names it).
        seen_heads = {kept_count(stack.heads, 0.0)}
        for a in space.head_amounts:
            kept = kept_count(stack.heads, a)
            if kept not in seen_heads:
                seen_heads.add(kept)
                heads += (a,)
        seen_ffn = {kept_count(stack.intermediate, 0.0, space.ffn_round_to)}
        for a in space.ffn_amounts:
            kept = kept_count(stack.intermediate, a, space.ffn_round_to)
            if kept not in seen_ffn:
                seen_ffn.add(kept)
                ffn += (a,)
    removable = min(stack.count - 1, math.floor(space.max_removed_blocks * stack.count))
    return [Structure(h, f, r) for r in range(removable + 1) for h in heads for f in ffn]


@torch.no_grad()
def analyze(model: nn.Module, example_inputs, space: SearchSpace,
            filter_fn: Optional[Callable[[nn.Module, str], bool]] = None) -> ModelSpace:
    """The ModelSpace of ``model``: one forward of ``example_inputs`` counts the input rows of every
    nn.Linear (the sites; layers not run, or that no packed format takes, are left out with the
    reason) and captures the first block's inputs."""
    candidates = {name: m for name, m in model.named_modules()
                  if isinstance(m, nn.Linear) and (filter_fn is None or filter_fn(m, name))}
    rows = dict.fromkeys(candidates, 0)
    stack = _block_stack(model, space.blocks)
    captured = {}

    def count(name):
        def hook(module, args):
            rows[name] += args[0].numel() // module.in_features
        return hook

    def capture(module, args, kwargs):
        captured.setdefault("block", (args, kwargs))

    handles = [m.register_forward_pre_hook(count(name)) for name, m in candidates.items()]
    if stack is not None:
        handles.append(stack[0].register_forward_pre_hook(capture, with_kwargs=True))
    was_training = model.training
    model.eval()
    try:
        call_model(model, example_inputs)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    info = _stack_info(model, stack, space.blocks) if stack is not None else None
    roles = _roles(model, space.blocks, len(stack)) if info is not None and info.structural else {}
    prefixes = [f"{space.blocks}.{i}." for i in range(len(stack))] if stack is not None else []
    sites, skipped = [], {}
    for name, module in candidates.items():
        reason = linear_skip_reason(module)
        if reason is None and rows[name] == 0:
            reason = "not run by the example inputs"
        if reason is not None:
            skipped[name] = reason
            continue
        block, branch, role = roles.get(name, (None, None, None))
        if block is None:
            block = next((i for i, p in enumerate(prefixes) if name.startswith(p)), None)
        sites.append(Site(name, module.out_features, module.in_features, module.bias is not None, rows[name],
                          block, branch, role))
    if info is not None and "block" not in captured:
        raise ValueError(f"search: the example inputs never ran the blocks of {space.blocks!r}")
    return ModelSpace(sites=sites, stack=info, structures=_structures(info, space), options=space.options,
                      skipped=skipped, block_inputs=captured.get("block"), space=space)
