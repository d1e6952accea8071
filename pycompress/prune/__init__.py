"""Pruning: criteria, structures, schedules and masks (interoperable with torch.nn.utils.prune), and
physical structured pruning (channels, attention heads, FFN neurons, whole layers)."""

from pycompress.prune.layers import block_influence, prune_layers_
from pycompress.prune.masks import make_permanent, sparsity_report
from pycompress.prune.methods import PruneConfig, prune_, prune_gradually, scheduled_sparsity
from pycompress.prune.movement import MovementPruner
from pycompress.prune.oneshot import sparsegpt_prune, wanda_mask
from pycompress.prune.physical import (
    StructuredPruneConfig,
    count_macs,
    count_params,
    ffn_importance,
    head_importance,
    prune_channels_,
    prune_ffn_,
    prune_heads_,
    structured_prune_,
    trace_channel_groups,
)

__all__ = [
    "MovementPruner",
    "PruneConfig",
    "StructuredPruneConfig",
    "block_influence",
    "count_macs",
    "count_params",
    "ffn_importance",
    "head_importance",
    "make_permanent",
    "prune_",
    "prune_channels_",
    "prune_ffn_",
    "prune_gradually",
    "prune_heads_",
    "prune_layers_",
    "scheduled_sparsity",
    "sparsegpt_prune",
    "sparsity_report",
    "structured_prune_",
    "trace_channel_groups",
    "wanda_mask",
]
