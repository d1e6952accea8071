"""Low-rank factorization of a weight W [N, K] into u [N, r] @ v [r, K].

Methods
    svd         truncated SVD of W: the best rank-r approximation in Frobenius norm of the weights.
    data_aware  the best rank-r approximation on the layer's inputs (DRONE, Chen et al. 2021): it
                minimises ||X W^T - X W'^T||_F over the calibration inputs X, whose statistics enter
                through the Gram matrix G = X^T X / n. With G = Q diag(lambda) Q^T and S = diag(sqrt(lambda))
                (directions with lambda ~ 0 dropped): W' = trunc_r(W Q S) S^-1 Q^T, in closed form.
    whitened    SVD of W L with L the Cholesky factor of G + damping (SVD-LLM): W' = trunc_r(W L) L^-1;
                the same optimum as data_aware up to the damping, without dropping directions.
Ranks: ``rank_for_energy`` (the smallest rank keeping a fraction of sum sigma^2) and
``rank_for_budget`` (the largest rank whose two factors hold at most a fraction of N K parameters).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

METHODS = ("svd", "data_aware", "whitened")


def _check_rank(fn: str, rank, N: int, K: int) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= min(N, K):
        raise ValueError(f"{fn}: rank must be an int in [1, min(N, K)] = [1, {min(N, K)}] for a weight "
                         f"[{N}, {K}] (got {rank!r})")


def rank_for_energy(singular_values: Tensor, energy: float) -> int:
    """The smallest r with sum(s[:r]^2) >= energy * sum(s^2)."""
    if isinstance(energy, bool) or not isinstance(energy, (int, float)) or not 0.0 < energy <= 1.0:
        raise ValueError(f"rank_for_energy: energy must be a number in (0, 1] (got {energy!r})")
    power = singular_values.double().pow(2)
    total = power.sum()
    if total == 0:
        return 1
    cumulative = power.cumsum(0) / total
    return min(int((cumulative < energy - 1e-12).sum().item()) + 1, singular_values.numel())


def rank_for_budget(N: int, K: int, budget: float) -> int:
    """The largest r with r (N + K) <= budget * N * K (at least 1)."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0.0 < budget <= 1.0:
        raise ValueError(f"rank_for_budget: budget must be a fraction of the layer's parameters in (0, 1] "
                         f"(got {budget!r})")
    rank = math.floor(budget * N * K / (N + K))
    if rank < 1:
        raise ValueError(f"rank_for_budget: a budget of {budget} of a [{N}, {K}] weight ({budget * N * K:.0f} "
                         f"parameters) cannot hold one rank-1 pair of factors ({N + K} parameters)")
    return min(rank, min(N, K))


def _split(U: Tensor, S: Tensor, Vh: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    root = S[:rank].sqrt()
    return U[:, :rank] * root, root[:, None] * Vh[:rank]


def factorize(weight: Tensor, rank: int, method: str = "svd", gram: Optional[Tensor] = None,
              damping: float = 1e-6) -> tuple[Tensor, Tensor]:
    """(u [N, r], v [r, K]) in weight.dtype with u @ v ~ weight, by ``method`` (module docstring).
    ``gram`` [K, K] is X^T X / n of the layer's inputs (data_aware and whitened)."""
    if not isinstance(weight, Tensor) or weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"factorize: weight must be a 2-D floating-point tensor [N, K] (got {weight!r:.60})")
    N, K = weight.shape
    _check_rank("factorize", rank, N, K)
    if method not in METHODS:
        raise ValueError(f"factorize: method must be one of {', '.join(METHODS)} (got {method!r})")
    W = weight.detach().double()
    if method == "svd":
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        u, v = _split(U, S, Vh, rank)
    else:
        if gram is None or tuple(gram.shape) != (K, K):
            raise ValueError(f"factorize: method={method!r} needs gram, the [K, K] = [{K}, {K}] Gram matrix of the "
                             f"layer's inputs (got {None if gram is None else list(gram.shape)})")
        G = gram.detach().double().to(W.device)
        if not torch.isfinite(G).all():
            raise ValueError("factorize: gram holds NaN or Inf")
        if method == "data_aware":
            lam, Q = torch.linalg.eigh((G + G.T) / 2)
            keep = lam > lam.max().clamp(min=0) * 1e-10
            if not keep.any():
                raise ValueError("factorize: gram is zero: the calibration inputs carry no signal")
            root = lam[keep].sqrt()
            basis = Q[:, keep]
            U, S, Vh = torch.linalg.svd(W @ (basis * root), full_matrices=False)
            r = min(rank, S.numel())
            u, v = _split(U, S, Vh, r)
            v = (v / root) @ basis.T
            if r < rank:
                u = torch.cat([u, u.new_zeros(N, rank - r)], 1)
                v = torch.cat([v, v.new_zeros(rank - r, K)], 0)
        else:
            eye = torch.eye(K, dtype=G.dtype, device=G.device)
            scale = G.diagonal().mean().clamp(min=1e-30)
            L = torch.linalg.cholesky(G + damping * scale * eye)
            U, S, Vh = torch.linalg.svd(W @ L, full_matrices=False)
            u, v = _split(U, S, Vh, rank)
            v = torch.linalg.solve_triangular(L, v, upper=False, left=False)
    return u.to(weight.dtype).contiguous(), v.to(weight.dtype).contiguous()
