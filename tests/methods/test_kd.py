"""KD (Hinton et al. 2015) against its formula: batchmean KL, the T^2 scale, the weight's two ends."""

from __future__ import annotations

import pytest
import torch

from distill.methods import soft_cross_entropy
from methodhelpers import logits, mixed_targets, seeded, total  # noqa: F401  (seeded: an autouse fixture)

def test_kd_matches_hand_formula():
    s, t, y, temp, alpha = logits(), logits(), mixed_targets(), 4.0, 0.9
    p_t = torch.softmax(t / temp, dim=1)
    kl = (p_t * (torch.log_softmax(t / temp, dim=1) - torch.log_softmax(s / temp, dim=1))).sum(1)
    ce = -(y * torch.log_softmax(s, dim=1)).sum(1)
    expected = ((1 - alpha) * ce + alpha * temp**2 * kl).mean()
    torch.testing.assert_close(total("kd", s, t, y, temperature=temp, kd_weight=alpha), expected)


def test_kd_is_zero_when_student_equals_teacher_at_alpha_one():
    s = logits()
    assert total("kd", s, s.clone(), mixed_targets(), kd_weight=1.0).abs() < 1e-6


def test_kd_alpha_zero_is_cross_entropy():
    s, t, y = logits(), logits(), mixed_targets()
    torch.testing.assert_close(total("kd", s, t, y, kd_weight=0.0), soft_cross_entropy(s, y))


def test_kd_is_batchmean():
    s, t, y = logits(), logits(), mixed_targets()
    doubled = total("kd", s.repeat(2, 1), t.repeat(2, 1), y.repeat(2, 1), kd_weight=1.0)
    torch.testing.assert_close(doubled, total("kd", s, t, y, kd_weight=1.0))


def test_kd_t_squared_keeps_gradient_scale():
    # For small logits, d(T^2 KL)/dz_s ~ (z_s - z_t - mean)/C, independent of T;
    # without the T^2 factor the gradient would shrink 4x from T=4 to T=8.
    s, t, y = logits(scale=0.1), logits(scale=0.1), mixed_targets()

    def grad_norm(temp: float) -> float:
        s_ = s.clone().requires_grad_()
        total("kd", s_, t, y, kd_weight=1.0, temperature=temp).backward()
        return s_.grad.norm().item()

    assert grad_norm(8.0) / grad_norm(4.0) == pytest.approx(1.0, rel=0.1)
