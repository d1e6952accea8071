"""Binary (XNOR-Net) and ternary (TWN) weight quantization.

binarize_weight:  W ~= alpha[n] * sign(W[n, k]),  alpha[n] = mean_k |W[n, k]|   (sign(0) = +1)
ternarize_weight: delta[n] = 0.7 * mean_k |W[n, k]|,  t = sign(W) where |W| > delta else 0,
                  alpha[n] = mean of |W[n, k]| over the kept entries (0 for a row with none)
Activations of W1A1 layers are binarized per token the same way: x ~= beta[m] * sign(x[m, k]).
"""

from __future__ import annotations

import torch
from torch import Tensor

TWN_THRESHOLD = 0.7


def binarize_weight(w: Tensor) -> tuple[Tensor, Tensor]:
    """(signs float32 in {-1, +1} [N, K], alpha float32 [N])."""
    w = w.detach().float()
    signs = torch.where(w < 0, -1.0, 1.0)
    return signs, w.abs().mean(dim=1)


def ternarize_weight(w: Tensor, threshold: float = TWN_THRESHOLD) -> tuple[Tensor, Tensor]:
    """(t float32 in {-1, 0, 1} [N, K], alpha float32 [N]) by the TWN rule, per output channel."""
    w = w.detach().float()
    delta = threshold * w.abs().mean(dim=1, keepdim=True)
    keep = w.abs() > delta
    t = torch.where(keep, torch.sign(w), torch.zeros_like(w))
    kept = keep.sum(dim=1)
    alpha = (w.abs() * keep).sum(dim=1) / kept.clamp(min=1)
    return t, alpha
