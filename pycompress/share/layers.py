"""Cross-layer parameter sharing (ALBERT, Lan et al. 2020): the blocks of a stack are split into groups,
and all blocks of a group use ONE set of tensors.

The stack is an nn.ModuleList (or nn.Sequential) of blocks with the same parameters and buffers (names,
shapes, dtypes): ``encoder.layer`` in BERT-style encoders. It is named by ``blocks`` or, by default, it is
the longest nn.ModuleList of structurally identical blocks in the model. Groups are given as lists of
block indices, or ``num_shared`` consecutive runs of (nearly) equal length (6 blocks, 3 groups: (0, 1),
(2, 3), (4, 5)).

For each tensor t of the tied part, group g gets one new tensor initialised to the mean of t over the
group's blocks (``init="average"``; integer buffers take the first block's value) or to the first block's
t (``init="first"``), and that same nn.Parameter (or buffer) object is registered in every block of the
group. model.parameters() then yields it once, an optimizer updates it once, and its gradient is the sum
of the gradients at every block that uses it. ``part`` says what is tied: the whole block, or sub-modules
of it. "attention" and "ffn" are looked up in the known block layouts (first match):

    BERT        attention = ``attention`` (query, key, value, output projection and its LayerNorm)
                ffn       = ``intermediate`` and ``output.dense`` (the two dense layers)
    LLaMA-style attention = ``self_attn``    ffn = ``mlp``
    GPT-2       attention = ``attn``         ffn = ``mlp``

and other layouts name their sub-modules: ``part=("attn", "mlp.fc1")``.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from pycompress.api import register_handler
from pycompress.prune.physical import count_params

log = logging.getLogger("pycompress")

PARTS = ("block", "attention", "ffn")
INITS = ("average", "first")
_LAYOUTS = {
    "attention": (("attention",), ("self_attn",), ("attn",)),
    "ffn": (("intermediate", "output.dense"), ("mlp",)),
}


@dataclasses.dataclass(frozen=True)
class ShareLayersConfig:
    """Exactly one of ``groups`` (lists of block indices; each block in at most one group; a block in no
    group keeps its own tensors) or ``num_shared`` (that many groups of consecutive blocks). ``part``:
    "block", "attention", "ffn" or a tuple of sub-module names of a block. ``init``: "average" or "first".
    ``blocks``: the stack's name (default: the longest ModuleList of identical blocks)."""

    groups: Optional[tuple] = None
    num_shared: Optional[int] = None
    part: Union[str, tuple] = "block"
    init: str = "average"
    blocks: Optional[str] = None

    def __post_init__(self):
        name = "ShareLayersConfig"
        if (self.groups is None) == (self.num_shared is None):
            raise ValueError(f"{name}: give exactly one of groups (lists of block indices) or num_shared (a number "
                             f"of groups) (got groups={self.groups!r}, num_shared={self.num_shared!r})")
        if self.groups is not None:
            groups = _as_groups(self.groups)
            if groups is None:
                raise ValueError(f"{name}: groups must be a non-empty sequence of non-empty sequences of block indices "
                                 f"(ints >= 0) (got {self.groups!r})")
            flat = [i for group in groups for i in group]
            if len(set(flat)) != len(flat):
                raise ValueError(f"{name}: groups must not share a block (got {self.groups!r})")
            object.__setattr__(self, "groups", groups)
        if self.num_shared is not None and (isinstance(self.num_shared, bool) or not isinstance(self.num_shared, int)
                                            or self.num_shared < 1):
            raise ValueError(f"{name}: num_shared must be an int >= 1 (got {self.num_shared!r})")
        part = self.part
        if isinstance(part, (list, tuple)):
            if not part or not all(isinstance(p, str) and p for p in part):
                raise ValueError(f"{name}: part given as sub-module names must be a non-empty sequence of non-empty "
                                 f"strings (got {part!r})")
            object.__setattr__(self, "part", tuple(part))
        elif part not in PARTS:
            raise ValueError(f"{name}: part must be one of {', '.join(PARTS)} or a tuple of sub-module names "
                             f"(got {part!r})")
        if self.init not in INITS:
            raise ValueError(f"{name}: init must be one of {', '.join(INITS)} (got {self.init!r})")
        if self.blocks is not None and not isinstance(self.blocks, str):
            raise ValueError(f"{name}: blocks must be the dotted name of the stack of blocks (got {self.blocks!r})")


def _as_groups(groups) -> Optional[tuple]:
    if isinstance(groups, (str, bytes)) or not isinstance(groups, Sequence) or not groups:
        return None
    out = []
    for group in groups:
        if isinstance(group, (str, bytes)) or not isinstance(group, Sequence) or not group:
            return None
        if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in group):
            return None
        out.append(tuple(group))
    return tuple(out)


def consecutive_groups(n: int, num_shared: int) -> tuple:
    """``num_shared`` runs of consecutive indices covering range(n), the first n % num_shared of them one
    longer: (6, 3) -> ((0, 1), (2, 3), (4, 5)); (5, 2) -> ((0, 1, 2), (3, 4))."""
    if isinstance(num_shared, bool) or not isinstance(num_shared, int) or not 1 <= num_shared < n:
        raise ValueError(f"consecutive_groups: num_shared must be an int in [1, {n}) for {n} blocks "
                         f"(got {num_shared!r})")
    size, extra = divmod(n, num_shared)
    groups, start = [], 0
    for g in range(num_shared):
        stop = start + size + (g < extra)
        groups.append(tuple(range(start, stop)))
        start = stop
    return tuple(groups)


def _join(prefix: str, name) -> str:
    return f"{prefix}.{name}" if prefix else str(name)


def _part_tensors(block: nn.Module, paths: tuple) -> dict:
    """name (relative to the block) -> parameter or buffer, for every tensor of the sub-modules ``paths``."""
    out = {}
    for path in paths:
        module = block.get_submodule(path)
        out.update(module.named_parameters(prefix=path, remove_duplicate=False))
        out.update(module.named_buffers(prefix=path, remove_duplicate=False))
    return out


def _describe(tensor: Tensor) -> str:
    kind = "parameter" if isinstance(tensor, nn.Parameter) else "buffer"
    return f"{kind} {str(tensor.dtype).replace('torch.', '')} {list(tensor.shape)} on {tensor.device}"


def _first_difference(a: dict, b: dict) -> Optional[str]:
    for name in dict.fromkeys([*a, *b]):
        if name not in a or name not in b:
            return f"{name!r} (present in only one of them)"
        x, y = a[name], b[name]
        if (isinstance(x, nn.Parameter) != isinstance(y, nn.Parameter) or x.shape != y.shape or x.dtype != y.dtype
                or x.device != y.device):
            return f"{name!r} ({_describe(x)} vs {_describe(y)})"
    return None


def _identical_blocks(stack: nn.Module) -> bool:
    first = _part_tensors(stack[0], ("",))
    if not first:
        return False
    return all(type(block) is type(stack[0]) and _first_difference(first, _part_tensors(block, ("",))) is None
               for block in stack)


def _find_stack(model: nn.Module, blocks: Optional[str], offered: Optional[list]) -> tuple:
    """(name, stack): the named stack, or the longest ModuleList of identical blocks among ``offered``
    (names; every ModuleList of the model when None)."""
    if blocks is not None:
        try:
            stack = model.get_submodule(blocks)
        except AttributeError as exc:
            raise ValueError(f"share_layers_: blocks must name a submodule of the model (got {blocks!r})") from exc
        if not isinstance(stack, (nn.ModuleList, nn.Sequential)) or len(stack) < 2:
            raise ValueError(f"share_layers_: blocks={blocks!r} must name an nn.ModuleList or nn.Sequential of at "
                             f"least 2 blocks (got {type(stack).__name__}{_length(stack)})")
        return blocks, stack
    names = offered if offered is not None else [n for n, m in model.named_modules() if isinstance(m, nn.ModuleList)]
    found = [(name, model.get_submodule(name)) for name in names]
    found = [(name, stack) for name, stack in found
             if isinstance(stack, nn.ModuleList) and len(stack) >= 2 and _identical_blocks(stack)]
    if not found:
        raise ValueError("share_layers_: the model has no nn.ModuleList of at least 2 blocks with the same parameters; "
                         "name the stack with blocks=")
    longest = max(len(stack) for _, stack in found)
    found = [(name, stack) for name, stack in found if len(stack) == longest]
    if len(found) > 1:
        raise ValueError(f"share_layers_: several stacks of {longest} identical blocks "
                         f"({', '.join(repr(n) for n, _ in found)}); choose one with blocks=")
    return found[0]


def _length(stack: nn.Module) -> str:
    return f" of {len(stack)}" if isinstance(stack, (nn.ModuleList, nn.Sequential)) else ""


def _part_paths(block: nn.Module, part, where: str) -> tuple:
    if part == "block":
        return ("",)
    if isinstance(part, tuple):
        for path in part:
            try:
                block.get_submodule(path)
            except AttributeError as exc:
                raise ValueError(f"share_layers_: part names {path!r}, which is not a sub-module of {where} "
                                 f"({type(block).__name__})") from exc
        return part
    for layout in _LAYOUTS[part]:
        if all(_has_submodule(block, path) for path in layout):
            return layout
    tried = " or ".join(repr(layout) for layout in _LAYOUTS[part])
    raise ValueError(f"share_layers_: part={part!r} is not a known layout of {where} ({type(block).__name__}; "
                     f"tried {tried}); give part as sub-module names, e.g. part=('attn',)")


def _has_submodule(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


def _merged(members: list, init: str) -> Tensor:
    """One tensor for a group: the first member's value or the members' mean (accumulated in float32 or
    wider), as an nn.Parameter when the members are parameters."""
    first = members[0]
    with torch.no_grad():
        if init == "first" or not first.is_floating_point():
            value = first.detach().clone()
        else:
            wide = torch.promote_types(first.dtype, torch.float32)
            value = (sum(m.detach().to(wide) for m in members) / len(members)).to(first.dtype)
    if isinstance(first, nn.Parameter):
        return nn.Parameter(value, requires_grad=first.requires_grad)
    return value


def _assign(block: nn.Module, name: str, tensor: Tensor) -> None:
    owner_name, _, leaf = name.rpartition(".")
    setattr(block.get_submodule(owner_name), leaf, tensor)


@dataclasses.dataclass
class SharingPlan:
    """Where the tensors were tied: the stack's name, the groups of block indices with 2 or more blocks,
    the tied sub-module paths of a block ("" for the whole block), and the parameter counts."""

    stack: str
    groups: tuple
    paths: tuple
    params_before: int
    params_after: int

    def __str__(self) -> str:
        what = "whole blocks" if self.paths == ("",) else ", ".join(self.paths)
        return (f"{self.stack}: {sum(len(g) for g in self.groups)} blocks in {len(self.groups)} groups share "
                f"{what}; parameters {self.params_before:,} -> {self.params_after:,}")


def _share(model: nn.Module, config: ShareLayersConfig, offered: Optional[list] = None) -> SharingPlan:
    name, stack = _find_stack(model, config.blocks, offered)
    n = len(stack)
    if config.groups is not None:
        bad = [i for group in config.groups for i in group if i >= n]
        if bad:
            raise ValueError(f"share_layers_: groups name blocks {bad}, beyond the {n} blocks of {name!r}")
        groups = config.groups
    else:
        if config.num_shared >= n:
            raise ValueError(f"share_layers_: num_shared must be below the {n} blocks of {name!r} "
                             f"(got {config.num_shared})")
        groups = consecutive_groups(n, config.num_shared)
    groups = tuple(group for group in groups if len(group) > 1)
    if not groups:
        raise ValueError(f"share_layers_: no group holds 2 or more blocks, nothing to share (got {config.groups!r})")
    paths = _part_paths(stack[groups[0][0]], config.part, _join(name, groups[0][0]))
    parts = {i: _part_tensors(stack[i], _part_paths(stack[i], paths, _join(name, i)))
             for group in groups for i in group}
    for group in groups:
        for i in group[1:]:
            difference = _first_difference(parts[group[0]], parts[i])
            if difference is not None:
                raise ValueError(f"share_layers_: blocks {_join(name, group[0])} and {_join(name, i)} differ at "
                                 f"{difference}; only blocks with the same parameters can share them")
    before = count_params(model)
    for group in groups:
        # Keyed by the members' identities, so that tensors already tied inside the blocks stay tied.
        merged = {}
        for tensor_name in parts[group[0]]:
            members = [parts[i][tensor_name] for i in group]
            key = tuple(id(m) for m in members)
            if key not in merged:
                merged[key] = _merged(members, config.init)
            for i in group:
                _assign(stack[i], tensor_name, merged[key])
    plan = SharingPlan(stack=name, groups=groups, paths=paths, params_before=before, params_after=count_params(model))
    log.info("share_layers_: %s", plan)
    return plan


def share_layers_(model: nn.Module, num_shared: Optional[int] = None, *, groups: Optional[Sequence] = None,
                  part: Union[str, Sequence[str]] = "block", init: str = "average",
                  blocks: Optional[str] = None) -> SharingPlan:
    """Tie, in place, the ``part`` of the blocks of each group of the stack ``blocks`` (module docstring).
    Give ``num_shared`` (groups of consecutive blocks) or ``groups`` (lists of block indices). Returns
    the plan: the stack, the groups, the tied sub-modules and the parameter counts before and after."""
    config = ShareLayersConfig(groups=groups, num_shared=num_shared, part=part, init=init, blocks=blocks)
    return _share(model, config)


def _is_stack(module: nn.Module) -> bool:
    return isinstance(module, (nn.ModuleList, nn.Sequential))


def _prepare(model: nn.Module, candidates: list, config: ShareLayersConfig, calibration) -> dict:
    plan = _share(model, config, offered=[name for name, _ in candidates])
    what = "block" if plan.paths == ("",) else " + ".join(plan.paths)
    changed = {_join(plan.stack, i): f"{what} shared with {_join(plan.stack, group[0])}"
               for group in plan.groups for i in group[1:]}
    changed[plan.stack or "<model>"] = str(plan)
    return {"changed": changed}


register_handler(ShareLayersConfig, applies=_is_stack, prepare=_prepare)(lambda module, config, observer, name: None)

__all__ = ["ShareLayersConfig", "SharingPlan", "consecutive_groups", "share_layers_"]
