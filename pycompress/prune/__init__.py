"""Pruning: criteria, structures, schedules and masks (interoperable with torch.nn.utils.prune)."""

from pycompress.prune.masks import make_permanent, sparsity_report
from pycompress.prune.methods import PruneConfig, prune_, prune_gradually, scheduled_sparsity
from pycompress.prune.movement import MovementPruner
from pycompress.prune.oneshot import sparsegpt_prune, wanda_mask

__all__ = [
    "MovementPruner",
    "PruneConfig",
    "make_permanent",
    "prune_",
    "prune_gradually",
    "scheduled_sparsity",
    "sparsegpt_prune",
    "sparsity_report",
    "wanda_mask",
]
