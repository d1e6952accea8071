"""The distillation losses against their formulas written out with plain torch ops."""

import pytest
import torch
import torch.nn.functional as F

from pycompress.distill import DistillationLoss, FeatureDistillation, attention_distillation_loss, kd_loss


def _kl_rows(student, teacher, temperature):
    """T^2 * sum_c p_t (log p_t - log p_s) for each row, p = softmax(z / T)."""
    p_t = torch.exp(teacher / temperature) / torch.exp(teacher / temperature).sum(-1, keepdim=True)
    p_s = torch.exp(student / temperature) / torch.exp(student / temperature).sum(-1, keepdim=True)
    return temperature ** 2 * (p_t * (torch.log(p_t) - torch.log(p_s))).sum(-1)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0, 7.5])
@pytest.mark.parametrize("shape", [(8, 10), (3, 5, 7), (1, 2)])
def test_kd_loss_matches_formula(temperature, shape):
    s, t = torch.randn(shape, dtype=torch.float64) * 3, torch.randn(shape, dtype=torch.float64) * 3
    rows = _kl_rows(s, t, temperature)
    torch.testing.assert_close(kd_loss(s, t, temperature, "none"), rows.float())
    torch.testing.assert_close(kd_loss(s, t, temperature, "sum"), rows.sum().float())
    torch.testing.assert_close(kd_loss(s, t, temperature), rows.mean().float())


def test_kd_loss_zero_when_equal_and_positive_otherwise():
    t = torch.randn(16, 10)
    assert kd_loss(t.clone(), t).abs().item() < 1e-6
    # Shifting every logit of a row by a constant leaves its softmax unchanged.
    assert kd_loss(t + torch.randn(16, 1), t).abs().item() < 1e-5
    assert (kd_loss(torch.randn(16, 10), t, reduction="none") > 0).all()


def test_kd_loss_t_squared_keeps_gradient_scale():
    # Hinton: for large T, d(T^2 KL)/dz_i -> (z_i - v_i) / C for zero-mean logits z (student) and v (teacher),
    # whatever T: without the T^2 factor the gradient would shrink as 1 / T^2. The error of the limit is O(1/T).
    classes = 10
    s = torch.randn(4, classes, dtype=torch.float64)
    s = s - s.mean(-1, keepdim=True)
    t = torch.randn(4, classes, dtype=torch.float64)
    t = t - t.mean(-1, keepdim=True)
    limit = (s - t) / classes
    errors = []
    for temperature in (250.0, 1000.0):
        z = s.clone().requires_grad_()
        kd_loss(z, t, temperature=temperature, reduction="sum").backward()
        errors.append((z.grad - limit).abs().max().item())
    assert errors[0] < 0.01 * limit.abs().max().item()
    assert errors[1] < errors[0] / 2


def test_kd_loss_computes_in_float32_for_low_precision_inputs():
    s, t = torch.randn(8, 10), torch.randn(8, 10)
    low = kd_loss(s.bfloat16(), t.bfloat16())
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, kd_loss(s.bfloat16().float(), t.bfloat16().float()))


def test_kd_loss_bad_input():
    with pytest.raises(ValueError, match=r"student_logits \[8, 5\] and teacher_logits \[8, 10\]"):
        kd_loss(torch.randn(8, 5), torch.randn(8, 10))
    with pytest.raises(ValueError, match="temperature must be a number > 0"):
        kd_loss(torch.randn(2, 3), torch.randn(2, 3), temperature=0.0)
    with pytest.raises(ValueError, match="reduction must be one of"):
        kd_loss(torch.randn(2, 3), torch.randn(2, 3), reduction="mean")
    with pytest.raises(TypeError, match="student_logits must be a floating-point tensor"):
        kd_loss(torch.ones(2, 3, dtype=torch.int64), torch.randn(2, 3))
    with pytest.raises(TypeError, match="teacher_logits must be a tensor"):
        kd_loss(torch.randn(2, 3), [[0.0] * 3] * 2)
    with pytest.raises(ValueError, match="C >= 1"):
        kd_loss(torch.randn(2, 0), torch.randn(2, 0))


def test_distillation_loss_blends_kd_and_cross_entropy():
    s, t = torch.randn(12, 10), torch.randn(12, 10)
    labels = torch.randint(0, 10, (12,))
    loss, parts = DistillationLoss(temperature=3.0, alpha=0.3)(s, t, labels)
    kd = _kl_rows(s.double(), t.double(), 3.0).mean().item()
    ce = F.cross_entropy(s.double(), labels).item()
    assert loss.item() == pytest.approx(0.3 * kd + 0.7 * ce, rel=1e-5)
    assert parts == pytest.approx({"kd": kd, "hard": ce, "total": 0.3 * kd + 0.7 * ce}, rel=1e-5)
    assert all(isinstance(v, float) for v in parts.values())


def test_distillation_loss_is_kd_alone_without_labels_or_with_alpha_one():
    s, t = torch.randn(6, 4), torch.randn(6, 4)
    labels = torch.randint(0, 4, (6,))
    expected = kd_loss(s, t, 2.0).item()
    for loss_fn, y in ((DistillationLoss(2.0, 0.4), None), (DistillationLoss(2.0, 1.0), labels)):
        loss, parts = loss_fn(s, t, y)
        assert loss.item() == pytest.approx(expected) and parts["hard"] == 0.0 and parts["total"] == parts["kd"]
    loss, parts = DistillationLoss(2.0, 0.0)(s, t, labels)
    assert loss.item() == pytest.approx(F.cross_entropy(s, labels).item())


def test_distillation_loss_token_level_mask_and_ignored_labels():
    s, t = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    labels = torch.randint(0, 7, (2, 5))
    labels[mask == 0] = -100
    loss_fn = DistillationLoss(2.0, 0.5)
    loss, parts = loss_fn.terms(s, t, labels, mask)
    real = mask.bool()
    kd = _kl_rows(s[real], t[real], 2.0).mean()
    ce = F.cross_entropy(s[real], labels[real])
    torch.testing.assert_close(parts["kd"], kd)
    torch.testing.assert_close(loss, 0.5 * kd + 0.5 * ce)


def test_distillation_loss_bad_input():
    with pytest.raises(ValueError, match="alpha must be a number in"):
        DistillationLoss(alpha=1.5)
    with pytest.raises(ValueError, match="temperature must be a number > 0"):
        DistillationLoss(temperature=-1)
    with pytest.raises(ValueError, match=r"labels \[5\] must match the logits' leading dims \[4\]"):
        DistillationLoss()(torch.randn(4, 3), torch.randn(4, 3), torch.zeros(5, dtype=torch.int64))
    with pytest.raises(TypeError, match="labels must be an int64 tensor"):
        DistillationLoss()(torch.randn(4, 3), torch.randn(4, 3), torch.zeros(4))
    with pytest.raises(ValueError, match=r"mask must have the shape \[4\]"):
        DistillationLoss().terms(torch.randn(4, 3), torch.randn(4, 3), mask=torch.ones(4, 2))


@pytest.mark.parametrize("loss", ["mse", "cosine"])
def test_feature_distillation_averages_over_real_tokens(loss):
    head = FeatureDistillation(6, 10, loss=loss)
    s, t = torch.randn(3, 5, 6), torch.randn(3, 5, 10)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    projected = s @ head.projection.weight.T
    if loss == "mse":
        per_token = ((projected - t) ** 2).mean(-1)
    else:
        per_token = 1 - (projected * t).sum(-1) / (projected.norm(dim=-1) * t.norm(dim=-1))
    expected = per_token[mask.bool()].mean()
    torch.testing.assert_close(head(s, t, mask), expected)
    torch.testing.assert_close(head(s, t), per_token.mean())
    # Padded positions do not matter.
    s2, t2 = s.clone(), t.clone()
    s2[mask == 0], t2[mask == 0] = 100.0, -100.0
    torch.testing.assert_close(head(s2, t2, mask), expected)


def test_feature_distillation_projection_only_when_widths_differ():
    same = FeatureDistillation(8, 8)
    assert isinstance(same.projection, torch.nn.Identity) and not list(same.parameters())
    x = torch.randn(2, 3, 8)
    assert same(x, x.clone()).item() == 0.0
    wide = FeatureDistillation(4, 8)
    assert wide.projection.weight.shape == (8, 4) and wide.projection.bias is None
    # The projection learns: a few steps of gradient descent reduce the loss towards a reachable target.
    target = torch.randn(2, 3, 4) @ torch.randn(4, 8)
    s = torch.randn(2, 3, 4)
    opt = torch.optim.Adam(wide.parameters(), lr=0.05)
    start = wide(s, target).item()
    for _ in range(50):
        opt.zero_grad()
        wide(s, target).backward()
        opt.step()
    assert wide(s, target).item() < 0.2 * start
    # No real token: a defined 0.
    assert wide(s, target, torch.zeros(2, 3)).item() == 0.0


def test_feature_distillation_half_precision_student():
    head = FeatureDistillation(4, 8)
    s, t = torch.randn(2, 3, 4), torch.randn(2, 3, 8)
    low = head(s.bfloat16(), t.bfloat16())
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, head(s.bfloat16().float(), t.bfloat16().float()))


def test_feature_distillation_bad_input():
    with pytest.raises(ValueError, match="loss must be one of mse, cosine"):
        FeatureDistillation(4, 4, loss="l1")
    with pytest.raises(ValueError, match="student_dim must be an int >= 1"):
        FeatureDistillation(0, 4)
    head = FeatureDistillation(4, 8)
    with pytest.raises(ValueError, match=r"s_hidden must be \[\.\.\., 4\] and t_hidden \[\.\.\., 8\]"
                                         r".*\[2, 3, 4\] and \[2, 5, 8\]"):
        head(torch.randn(2, 3, 4), torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match=r"got \[2, 3, 8\] and \[2, 3, 8\]"):
        head(torch.randn(2, 3, 8), torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match=r"mask must have the shape \[2, 3\]"):
        head(torch.randn(2, 3, 4), torch.randn(2, 3, 8), torch.ones(2, 4))


def _attn(b, h, t):
    return torch.softmax(torch.randn(b, h, t, t) * 2, dim=-1)


def test_attention_loss_matches_formula_with_mask():
    s, t = _attn(2, 4, 5), _attn(2, 4, 5)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    per_row = (t * (torch.log(t) - torch.log(s))).sum(-1).mean(1)   # [B, T]
    torch.testing.assert_close(attention_distillation_loss(s, t, mask), per_row[mask.bool()].mean())
    torch.testing.assert_close(attention_distillation_loss(s, t), per_row.mean())
    assert attention_distillation_loss(t, t.clone()).abs().item() < 1e-6


def test_attention_loss_padded_keys_with_zero_probability():
    # Like a masked softmax: the last two keys of sample 0 get probability 0 from the teacher and student.
    scores_s, scores_t = torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4)
    scores_s[..., 2:], scores_t[..., 2:] = -float("inf"), -float("inf")
    loss = attention_distillation_loss(torch.softmax(scores_s, -1), torch.softmax(scores_t, -1))
    s, t = torch.softmax(scores_s[..., :2], -1), torch.softmax(scores_t[..., :2], -1)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, (t * (t.log() - s.log())).sum(-1).mean())


def test_attention_loss_averages_heads_when_counts_differ():
    s, t = _attn(2, 2, 6), _attn(2, 6, 6)
    s_mean, t_mean = s.mean(1, keepdim=True), t.mean(1, keepdim=True)
    torch.testing.assert_close(attention_distillation_loss(s, t), attention_distillation_loss(s_mean, t_mean))
    expected = (t_mean * (t_mean.log() - s_mean.log())).sum(-1).mean()
    torch.testing.assert_close(attention_distillation_loss(s, t), expected)


def test_attention_loss_bad_input():
    with pytest.raises(ValueError, match=r"\[B, H, T, T\].*\[2, 4, 5, 5\] and \[2, 4, 6, 6\]"):
        attention_distillation_loss(_attn(2, 4, 5), _attn(2, 4, 6))
    with pytest.raises(ValueError, match=r"\[B, H, T, T\]"):
        attention_distillation_loss(torch.rand(2, 5, 5), torch.rand(2, 5, 5))
    with pytest.raises(ValueError, match=r"mask must have the shape \[2, 5\]"):
        attention_distillation_loss(_attn(2, 4, 5), _attn(2, 4, 5), torch.ones(5, 2))
