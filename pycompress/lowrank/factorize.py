"""Low-rank factorization of a weight W [N, K] into u [N, r] @ v [r, K].

Methods
    svd         truncated SVD of W: the best rank-r approximation in Frobenius norm of the weights.
    data_aware  the best rank-r approximation on the layer's inputs (DRONE, Chen et al. 2021): it
                minimises ||X W^T - X W'^T||_F over the calibration inputs X, whose statistics enter
                through the Gram matrix G = X^T X / n. With G = Q diag(lambda) Q^T and S = diag(sqrt(lambda))
                (directions with lambda ~ 0 dropped): W' = trunc_r(W Q S) S^-1 Q^T, in closed form.
    whitened    SVD of W L with L the Cholesky factor of G + damping (SVD-LLM): W' = trunc_r(W L) L^-1;
                the same optimum as data_aware up to the damping, without dropping directions.
    activation_scaled
                ASVD (Yuan et al. 2023): input column j of W is scaled by s_j = rms_j^alpha, with
                rms_j = sqrt(G_jj) the calibration RMS of input j (alpha = 0.5 by default):
                W' = trunc_r(W diag(s)) diag(1/s). Columns of heavily used inputs are kept best; only the
                diagonal of G is used. Inputs never active in calibration (s_j = 0) take the smallest
                positive scale, so their weights are still approximated (last) rather than divided by 0.
Every method is the rank-r truncation of one matrix A (W, W Q S, W L or W diag(s)) mapped back; the
singular values of A (``spectrum``) give the method's error at every rank: sum_{i>r} s_i^2.
Ranks: ``rank_for_energy`` (the smallest rank keeping a fraction of sum sigma^2) and
``rank_for_budget`` (the largest rank whose two factors hold at most a fraction of N K parameters).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor

METHODS = ("svd", "data_aware", "whitened", "activation_scaled")


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


def _check_method(fn: str, weight, method: str, gram: Optional[Tensor], alpha: float) -> Optional[Tensor]:
    """Validates the arguments; returns the float64 Gram matrix (None for svd)."""
    if not isinstance(weight, Tensor) or weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"{fn}: weight must be a 2-D floating-point tensor [N, K] (got {weight!r:.60})")
    if method not in METHODS:
        raise ValueError(f"{fn}: method must be one of {', '.join(METHODS)} (got {method!r})")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha < math.inf:
        raise ValueError(f"{fn}: alpha must be a finite number >= 0 (got {alpha!r})")
    if method == "svd":
        return None
    K = weight.shape[1]
    if gram is None or tuple(gram.shape) != (K, K):
        raise ValueError(f"{fn}: method={method!r} needs gram, the [K, K] = [{K}, {K}] Gram matrix of the "
                         f"layer's inputs (got {None if gram is None else list(gram.shape)})")
    G = gram.detach().double().to(weight.device)
    if not torch.isfinite(G).all():
        raise ValueError(f"{fn}: gram holds NaN or Inf")
    return G


def _problem(fn: str, W: Tensor, method: str, G: Optional[Tensor], damping: float,
             alpha: float) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """(A, back): the method's optimum is u = U_r S_r^1/2, v = back(S_r^1/2 Vh_r) for A = U S Vh."""
    if method == "svd":
        return W, lambda v: v
    if method == "data_aware":
        lam, Q = torch.linalg.eigh((G + G.T) / 2)
        keep = lam > lam.max().clamp(min=0) * 1e-10
        if not keep.any():
            raise ValueError(f"{fn}: gram is zero: the calibration inputs carry no signal")
        root = lam[keep].sqrt()
        basis = Q[:, keep]
        return W @ (basis * root), lambda v: (v / root) @ basis.T
    if method == "whitened":
        eye = torch.eye(G.shape[0], dtype=G.dtype, device=G.device)
        scale = G.diagonal().mean().clamp(min=1e-30)
        L = torch.linalg.cholesky(G + damping * scale * eye)
        return W @ L, lambda v: torch.linalg.solve_triangular(L, v, upper=False, left=False)
    s = G.diagonal().clamp(min=0).sqrt().pow(alpha)
    live = s > 0
    if not live.any():
        raise ValueError(f"{fn}: gram has a zero diagonal: the calibration inputs carry no signal")
    s = torch.where(live, s, s[live].min())
    return W * s, lambda v: v / s


def spectrum(weight: Tensor, method: str = "svd", gram: Optional[Tensor] = None, damping: float = 1e-6,
             alpha: float = 0.5) -> Tensor:
    """The singular values (float64, descending) of the matrix whose truncation ``factorize`` takes: the
    squared error of rank r, in the method's own measure, is the sum of the squares after the first r."""
    G = _check_method("spectrum", weight, method, gram, alpha)
    A, _ = _problem("spectrum", weight.detach().double(), method, G, damping, alpha)
    return torch.linalg.svdvals(A)


def factorize(weight: Tensor, rank: int, method: str = "svd", gram: Optional[Tensor] = None,
              damping: float = 1e-6, alpha: float = 0.5) -> tuple[Tensor, Tensor]:
    """(u [N, r], v [r, K]) in weight.dtype with u @ v ~ weight, by ``method`` (module docstring).
    ``gram`` [K, K] is X^T X / n of the layer's inputs (every method but svd); ``damping`` is the
    whitened method's, ``alpha`` the activation_scaled exponent."""
    G = _check_method("factorize", weight, method, gram, alpha)
    N, K = weight.shape
    _check_rank("factorize", rank, N, K)
    A, back = _problem("factorize", weight.detach().double(), method, G, damping, alpha)
    U, S, Vh = torch.linalg.svd(A, full_matrices=False)
    # data_aware's A has only as many columns as the inputs have directions: the missing components
    # are zero, so the factors are padded to the asked rank.
    r = min(rank, S.numel())
    u, v = _split(U, S, Vh, r)
    v = back(v)
    if r < rank:
        u = torch.cat([u, u.new_zeros(N, rank - r)], 1)
        v = torch.cat([v, v.new_zeros(rank - r, K)], 0)
    return u.to(weight.dtype).contiguous(), v.to(weight.dtype).contiguous()
