"""Pruning: criteria, structures, schedules and masks (interoperable with torch.nn.utils.prune)."""

from pycompress.prune.masks import make_permanent, sparsity_report
from pycompress.prune.methods import PruneConfig, prune_, prune_gradually, scheduled_sparsity

__all__ = ["PruneConfig", "make_permanent", "prune_", "prune_gradually", "scheduled_sparsity", "sparsity_report"]
