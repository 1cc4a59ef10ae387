"""distill.stats against hand computations and closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from distill.stats import (agreement, discordant, incomplete_beta, mcnemar_exact, mean_kl, mean_std, paired_gain,
                           paired_t_test, t_two_sided_p, wilson_interval)


@pytest.mark.parametrize(("b", "c", "p"), [
    (0, 5, 2 / 32),
    (3, 10, 2 * sum(math.comb(13, k) for k in range(4)) / 2 ** 13),  # = 0.09228515625
    (0, 0, 1.0),
    (4, 4, 1.0),  # 2 * P(X <= 4) > 1 for X ~ B(8, 1/2): capped
    (1, 1, 1.0),
    (0, 1, 1.0),
])
def test_mcnemar_exact_by_hand(b, c, p):
    assert mcnemar_exact(b, c) == pytest.approx(p, rel=1e-12)
    assert mcnemar_exact(c, b) == pytest.approx(p, rel=1e-12)


def test_mcnemar_known_value_and_large_counts():
    assert mcnemar_exact(3, 10) == pytest.approx(0.09228515625, rel=1e-12)
    b, c = 1400, 1550  # thousands of discordant images: 2**-2950 underflows outside log space
    z = (abs(b - c) - 1) / math.sqrt(b + c)  # normal approximation with continuity correction
    assert mcnemar_exact(b, c) == pytest.approx(math.erfc(z / math.sqrt(2)), rel=0.02)
    assert 0 < mcnemar_exact(0, 3000) < 1e-300 or mcnemar_exact(0, 3000) == 0.0
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


def test_paired_gain_interval_by_hand():
    a = [1, 1, 1, 0, 1, 0, 1, 1]
    b = [1, 0, 0, 0, 1, 1, 1, 0]
    # d = [0, 1, 1, 0, 0, -1, 0, 1]: mean 2/8, sum of squares 4 - 8 * (1/4)**2 = 3.5, sd = sqrt(3.5 / 7)
    sd = math.sqrt(0.5)
    half = 1.96 * sd / math.sqrt(8)
    gain = paired_gain(a, b)
    assert gain.points == pytest.approx(25.0)
    assert (gain.low, gain.high) == (pytest.approx(100 * (0.25 - half)), pytest.approx(100 * (0.25 + half)))
    assert paired_gain(torch.tensor(b).bool(), torch.tensor(a).bool()).points == pytest.approx(-25.0)
    assert paired_gain([1], [0]) == (100.0, None, None)
    assert discordant(a, b) == (3, 1)
    with pytest.raises(ValueError):
        paired_gain([1, 0], [1])


def test_agreement_and_kl_against_direct_computation():
    assert agreement(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 2, 2, 1])) == 0.5
    gen = torch.Generator().manual_seed(0)
    t = torch.softmax(torch.randn(50, 7, generator=gen, dtype=torch.float64), dim=1)
    s = torch.softmax(torch.randn(50, 7, generator=gen, dtype=torch.float64), dim=1)
    direct = sum(sum(t[i, c] * math.log(t[i, c] / s[i, c]) for c in range(7)) for i in range(50)) / 50
    assert mean_kl(t, s) == pytest.approx(float(direct), rel=1e-9)
    assert mean_kl(t.half(), t.half()) == pytest.approx(0.0, abs=1e-12)
    zeros = torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=torch.float16)  # float16 zeros stay finite
    assert math.isfinite(mean_kl(zeros, zeros.flip(1)))
    with pytest.raises(ValueError):
        agreement([1, 2], [1])


def test_kl_of_float16_copies_of_nearly_equal_rows_matches_float64_within_1_percent():
    """predictions.pt stores float16: each row then sums to 1 only within ~1e-3, as much as a small KL itself.
    Renormalised after the clamp the KL stays within 1% (here 0.2%); without, it is off by 3 to 8%."""
    for seed in range(4):
        gen = torch.Generator().manual_seed(seed)
        logits = 3 * torch.randn(200, 10, generator=gen, dtype=torch.float64)
        t = torch.softmax(logits, dim=1)
        s = torch.softmax(logits + 0.03 * torch.randn(200, 10, generator=gen, dtype=torch.float64), dim=1)
        exact = (t * (t / s).log()).sum(dim=1).mean().item()  # about 2e-4 nats
        assert mean_kl(t.half(), s.half()) == pytest.approx(exact, rel=0.01), seed


@pytest.mark.parametrize(("t", "df", "p"), [
    (2.0, 2, 1 - 2 / math.sqrt(6)),  # df = 2: P(|T| >= t) = 1 - t / sqrt(t^2 + 2) = 0.1835034
    (1.0, 1, 0.5),  # df = 1 is Cauchy: 1 - (2 / pi) * atan(t)
    (3.0, 1, 1 - 2 / math.pi * math.atan(3.0)),
    (0.0, 5, 1.0),
    (-2.0, 2, 1 - 2 / math.sqrt(6)),
    (2.228138852, 10, 0.05),  # the t table's 97.5% quantile for df = 10
])
def test_t_distribution_two_sided_p(t, df, p):
    assert t_two_sided_p(t, df) == pytest.approx(p, rel=1e-7)


def test_t_approaches_the_normal_for_many_degrees_of_freedom():
    assert t_two_sided_p(1.96, 100_000) == pytest.approx(math.erfc(1.96 / math.sqrt(2)), rel=1e-4)
    assert incomplete_beta(2.0, 3.0, 0.4) == pytest.approx(0.5248, rel=1e-12)  # 1 - (0.6^4 + 4 * 0.4 * 0.6^3)


def test_paired_t_test():
    t, p, df = paired_t_test([0.92, 0.93, 0.91], [0.90, 0.91, 0.90])
    # d = [0.02, 0.02, 0.01]: mean 1/60, sd = sqrt(((1/300)**2 * 2 + (2/300)**2) / 2) = sqrt(3) / 300
    assert df == 2 and t == pytest.approx((1 / 60) / (math.sqrt(3) / 300 / math.sqrt(3)))  # = 5
    assert p == pytest.approx(1 - 5 / math.sqrt(27))  # df = 2 closed form, 0.0377
    assert paired_t_test([0.9], [0.8]) == (None, None, 0)
    assert paired_t_test([0.9, 0.8], [0.9, 0.8]) == (0.0, 1.0, 1)
    assert paired_t_test([3.0, 2.0], [2.0, 1.0]) == (math.inf, 0.0, 1)


def test_mean_std_and_wilson():
    assert mean_std([2.0]) == (2.0, None)
    mean, std = mean_std([1.0, 2.0, 4.0])
    assert mean == pytest.approx(7 / 3) and std == pytest.approx(math.sqrt(((4 / 3) ** 2 + (1 / 3) ** 2
                                                                            + (5 / 3) ** 2) / 2))
    low, high = wilson_interval(0.9, 10_000)
    assert low < 0.9 < high and high - low == pytest.approx(2 * 1.96 * math.sqrt(0.09 / 10_000), rel=0.01)
    assert wilson_interval(1.0, 20)[1] == 1.0 and wilson_interval(1.0, 20)[0] < 1.0


@pytest.mark.parametrize("n", [3, 7, 20, 600, 10_000])
def test_the_wilson_interval_holds_its_point_even_at_0_and_100_percent(n):
    from distill.experiments.chart import Point, accuracy_per_run

    for k in (0, 1, n - 1, n):
        low, high = wilson_interval(k / n, n)
        assert 0.0 <= low <= k / n + 1e-12 and k / n - 1e-12 <= high <= 1.0
    # and the chart draws a run at 100% (rounding once made the whisker negative)
    interval = tuple(100 * v for v in wilson_interval(1.0, n))
    image = accuracy_per_run([Point("teacher", 1e6, 100.0, "teacher", interval=interval)], "accuracy")
    assert image.ndim == 3
