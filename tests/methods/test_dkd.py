"""DKD (Zhao et al. 2022) against a per-sample reference: TCKD, NCKD, their sum being KD, the warm-up."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from methodhelpers import C, call, logits, make, mixed_targets, one_hot, seeded, total  # noqa: F401  (seeded: autouse)

def dkd_reference(s, t, y, temp, alpha, beta):
    """The paper's equations, one sample at a time."""
    tckd, nckd = [], []
    for s_i, t_i, y_i in zip(s / temp, t / temp, y):
        g = int(y_i.argmax())
        p_s, p_t = torch.softmax(s_i, 0), torch.softmax(t_i, 0)
        b_s, b_t = torch.stack([p_s[g], 1 - p_s[g]]), torch.stack([p_t[g], 1 - p_t[g]])
        tckd.append((b_t * (b_t.log() - b_s.log())).sum())
        drop = lambda v: torch.cat([v[:g], v[g + 1 :]])  # noqa: E731
        q_s, q_t = torch.softmax(drop(s_i), 0), torch.softmax(drop(t_i), 0)
        nckd.append((q_t * (q_t.log() - q_s.log())).sum())
    kd = temp**2 * (alpha * torch.stack(tckd).mean() + beta * torch.stack(nckd).mean())
    return F.cross_entropy(s, y) + kd


@pytest.mark.parametrize("temp,alpha,beta", [(4.0, 1.0, 8.0), (1.0, 0.5, 2.0)])
def test_dkd_matches_per_sample_reference(temp, alpha, beta):
    s, t, y = logits().double(), logits().double(), mixed_targets().double()
    got = total("dkd", s, t, y, temperature=temp, tckd_weight=alpha, nckd_weight=beta, kd_warmup=0.1)
    torch.testing.assert_close(got.double(), dkd_reference(s, t, y, temp, alpha, beta))


def test_dkd_warmup_is_a_share_of_the_run_linear_then_saturated():
    s, t, y = logits(), logits(), mixed_targets()
    method = make("dkd")  # the paper's 20 of 240 epochs: the first twelfth of any run
    assert method.options.kd_warmup == pytest.approx(20 / 240, abs=1e-4)
    kd_at = {p: call(method, s, t, y, p)[1]["kd"] for p in (0.0, 0.25 / 12, 1 / 12, 0.5)}
    assert kd_at[0.0] == 0
    torch.testing.assert_close(kd_at[0.25 / 12], 0.25 * kd_at[1 / 12], rtol=2e-3, atol=0)
    torch.testing.assert_close(kd_at[0.5], kd_at[1 / 12])


@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_kd_decomposes_into_tckd_and_nckd(temp):
    # Paper eq. (7): KD = TCKD + (1 - p_t^T) * NCKD per sample (all three carry the same T^2).
    for _ in range(5):
        s, t = logits(batch=1).double(), logits(batch=1).double()
        y = one_hot(torch.randint(C, (1,))).double()
        _, parts = call(make("dkd", temperature=temp), s, t, y)
        kd = total("kd", s, t, y, temperature=temp, kd_weight=1.0)
        p_target = torch.softmax(t / temp, dim=1)[0, y.argmax()]
        torch.testing.assert_close(kd, parts["tckd"] + (1 - p_target) * parts["nckd"])


def test_dkd_is_finite_for_confident_logits():
    s, t, y = logits(scale=200.0), logits(scale=200.0), mixed_targets()
    assert torch.isfinite(total("dkd", s, t, y))
