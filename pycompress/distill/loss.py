"""Distillation losses: soft targets on logits (Hinton et al. 2015), hidden-state matching through a learned
projection (FitNets, TinyBERT) and attention-distribution matching (TinyBERT, MiniLM).

Every loss is computed in float32 whatever the dtype of its inputs (autocast may hand them over in bfloat16
or float16), so that the KL terms do not lose their small differences to rounding.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KD_REDUCTIONS = ("batchmean", "sum", "none")
FEATURE_LOSSES = ("mse", "cosine")


def _check_float(name: str, fn: str, x) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{fn}: {name} must be a tensor (got {type(x).__name__})")
    if not x.is_floating_point():
        raise TypeError(f"{fn}: {name} must be a floating-point tensor (got {x.dtype})")


def _check_temperature(fn: str, temperature) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"{fn}: temperature must be a number > 0 (got {temperature!r})")


def _check_mask(fn: str, mask, shape: torch.Size, what: str) -> Optional[Tensor]:
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise TypeError(f"{fn}: mask must be a tensor of 0/1 (got {type(mask).__name__})")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{fn}: mask must have the shape {list(shape)} of {what} (got {list(mask.shape)})")
    return mask.to(torch.float32)


def _masked_mean(values: Tensor, mask: Optional[Tensor]) -> Tensor:
    """Mean of ``values`` over the positions where ``mask`` is 1 (all positions without a mask); 0 when the
    mask selects nothing."""
    if mask is None:
        return values.mean()
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0,
            reduction: str = "batchmean") -> Tensor:
    """Hinton's soft-target loss T^2 * KL(softmax(t / T) || softmax(s / T)) over the last dimension.

    Logits are [..., C]; every leading position is one distribution. ``reduction``: "batchmean" (the sum
    over positions divided by their number), "sum", or "none" (one value per position, shape [...]).
    The T^2 factor keeps the gradient's size independent of T.
    """
    fn = "kd_loss"
    _check_float("student_logits", fn, student_logits)
    _check_float("teacher_logits", fn, teacher_logits)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"{fn}: student_logits {list(student_logits.shape)} and teacher_logits "
                         f"{list(teacher_logits.shape)} must have the same shape")
    if student_logits.dim() == 0 or student_logits.shape[-1] == 0:
        raise ValueError(f"{fn}: logits must be [..., C] with C >= 1 classes (got {list(student_logits.shape)})")
    _check_temperature(fn, temperature)
    if reduction not in KD_REDUCTIONS:
        raise ValueError(f"{fn}: reduction must be one of {', '.join(KD_REDUCTIONS)} (got {reduction!r})")
    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    per_row = F.kl_div(log_s, log_t, reduction="none", log_target=True).sum(-1) * temperature ** 2
    if reduction == "none":
        return per_row
    if reduction == "sum":
        return per_row.sum()
    return per_row.sum() / max(per_row.numel(), 1)


class DistillationLoss(nn.Module):
    """alpha * kd_loss(s, t, T) + (1 - alpha) * cross_entropy(s, labels).

    Logits [..., C], labels [...] (class indices; -100 is ignored, as in Hugging Face). Without labels, or
    with alpha == 1, the loss is the KD term alone. ``mask`` [...] (1 for real positions) restricts the KD
    term to real tokens for token-level logits [B, T, C].
    """

    def __init__(self, temperature: float = 4.0, alpha: float = 0.5):
        super().__init__()
        _check_temperature("DistillationLoss", temperature)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"DistillationLoss: alpha must be a number in [0, 1] (got {alpha!r})")
        self.temperature = float(temperature)
        self.alpha = float(alpha)

    def terms(self, student_logits: Tensor, teacher_logits: Tensor, labels: Optional[Tensor] = None,
              mask: Optional[Tensor] = None) -> tuple:
        """(loss, {"kd", "hard"} as detached tensors); "hard" is absent when it is not computed."""
        per_row = kd_loss(student_logits, teacher_logits, self.temperature, reduction="none")
        kd = _masked_mean(per_row, _check_mask("DistillationLoss", mask, per_row.shape, "the logits' leading dims"))
        parts = {"kd": kd.detach()}
        if labels is None or self.alpha == 1.0:
            return kd, parts
        if not isinstance(labels, Tensor) or labels.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"DistillationLoss: labels must be an int64 tensor of class indices "
                            f"(got {getattr(labels, 'dtype', type(labels).__name__)})")
        if tuple(labels.shape) != tuple(per_row.shape):
            raise ValueError(f"DistillationLoss: labels {list(labels.shape)} must match the logits' leading dims "
                             f"{list(per_row.shape)}")
        classes = student_logits.shape[-1]
        hard = F.cross_entropy(student_logits.float().reshape(-1, classes), labels.reshape(-1).long(),
                               ignore_index=-100)
        parts["hard"] = hard.detach()
        return self.alpha * kd + (1.0 - self.alpha) * hard, parts

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, labels: Optional[Tensor] = None) -> tuple:
        """(loss, {"kd", "hard", "total"} as floats); "hard" is 0.0 when no labels are used."""
        loss, parts = self.terms(student_logits, teacher_logits, labels)
        return loss, {"kd": parts["kd"].item(), "hard": parts["hard"].item() if "hard" in parts else 0.0,
                      "total": loss.item()}


class FeatureDistillation(nn.Module):
    """Hidden-state matching: loss(P s, t) averaged over real tokens.

    s [..., student_dim], t [..., teacher_dim] with the same leading dims ([B, T] or [B]); P is a learned
    bias-free linear map student_dim -> teacher_dim when the widths differ, the identity when they are equal.
    ``loss``: "mse" (mean over features of (P s - t)^2) or "cosine" (1 - cos(P s, t)). ``mask`` [B, T] of 0/1
    selects the real tokens; with no real token the loss is 0.
    """

    def __init__(self, student_dim: int, teacher_dim: int, loss: str = "mse"):
        super().__init__()
        for name, dim in (("student_dim", student_dim), ("teacher_dim", teacher_dim)):
            if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
                raise ValueError(f"FeatureDistillation: {name} must be an int >= 1 (got {dim!r})")
        if loss not in FEATURE_LOSSES:
            raise ValueError(f"FeatureDistillation: loss must be one of {', '.join(FEATURE_LOSSES)} (got {loss!r})")
        self.student_dim, self.teacher_dim, self.loss = student_dim, teacher_dim, loss
        self.projection = nn.Identity() if student_dim == teacher_dim else \
            nn.Linear(student_dim, teacher_dim, bias=False)

    def forward(self, s_hidden: Tensor, t_hidden: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        fn = "FeatureDistillation"
        _check_float("s_hidden", fn, s_hidden)
        _check_float("t_hidden", fn, t_hidden)
        if s_hidden.dim() < 2 or s_hidden.shape[-1] != self.student_dim or t_hidden.shape[-1] != self.teacher_dim \
                or s_hidden.shape[:-1] != t_hidden.shape[:-1]:
            raise ValueError(f"{fn}: s_hidden must be [..., {self.student_dim}] and t_hidden [..., {self.teacher_dim}] "
                             f"with the same leading dims (got {list(s_hidden.shape)} and {list(t_hidden.shape)})")
        mask = _check_mask(fn, mask, s_hidden.shape[:-1], "the hidden states' leading dims")
        if isinstance(self.projection, nn.Linear):
            # The head keeps its own (float32) weights whatever the student's dtype.
            s_hidden = s_hidden.to(self.projection.weight.dtype)
        projected = self.projection(s_hidden).float()
        target = t_hidden.float()
        if self.loss == "mse":
            per_token = (projected - target).pow(2).mean(-1)
        else:
            per_token = 1.0 - F.cosine_similarity(projected, target, dim=-1)
        return _masked_mean(per_token, mask)


def attention_distillation_loss(student_attn: Tensor, teacher_attn: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """KL(teacher row || student row) between attention distributions, averaged over heads and real query rows.

    Inputs are attention probabilities [B, H, T, T] (each row over the keys sums to 1; padded keys carry 0).
    When the head counts differ, each model's rows are first averaged over its heads (the mean of
    distributions is a distribution), and the loss compares the two head-averaged maps [B, 1, T, T].
    ``mask`` [B, T] of 0/1 selects the real query rows.
    """
    fn = "attention_distillation_loss"
    _check_float("student_attn", fn, student_attn)
    _check_float("teacher_attn", fn, teacher_attn)
    s_shape, t_shape = student_attn.shape, teacher_attn.shape
    if student_attn.dim() != 4 or teacher_attn.dim() != 4 or s_shape[0] != t_shape[0] \
            or s_shape[2:] != t_shape[2:] or s_shape[2] != s_shape[3]:
        raise ValueError(f"{fn}: student_attn and teacher_attn must be [B, H, T, T] with the same B and T "
                         f"(got {list(s_shape)} and {list(t_shape)})")
    s, t = student_attn.float(), teacher_attn.float()
    if s_shape[1] != t_shape[1]:
        s, t = s.mean(1, keepdim=True), t.mean(1, keepdim=True)
    # xlogy: teacher zeros (padded keys) contribute exactly 0; the clamp keeps log(0) out of the student side.
    per_row = (torch.xlogy(t, t) - t * torch.log(s.clamp(min=1e-12))).sum(-1).mean(1)
    mask = _check_mask(fn, mask, per_row.shape, "[B, T]")
    return _masked_mean(per_row, mask)


__all__ = ["DistillationLoss", "FeatureDistillation", "attention_distillation_loss", "kd_loss"]
