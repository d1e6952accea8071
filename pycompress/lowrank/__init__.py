"""Low-rank factorization: truncated SVD, data-aware (DRONE) and activation-whitened SVD."""

from pycompress.lowrank.configs import LowRankConfig
from pycompress.lowrank.factorize import factorize, rank_for_budget, rank_for_energy

__all__ = ["LowRankConfig", "factorize", "rank_for_budget", "rank_for_energy"]
