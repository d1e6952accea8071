"""Stage types that ship with pycompress: whole-layer removal."""

from __future__ import annotations

import dataclasses
from typing import Optional

from torch import nn

from pycompress.recipe.stages import register_stage


@dataclasses.dataclass(frozen=True)
class PruneLayersConfig:
    """Whole blocks removed from the stack ``blocks`` (pycompress.prune.layers.prune_layers_): the ``n``
    blocks, or the fraction ``amount`` of them (rounded), with the lowest block influence on the
    recipe's calibration data, or exactly the block indices ``remove``. Exactly one of n, amount,
    remove. The blocks left are renumbered 0, 1, ...; a later stage's pattern uses the new numbers."""

    n: Optional[int] = None
    amount: Optional[float] = None
    remove: Optional[tuple] = None
    blocks: str = "encoder.layer"

    def __post_init__(self):
        name = "PruneLayersConfig"
        given = [field for field in ("n", "amount", "remove") if getattr(self, field) is not None]
        if len(given) != 1:
            raise ValueError(f"{name}: give exactly one of n (blocks to remove), amount (a fraction) or remove "
                             f"(block indices) (got {', '.join(given) or 'none'})")
        if self.n is not None and (isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1):
            raise ValueError(f"{name}: n must be an int >= 1, the number of blocks to remove (got {self.n!r})")
        if self.amount is not None and (isinstance(self.amount, bool) or not isinstance(self.amount, (int, float))
                                        or not 0.0 < self.amount < 1.0):
            raise ValueError(f"{name}: amount must be a number in (0, 1), the fraction of blocks to remove "
                             f"(got {self.amount!r})")
        if self.remove is not None:
            remove = self.remove
            if isinstance(remove, (str, bytes)) or not isinstance(remove, (list, tuple)) or not remove or any(
                    isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in remove) \
                    or len(set(remove)) != len(remove):
                raise ValueError(f"{name}: remove must be a non-empty sequence of distinct block indices (ints >= 0) "
                                 f"(got {remove!r})")
            object.__setattr__(self, "remove", tuple(remove))
        if not isinstance(self.blocks, str) or not self.blocks:
            raise ValueError(f"{name}: blocks must be the dotted name of the stack of blocks (got {self.blocks!r})")

    def removed_count(self, total: int) -> int:
        """How many of ``total`` blocks go (ValueError when that leaves none or names a missing block)."""
        if self.remove is not None:
            beyond = [i for i in self.remove if i >= total]
            if beyond:
                raise ValueError(f"remove names blocks {beyond}, beyond the {total} blocks of {self.blocks!r}")
            count = len(self.remove)
        else:
            count = self.n if self.n is not None else int(round(self.amount * total))
        if count >= total:
            raise ValueError(f"removing {count} of the {total} blocks of {self.blocks!r} leaves none")
        return count


def _stack_indices(blocks: str, names) -> list:
    prefix = blocks + "."
    heads = {n[len(prefix):].split(".")[0] for n in names if n.startswith(prefix)}
    return sorted(int(h) for h in heads if h.isdigit())


def _reshapes(model: nn.Module, config: PruneLayersConfig) -> list:
    try:
        stack = model.get_submodule(config.blocks)
    except AttributeError as exc:
        raise ValueError(f"blocks={config.blocks!r} names no submodule of the model") from exc
    if not isinstance(stack, (nn.ModuleList, nn.Sequential)):
        raise ValueError(f"blocks={config.blocks!r} must name an nn.ModuleList or nn.Sequential "
                         f"(got {type(stack).__name__})")
    return [config.blocks]


def _names_after(model: nn.Module, config: PruneLayersConfig, names: list) -> list:
    # The blocks left are renumbered from 0, so whichever blocks go, the last indices disappear.
    total = len(_stack_indices(config.blocks, names))
    kept = total - config.removed_count(total)
    prefix = config.blocks + "."
    return [n for n in names
            if not (n.startswith(prefix) and n[len(prefix):].split(".")[0].isdigit()
                    and int(n[len(prefix):].split(".")[0]) >= kept)]


def _run(model: nn.Module, stage, context) -> dict:
    from pycompress.prune.layers import prune_layers_

    config = stage.config
    before = list(model.get_submodule(config.blocks))
    prune_layers_(model, config.n, amount=config.amount, remove=config.remove, data=context.calibration,
                  blocks=config.blocks)
    after = model.get_submodule(config.blocks)
    kept = {id(block) for block in after}
    return {"removed": [i for i, block in enumerate(before) if id(block) not in kept],
            "blocks": f"{len(before)} -> {len(after)}"}


register_stage(PruneLayersConfig, _run, structural=True, reshapes=_reshapes, names_after=_names_after)
