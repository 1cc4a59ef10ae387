"""Statistics for comparing runs on one test set: paired gains, McNemar, fidelity, seeds (no scipy).

Two models evaluated on the same test images are compared image by image ("paired"): the
image-to-image variation they share cancels, so the interval of their difference is much narrower
than the two accuracies' own intervals would suggest, and McNemar's test needs only the images on
which they disagree. Fidelity to the teacher (top-1 agreement and KL(teacher || student) on the
test set) follows Stanton et al. 2021, "Does knowledge distillation really work?". Across seeds,
runs are compared with a paired t-test on their accuracies.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch

Z95 = 1.96  # two-sided 95% quantile of the standard normal
# float16 stores nothing positive below 2**-24, so a stored 0 means "below 2**-24", not "impossible":
# clamping there keeps log p finite (0 * log 0 would be NaN, log 0 of the student infinite).
PROB_FLOOR = 2.0 ** -24


def cpu(values, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A CPU tensor from a list or a tensor on any device (float64 is not supported on every accelerator)."""
    return torch.as_tensor(values).detach().to("cpu", dtype)


class Gain(NamedTuple):
    points: float  # mean gain in percentage points
    low: float | None  # 95% interval; None with fewer than 2 images
    high: float | None


def paired_gain(correct_a, correct_b) -> Gain:
    """Gain of model a over model b in points from per-image 0/1 correctness on the same images.

    With d_i = a_i - b_i in {-1, 0, 1}: gain = 100 * mean(d), and the 95% interval is
    100 * (mean(d) +- 1.96 * sd(d) / sqrt(n)), sd with n - 1 (the normal interval of a mean of
    paired differences; fine for test sets of hundreds of images and more).
    """
    a, b = cpu(correct_a, torch.float64).flatten(), cpu(correct_b, torch.float64).flatten()
    if a.shape != b.shape or a.numel() == 0:
        raise ValueError(f"paired_gain needs two equally long, non-empty vectors, got {a.numel()} and {b.numel()}")
    d = a - b
    mean = d.mean().item()
    if d.numel() < 2:
        return Gain(100 * mean, None, None)
    half = Z95 * d.std(correction=1).item() / math.sqrt(d.numel())
    return Gain(100 * mean, 100 * (mean - half), 100 * (mean + half))


def discordant(correct_a, correct_b) -> tuple[int, int]:
    """(images a gets right and b wrong, images b gets right and a wrong): McNemar's b and c."""
    a, b = cpu(correct_a, torch.bool).flatten(), cpu(correct_b, torch.bool).flatten()
    return int((a & ~b).sum()), int((~a & b).sum())


def log_binomial_pmf_half(k: int, n: int) -> float:
    """log P(X = k) for X ~ Binomial(n, 1/2)."""
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) - n * math.log(2)


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value: min(1, 2 * P(X <= min(b, c))), X ~ Binomial(b + c, 1/2).

    b: images model a gets right and model b wrong; c: the reverse. Summed in log space (log-sum-exp)
    because 2**-n underflows for the thousands of discordant images of a large test set."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got {b} and {c}")
    n = b + c
    if n == 0:
        return 1.0
    logs = [log_binomial_pmf_half(k, n) for k in range(min(b, c) + 1)]
    top = max(logs)
    log_tail = top + math.log(sum(math.exp(x - top) for x in logs))
    return min(1.0, 2 * math.exp(log_tail))


class Paired(NamedTuple):
    gain: Gain  # points, with its 95% interval
    mcnemar_p: float


def paired_comparison(correct_a, correct_b) -> Paired:
    """Model a against model b on the same images: the paired gain and McNemar's exact p."""
    return Paired(paired_gain(correct_a, correct_b), mcnemar_exact(*discordant(correct_a, correct_b)))


GAIN_FIELDS = ("gain_over_baseline", "gain_interval", "mcnemar_p")  # a student's gain, in metrics.json and compare


def gain_record(correct, baseline_correct) -> dict:
    """A student's gain over its baseline from both runs' per-image 0/1 correctness on the same test images, in
    the one shape metrics.json (runs trained together) and `distill compare` (finished runs) both write:
    gain_over_baseline in points, gain_interval its 95% interval [low, high] (None below 2 images), mcnemar_p."""
    gain, p = paired_comparison(correct, baseline_correct)
    interval = None if gain.low is None else [gain.low, gain.high]
    return dict(zip(GAIN_FIELDS, (gain.points, interval, p)))


def accuracy_gain_record(accuracy: float, baseline_accuracy: float) -> dict:
    """The same record where the per-image results are missing: the accuracies' difference in points, with no
    interval and no p (those need the images each run got right)."""
    return dict(zip(GAIN_FIELDS, (100 * (accuracy - baseline_accuracy), None, None)))


def agreement(top1_a, top1_b) -> float:
    """Fraction of images on which the two models predict the same class."""
    a, b = cpu(top1_a).flatten(), cpu(top1_b).flatten()
    if a.shape != b.shape or a.numel() == 0:
        raise ValueError(f"agreement needs two equally long, non-empty vectors, got {a.numel()} and {b.numel()}")
    return (a == b).double().mean().item()


def mean_kl(p_teacher, p_student) -> float:
    """Mean over images of KL(teacher || student) = sum_c p_t * (log p_t - log p_s), in nats.

    In float64, both clamped to PROB_FLOOR (float16 probabilities round tiny values to 0) and renormalised
    so each row sums to 1 again (float16 rounding leaves sums off by up to ~1e-3, enough to make a
    near-zero KL negative)."""
    t, s = cpu(p_teacher, torch.float64), cpu(p_student, torch.float64)
    if t.shape != s.shape or t.ndim != 2 or t.numel() == 0:
        raise ValueError(f"mean_kl needs two (images, classes) arrays of one shape, got {tuple(t.shape)} and "
                         f"{tuple(s.shape)}")
    t, s = (x.clamp_min(PROB_FLOOR) for x in (t, s))
    t, s = (x / x.sum(dim=1, keepdim=True) for x in (t, s))
    return (t * (t.log() - s.log())).sum(dim=1).mean().item()


def weak_teacher(teacher: str, teacher_accuracy: float | None, reference: str,
                 reference_accuracy: float | None) -> str | None:
    """One sentence when a teacher tests below the student's baseline (or, with no baseline to hand, below the
    student itself): its soft labels are worse than the plain labels, so a loss against the baseline judges
    the teacher, not the method. None when either accuracy is unknown or the teacher is at least as good."""
    if teacher_accuracy is None or reference_accuracy is None or teacher_accuracy >= reference_accuracy:
        return None
    return (f"{teacher} tests at {100 * teacher_accuracy:.2f}%, below {reference} at {100 * reference_accuracy:.2f}%: "
            "a teacher must beat the student's baseline to teach, so the comparison judges the teacher, not "
            "the method; train a stronger teacher first")


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1); the deviation is None for a single value."""
    if not values:
        raise ValueError("mean_std needs at least one value")
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def wilson_interval(accuracy: float, n: int) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion (unlike mean +- 1.96 SE it stays inside [0, 1]
    and does not collapse to a point at 0% or 100%)."""
    z2 = Z95 ** 2
    centre = (accuracy + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(accuracy * (1 - accuracy) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (Numerical Recipes' betacf, modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),  # even step
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):  # odd step
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= c * d
        if abs(c * d - 1.0) < eps:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    # The fraction converges fast only for x < (a + 1) / (a + b + 2); beyond, use I_x(a, b) = 1 - I_1-x(b, a).
    if x < (a + 1) / (a + b + 2):
        return front * beta_continued_fraction(a, b, x) / a
    return 1.0 - front * beta_continued_fraction(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with df degrees of freedom: I_{df / (df + t^2)}(df / 2, 1 / 2)."""
    if math.isinf(t):
        return 0.0
    return incomplete_beta(df / 2, 0.5, df / (df + t * t))


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> tuple[float | None, float | None, int]:
    """Paired t-test of a against b (e.g. student and baseline accuracies, one pair per seed).

    Returns (t, two-sided p, df = n - 1); t and p are None for a single pair. Identical differences
    (sd 0) give t = +-inf and p = 0, or t = 0 and p = 1 when they are all 0."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_t_test needs two equally long, non-empty lists, got {len(a)} and {len(b)}")
    mean, sd = mean_std([x - y for x, y in zip(a, b)])
    df = len(a) - 1
    if sd is None:
        return None, None, df
    if sd == 0:
        return (0.0, 1.0, df) if mean == 0 else (math.copysign(math.inf, mean), 0.0, df)
    t = mean / (sd / math.sqrt(len(a)))
    return t, t_two_sided_p(t, df), df
