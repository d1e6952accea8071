"""Rank allocation across layers under one global parameter budget.

Layer l (weight [N_l, K_l]) at rank r_l holds r_l (N_l + K_l) factor parameters and has the relative
error E_l(r_l) = sum_{i > r_l} s_{l,i}^2 / sum_i s_{l,i}^2, with s_l the singular values of the matrix
its method truncates (``pycompress.lowrank.factorize.spectrum``). Normalising by each layer's own
total lets layers of different scales compare. ``allocate_ranks`` minimises sum_l E_l(r_l) subject to
sum_l r_l (N_l + K_l) <= budget * sum_l N_l K_l, greedily: every layer starts at rank 1, then the next
singular value with the largest error reduction per parameter, s_{l,i}^2 / (total_l (N_l + K_l)), is
added while it fits. Each layer's gains fall with i, so every layer keeps a prefix of its spectrum.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor


def allocate_ranks(spectra: Sequence[Tensor], shapes: Sequence[tuple[int, int]], budget: float,
                   max_ranks: Optional[Sequence[int]] = None) -> list[int]:
    """Per-layer ranks (module docstring) for layers of weight ``shapes`` [(N, K), ...] with singular
    values ``spectra``; ``max_ranks`` caps each layer's rank (default min(N, K)). Raises ValueError when
    the budget cannot hold every layer at rank 1."""
    fn = "allocate_ranks"
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0.0 < budget <= 1.0:
        raise ValueError(f"{fn}: budget must be a fraction of the layers' parameters in (0, 1] (got {budget!r})")
    if len(spectra) != len(shapes) or not shapes:
        raise ValueError(f"{fn}: spectra and shapes must be non-empty and of equal length "
                         f"(got {len(spectra)} and {len(shapes)})")
    caps = [min(N, K) for N, K in shapes] if max_ranks is None else list(max_ranks)
    if len(caps) != len(shapes) or any(not 1 <= cap <= min(N, K) for cap, (N, K) in zip(caps, shapes)):
        raise ValueError(f"{fn}: max_ranks must give each layer a cap in [1, min(N, K)] (got {max_ranks!r})")
    costs = [N + K for N, K in shapes]
    dense = sum(N * K for N, K in shapes)
    limit = budget * dense
    spent = sum(costs)
    if spent > limit:
        raise ValueError(f"{fn}: a budget of {budget} ({limit:.0f} of {dense} parameters) is below the minimum "
                         f"reachable, {spent / dense:.4g} (every layer at rank 1: {spent} parameters)")
    gains, layers = [], []
    for layer, (s, cap) in enumerate(zip(spectra, caps)):
        power = s.detach().double().flatten().pow(2)
        total = power.sum()
        usable = power[1:cap]
        if total > 0 and usable.numel():
            gains.append(usable / (total * costs[layer]))
            layers.append(torch.full((usable.numel(),), layer))
    ranks = [1] * len(shapes)
    if not gains:
        return ranks
    # A stable sort keeps each layer's equal gains in index order, so ranks grow one by one.
    ratio, order = torch.sort(torch.cat(gains), descending=True, stable=True)
    owners = torch.cat(layers)[order]
    for gain, layer in zip(ratio.tolist(), owners.tolist()):
        if gain <= 0:
            break
        if spent + costs[layer] <= limit:
            ranks[layer] += 1
            spent += costs[layer]
    return ranks
