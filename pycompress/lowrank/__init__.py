"""Low-rank factorization: truncated SVD, data-aware (DRONE), activation-whitened and activation-scaled
(ASVD) SVD with per-layer or global rank allocation; depthwise-separable factorization of convs."""

from pycompress.lowrank.allocate import allocate_ranks
from pycompress.lowrank.configs import LowRankConfig
from pycompress.lowrank.factorize import factorize, rank_for_budget, rank_for_energy, spectrum
from pycompress.lowrank.separable import SeparableConvConfig, SeparableReport, separable_

__all__ = [
    "LowRankConfig",
    "SeparableConvConfig",
    "SeparableReport",
    "allocate_ranks",
    "factorize",
    "rank_for_budget",
    "rank_for_energy",
    "separable_",
    "spectrum",
]
