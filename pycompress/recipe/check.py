"""check_recipe: the whole recipe checked against the model before anything runs.

The check walks the stages over the model's module names and tracks, per layer, whether it is still
plain or which packed format a stage turns it into, without running any stage. It assumes that a stage
packs every layer it is offered (a layer its handler leaves dense at run time just stays plain). Rules:

- a stage's pattern must match a module (of the kinds its config applies to, for compress_ configs);
- its config must be a compress_ config (``pycompress.register_handler``) or a registered stage type;
- a stage with pattern None is offered every module its config applies to that is still plain at that
  point, so that a later "everything else" stage takes the layers earlier stages left dense; an explicit
  pattern that names a layer an earlier stage packs is rejected (a packed layer cannot be packed again);
- a training stage (``register_stage(..., trains=True)``) must not follow a stage that packs layers into
  a format without trainable weights (int8, 2:4, CSR/BSR, binary, ternary); low-rank factors, codebooks,
  separable convolutions and factorized embeddings train;
- a structural stage (StructuredPruneConfig, ShareLayersConfig, PruneLayersConfig, ...) must not follow
  a stage that packs a layer it would reshape. Channel pruning reshapes the layers that read the pruned
  ones too, which only tracing the model tells, so it must come before every stage that packs layers.
"""

from __future__ import annotations

import dataclasses
from fnmatch import fnmatchcase
from typing import Callable, Optional

from torch import nn

from pycompress.recipe.core import Recipe, RecipeError, stage_labels
from pycompress.recipe.stages import stage_type

# Formats whose modules keep their weights as nn.Parameters that training updates.
TRAINABLE_FORMATS = frozenset({"lowrank", "codebook", "separable_conv2d", "factorized_embedding"})

_OUTPUTS: dict = {}
_RESHAPES: dict = {}


def register_output(config_type: type, produces: Callable) -> None:
    """Tell check_recipe what ``compress_`` with a ``config_type`` config turns an offered module into:
    ``produces(module, config, name) -> packed module type, or None when the module stays plain``.
    A compress_ config without one is taken to pack every offered layer into a format that cannot
    train."""
    _OUTPUTS[config_type] = produces


def _always(module_type: type) -> Callable:
    return lambda module, config, name: module_type


def _register_builtin_outputs() -> None:
    from pycompress.lowrank import LowRankConfig, SeparableConvConfig
    from pycompress.nn import (BinaryConv2d, BinaryLinear, CodebookLinear, Int8Conv2d, Int8Linear, Int8StaticLinear,
                               LowRankLinear, SeparableConv2d, Sparse24Linear, SparseLinear, TernaryLinear,
                               WeightOnlyInt8Linear)
    from pycompress.prune.configs import Sparse24Config, SparseConfig, StructuredPruneConfig
    from pycompress.quant.configs import (BinaryConfig, Int8Config, Int8StaticConfig, Int8WeightOnlyConfig,
                                          TernaryConfig)
    from pycompress.quant.mixed import MixedPrecisionConfig
    from pycompress.share import ClusterConfig, FactorizedEmbedding, FactorizedEmbeddingConfig, ShareLayersConfig

    register_output(Int8Config, lambda m, c, n: Int8Conv2d if isinstance(m, nn.Conv2d) else Int8Linear)
    register_output(BinaryConfig, lambda m, c, n: BinaryConv2d if isinstance(m, nn.Conv2d) else BinaryLinear)
    register_output(MixedPrecisionConfig,
                    lambda m, c, n: WeightOnlyInt8Linear if c.plan.get(n, c.default_bits) is not None else None)
    for config_type, module_type in ((Int8StaticConfig, Int8StaticLinear), (Int8WeightOnlyConfig, WeightOnlyInt8Linear),
                                     (TernaryConfig, TernaryLinear), (Sparse24Config, Sparse24Linear),
                                     (SparseConfig, SparseLinear), (LowRankConfig, LowRankLinear),
                                     (ClusterConfig, CodebookLinear), (SeparableConvConfig, SeparableConv2d),
                                     (FactorizedEmbeddingConfig, FactorizedEmbedding)):
        register_output(config_type, _always(module_type))
    _RESHAPES[StructuredPruneConfig] = _structured_reshapes
    _RESHAPES[ShareLayersConfig] = _share_reshapes


def trainable(module_type: Optional[type]) -> bool:
    """Whether a packed module type keeps trainable weights (None, an unknown format: no)."""
    return module_type is not None and getattr(module_type, "format_name", None) in TRAINABLE_FORMATS


@dataclasses.dataclass
class _Packed:
    module_type: Optional[type]
    stage: int
    label: str

    def describe(self) -> str:
        if self.module_type is None:
            return "an unknown packed format"
        return f"{self.module_type.format_name} ({self.module_type.__name__})"


class _Model:
    """The model as the stages so far leave it: module names, the original module under each name (for
    the handlers' ``applies``), and the packed layers."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.modules = dict(model.named_modules())
        self.names = list(self.modules)
        self.packed: dict = {}

    def matching(self, pattern: Optional[str]) -> list:
        return [n for n in self.names if pattern is None or fnmatchcase(n, pattern)]

    def packed_within(self, roots) -> dict:
        """Packed layers at or below any of the module names ``roots`` (None: anywhere)."""
        def inside(name):
            return roots is None or any(r == "" or name == r or name.startswith(r + ".") for r in roots)
        return {name: p for name, p in self.packed.items() if inside(name)}


def _names(names, limit: int = 4) -> str:
    shown = ", ".join(repr(n) for n in list(names)[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _by_stage(packed: dict) -> str:
    """'stage 1 'sparse' packs 'a', 'b' into sparse24 (Sparse24Linear)' for each packing stage."""
    groups: dict = {}
    for name, p in packed.items():
        groups.setdefault((p.stage, p.label, p.describe()), []).append(name)
    return "; ".join(f"stage {stage} {label!r} packs {_names(names)} into {what}"
                     for (stage, label, what), names in sorted(groups.items(), key=lambda kv: kv[0][0]))


def _config_name(config) -> str:
    target = getattr(config, "target", None)
    return f"{type(config).__name__}(target={target!r})" if isinstance(target, str) else type(config).__name__


def _structured_reshapes(model: nn.Module, config, pattern: Optional[str], state: _Model) -> Optional[list]:
    from pycompress.prune.physical import attention_blocks, ffn_blocks

    if config.target == "channels":
        return None
    if pattern is not None:
        raise ValueError(f"target={config.target!r} prunes every BERT-style block; a pattern cannot limit it "
                         f"(got pattern {pattern!r}); use pattern None")
    if config.target == "heads":
        parts, found, what = ("self.query", "self.key", "self.value", "output.dense"), attention_blocks(model), \
            "attention (module.self.query/key/value and module.output.dense)"
    else:
        parts, found, what = ("intermediate.dense", "output.dense"), ffn_blocks(model), \
            "FFN (module.intermediate.dense and module.output.dense)"
    present = set(state.names)
    layers = [f"{block}.{part}" for block, _ in found for part in parts if f"{block}.{part}" in present]
    if not layers:
        raise ValueError(f"the model has no BERT-style {what}")
    return layers


def _share_reshapes(model: nn.Module, config, pattern: Optional[str], state: _Model) -> list:
    from pycompress.share.layers import _find_stack, _join, _part_paths, consecutive_groups

    offered = [n for n in state.matching(pattern) if isinstance(state.modules[n], (nn.ModuleList, nn.Sequential))]
    name, stack = _find_stack(model, config.blocks, offered)
    prefix = f"{name}." if name else ""
    length = len({n[len(prefix):].split(".")[0] for n in state.names
                  if n.startswith(prefix) and n[len(prefix):].split(".")[0].isdigit()})
    groups = config.groups if config.groups is not None else consecutive_groups(length, config.num_shared)
    beyond = [i for group in groups for i in group if i >= length]
    if beyond:
        raise ValueError(f"groups name blocks {beyond}, beyond the {length} blocks of {name!r}")
    grouped = [i for group in groups if len(group) > 1 for i in group]
    if not grouped:
        raise ValueError("no group holds 2 or more blocks, nothing to share")
    paths = _part_paths(stack[grouped[0]], config.part, _join(name, grouped[0]))
    return [_join(_join(name, i), path) if path else _join(name, i) for i in grouped for path in paths]


def _check_structural(state: _Model, index: int, label: str, what: str, reshaped: Optional[list]) -> None:
    clash = state.packed_within(reshaped)
    if not clash:
        return
    if reshaped is None:
        reason = (f"{what} may reshape any layer (for channels: the pruned layers and the layers that read them, "
                  "known only by tracing the model), but earlier stages pack layers")
    else:
        reason = f"{what} reshapes {_names(reshaped)}, but earlier stages pack layers among them"
    raise RecipeError(f"check_recipe: stage {index} {label!r}: {reason}: {_by_stage(clash)}; structural stages must "
                      "come before the stages that pack the layers they reshape")


def _check_compress(state: _Model, index: int, label: str, stage, handler) -> None:
    config, pattern = stage.config, stage.pattern
    name = _config_name(config)
    matched = state.matching(pattern)
    if pattern is not None and not matched:
        example = next((n for n in state.names if n), "")
        raise RecipeError(f"check_recipe: stage {index} {label!r}: pattern {pattern!r} matches no module of the model "
                          f"(module names look like {example!r})")
    applicable = [n for n in matched if handler.applies(state.modules[n])]
    if pattern is not None and not applicable:
        raise RecipeError(f"check_recipe: stage {index} {label!r}: pattern {pattern!r} matches {_names(matched)}, "
                          f"none of which {name} applies to")
    reshapes = _RESHAPES.get(type(config))
    if reshapes is not None:
        try:
            reshaped = reshapes(state.model, config, pattern, state)
        except ValueError as exc:
            raise RecipeError(f"check_recipe: stage {index} {label!r}: {name}: {exc}") from exc
        _check_structural(state, index, label, name, reshaped)
        return
    if pattern is not None:
        clash = {n: state.packed[n] for n in applicable if n in state.packed}
        if clash:
            raise RecipeError(f"check_recipe: stage {index} {label!r}: pattern {pattern!r} names layers that an "
                              f"earlier stage packs: {_by_stage(clash)}; a packed layer cannot be packed again by "
                              f"{name} (pattern None offers only the layers still dense)")
    produces = _OUTPUTS.get(type(config))
    for n in applicable:
        if n in state.packed:
            continue
        module_type = produces(state.modules[n], config, n) if produces is not None else None
        if produces is None or module_type is not None:
            state.packed[n] = _Packed(module_type, index, label)


def _check_stage_type(state: _Model, index: int, label: str, stage, kind) -> None:
    config, pattern = stage.config, stage.pattern
    name = type(config).__name__
    if pattern is not None and not state.matching(pattern):
        raise RecipeError(f"check_recipe: stage {index} {label!r}: pattern {pattern!r} matches no module of the model")
    if kind.trains:
        frozen = {n: p for n, p in state.packed.items() if not trainable(p.module_type)}
        if frozen:
            raise RecipeError(f"check_recipe: stage {index} {label!r}: {name} trains, but {_by_stage(frozen)}, which "
                              f"hold no trainable weights; train before those stages (formats that train: "
                              f"{', '.join(sorted(TRAINABLE_FORMATS))})")
    if kind.structural:
        try:
            reshaped = kind.reshapes(state.model, config) if kind.reshapes is not None else None
        except ValueError as exc:
            raise RecipeError(f"check_recipe: stage {index} {label!r}: {name}: {exc}") from exc
        _check_structural(state, index, label, name, reshaped)
    if kind.names_after is not None:
        try:
            state.names = list(kind.names_after(state.model, config, list(state.names)))
        except ValueError as exc:
            raise RecipeError(f"check_recipe: stage {index} {label!r}: {name}: {exc}") from exc


def check_recipe(model: nn.Module, recipe: Recipe) -> None:
    """Raise RecipeError, naming the stage (index and label), the layers and the reason, when ``recipe``
    cannot run on ``model`` (rules: module docstring). Runs nothing and changes nothing."""
    from pycompress.api import _HANDLERS

    if not isinstance(model, nn.Module):
        raise TypeError(f"check_recipe: model must be an nn.Module (got {type(model).__name__})")
    if not isinstance(recipe, Recipe):
        raise TypeError(f"check_recipe: recipe must be a pycompress.recipe.Recipe (got {type(recipe).__name__})")
    if not recipe.stages:
        raise RecipeError(f"check_recipe: recipe {recipe.name!r} has no stages")
    labels = stage_labels(recipe)
    state = _Model(model)
    for index, (stage, label) in enumerate(zip(recipe.stages, labels)):
        handler = _HANDLERS.get(type(stage.config))
        kind = stage_type(type(stage.config))
        if handler is not None:
            _check_compress(state, index, label, stage, handler)
        elif kind is not None:
            _check_stage_type(state, index, label, stage, kind)
        else:
            raise RecipeError(f"check_recipe: stage {index} {label!r}: {type(stage.config).__name__} is neither a "
                              "compress_ config (pycompress.register_handler) nor a registered stage type "
                              "(pycompress.recipe.register_stage)")


_register_builtin_outputs()
