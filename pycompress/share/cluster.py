"""Weight clustering (Deep Compression, Han et al. 2016): k-means over a layer's weights, and
``ClusterConfig``, which turns every nn.Linear into a CodebookLinear.

A weight w [N, K] becomes b-bit indices into a codebook of 2^b shared values, one codebook for the
whole tensor (G = 1) or one per output channel (G = N). Clustering is 1-D Lloyd's k-means per group:
the centroids are kept sorted, so the nearest centroid of every weight is found with a binary search
over the midpoints (O(NK log C) time, no [N, K, C] distance tensor), and each centroid moves to the
(weighted) mean of its weights. A cluster left empty is moved onto the weight that the current
codebook represents worst.

With ``importance`` (one non-negative value per input column) the k-means minimises
sum_{n,k} importance[k] (w[n, k] - c(n, k))^2. With importance = diag(X^T X), the calibration inputs'
energy per input column, this is the layer's output error E||X (W - W_c)^T||^2 when the input columns
are uncorrelated, so weights that meet large activations get the more accurate codes.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import Tensor, nn

from pycompress.api import register_handler
from pycompress.nn.codebook import CodebookLinear, check_cluster_bits
from pycompress.quant.configs import linear_skip_reason

INITS = ("linear", "quantile")


def _check_kmeans_args(w, bits, per_channel, importance, init, iters) -> None:
    op = "kmeans_weights"
    check_cluster_bits(op, bits)
    if not isinstance(per_channel, bool):
        raise TypeError(f"{op}: per_channel must be a bool (got {type(per_channel).__name__} {per_channel!r})")
    if not isinstance(w, Tensor):
        raise TypeError(f"{op}: w must be a floating-point tensor [N, K] (got {type(w).__name__})")
    if w.dim() != 2 or not w.dtype.is_floating_point or w.numel() == 0:
        raise ValueError(f"{op}: w must be a non-empty floating-point tensor [N, K] "
                         f"(got {str(w.dtype).replace('torch.', '')} {list(w.shape)})")
    if not torch.isfinite(w).all():
        raise ValueError(f"{op}: w must be finite (it holds NaN or Inf values)")
    if importance is not None:
        if not isinstance(importance, Tensor) or not importance.dtype.is_floating_point \
                or tuple(importance.shape) != (w.shape[1],):
            raise ValueError(f"{op}: importance must be None or a floating-point tensor [K] = [{w.shape[1]}] "
                             f"(got {importance!r:.80})")
        if not torch.isfinite(importance).all() or bool((importance < 0).any()):
            raise ValueError(f"{op}: importance must be finite and >= 0")
    if init not in INITS:
        raise ValueError(f"{op}: init must be one of {', '.join(INITS)} (got {init!r})")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"{op}: iters must be an int >= 1 (got {iters!r})")


def _initial_centroids(data: Tensor, clusters: int, init: str) -> Tensor:
    """Sorted [G, C] starting centroids of each row of ``data`` [G, L]."""
    if init == "linear":
        # Deep Compression's recommendation: evenly spaced over [min, max], so that the rare large
        # weights, which matter most, start with centroids of their own.
        lo, hi = data.amin(1, keepdim=True), data.amax(1, keepdim=True)
        steps = torch.linspace(0.0, 1.0, clusters, device=data.device)
        return lo + (hi - lo) * steps
    # Quantiles at the centres of C equal-count bins: the density of the weights decides.
    L = data.shape[1]
    positions = ((torch.arange(clusters, device=data.device) + 0.5) * L / clusters).long().clamp(max=L - 1)
    return data.sort(1).values[:, positions]


def _nearest(data: Tensor, centroids: Tensor) -> Tensor:
    """Index [G, L] of the nearest of the sorted ``centroids`` [G, C] to each entry of ``data``."""
    midpoints = ((centroids[:, 1:] + centroids[:, :-1]) / 2).contiguous()
    return torch.searchsorted(midpoints, data)


def _update(data: Tensor, weights: Tensor, assign: Tensor, centroids: Tensor) -> Tensor:
    """One Lloyd step: weighted means of the clusters, empty clusters moved, result sorted."""
    zeros = torch.zeros_like(centroids)
    sums = zeros.scatter_add(1, assign, data * weights)
    mass = zeros.scatter_add(1, assign, weights)
    counts = zeros.scatter_add(1, assign, torch.ones_like(data))
    updated = torch.where(counts > 0, sums / mass.clamp_min(torch.finfo(mass.dtype).tiny), centroids)
    empty = counts == 0
    if bool(empty.any()):
        # The i-th empty cluster of a group takes that group's i-th worst-represented weight; where
        # every weight is already represented exactly, the cluster keeps its old value.
        error = weights * (data - updated.gather(1, assign)).square()
        k = min(int(empty.sum(1).max()), data.shape[1])
        worst_error, worst_at = error.topk(k, dim=1)
        order = empty.cumsum(1)  # 1-based rank of each empty cluster within its group
        rank = (order - 1).clamp(0, k - 1)
        take = empty & (order <= k) & (worst_error.gather(1, rank) > 0)
        updated = torch.where(take, data.gather(1, worst_at.gather(1, rank)), updated)
    return updated.sort(1).values


@torch.no_grad()
def kmeans_weights(w: Tensor, bits: int, per_channel: bool = False, *, importance: Optional[Tensor] = None,
                   init: str = "quantile", iters: int = 30) -> tuple[Tensor, Tensor]:
    """k-means clustering of the weight ``w`` [N, K] into 2^bits values (bits 2..8).

    Returns ``(indices, centroids)``: indices int64 [N, K] into row g(n) of centroids float32 [G, 2^bits]
    (G = N with ``per_channel``, else 1), each weight assigned its nearest centroid, the centroids of each
    row sorted ascending. ``importance`` [K] >= 0 weights the squared error of input column k (see the
    module docstring). ``init``: "quantile" (the centres of 2^bits equal-count bins) or "linear" (evenly
    spaced over [min, max], as Deep Compression recommends); quantile starts need fewer Lloyd steps and
    gave the better MiniLM fidelity (tests/share/test_minilm_cluster.py). At most ``iters`` Lloyd steps;
    it stops early when no assignment changes. Deterministic.
    """
    _check_kmeans_args(w, bits, per_channel, importance, init, iters)
    N, K = w.shape
    groups = N if per_channel else 1
    data = w.detach().float().reshape(groups, -1).contiguous()
    if importance is None:
        weights = torch.ones_like(data)
    else:
        # Relative to the mean, with a floor, so that columns that saw no input still pull their
        # centroids a little and no non-empty cluster has zero mass.
        rel = importance.detach().double().to(data.device)
        rel = (rel / rel.mean().clamp_min(torch.finfo(torch.float64).tiny)).clamp_min(1e-6).float()
        weights = rel.expand(N, K).reshape(groups, -1).contiguous()
    centroids = _initial_centroids(data, 2**bits, init)
    assign = _nearest(data, centroids)
    for _ in range(iters):
        centroids = _update(data, weights, assign, centroids)
        previous, assign = assign, _nearest(data, centroids)
        if torch.equal(previous, assign):
            break
    return assign.reshape(N, K), centroids


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    """Weight clustering of every nn.Linear into a CodebookLinear with 2^``bits`` shared values
    (bits 2..8), one codebook per output channel (``per_channel``) or per tensor. ``weighted``:
    importance-weighted k-means by the calibration inputs' energy per input column (needs
    calibration data); on MiniLM it helps per-tensor codebooks clearly and per-channel ones little.
    ``init`` and ``iters`` as in ``kmeans_weights``."""

    bits: int = 4
    per_channel: bool = True
    weighted: bool = False
    init: str = "quantile"
    iters: int = 30

    def __post_init__(self):
        check_cluster_bits("ClusterConfig", self.bits)
        for field in ("per_channel", "weighted"):
            value = getattr(self, field)
            if not isinstance(value, bool):
                raise TypeError(f"ClusterConfig: {field} must be a bool (got {type(value).__name__} {value!r})")
        if self.init not in INITS:
            raise ValueError(f"ClusterConfig: init must be one of {', '.join(INITS)} (got {self.init!r})")
        if isinstance(self.iters, bool) or not isinstance(self.iters, int) or self.iters < 1:
            raise ValueError(f"ClusterConfig: iters must be an int >= 1 (got {self.iters!r})")


class ActivationEnergyObserver:
    """Accumulates diag(X^T X), the sum of squares of each input column of a layer (float64)."""

    def __init__(self):
        self.energy: Optional[Tensor] = None

    def update(self, x: Tensor, name: str = "activation") -> None:
        rows = x.detach().reshape(-1, x.shape[-1]).double()
        if not torch.isfinite(rows).all():
            raise ValueError(f"calibration: the input of {name} holds NaN or Inf")
        energy = rows.square().sum(0)
        self.energy = energy if self.energy is None else self.energy + energy


def _observer(config: ClusterConfig):
    return ActivationEnergyObserver if config.weighted else None


@register_handler(ClusterConfig, observer=_observer)
def _cluster(module: nn.Linear, config: ClusterConfig, observer, name: str):
    reason = linear_skip_reason(module)
    if reason:
        return reason
    importance = None
    if observer is not None:
        if observer.energy is None:
            return "the calibration batches never reached this layer (no input energy to weight by)"
        importance = observer.energy
    indices, centroids = kmeans_weights(module.weight, config.bits, config.per_channel, importance=importance,
                                        init=config.init, iters=config.iters)
    return CodebookLinear.from_clusters(module, indices, centroids, config.per_channel)
