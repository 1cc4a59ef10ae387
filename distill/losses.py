"""Distillation methods: the training loop calls `METHODS.create(name, **cfg)` and then the method.

Adding a method = one `Method` subclass plus one `@METHODS.register()` constructor; the training
loop never changes. Every loss is computed in float32 with autocast off, so bf16 logits do not
degrade the softmax/KL (small probabilities underflow and the KL loses precision in bf16).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.errors import UserError
from distill.names import METHOD_NAMES
from distill.registry import Registry

Parts = dict[str, Tensor]


def _fp32_region(x: Tensor) -> torch.autocast:
    """An autocast-off context for x's device: autocast would cast our float32 math back to bf16."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def _fp32(x: Tensor) -> Tensor:
    """Upcast bf16/fp16 to float32; float64 stays as it is."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def soft_cross_entropy(logits: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy against (B, C) probability targets (one-hot or MixUp/CutMix-mixed).

    Smoothing follows F.cross_entropy: t * (1 - eps) + eps / C. Mean over the batch, in float32.
    """
    with _fp32_region(logits):
        targets = _fp32(targets)
        if label_smoothing > 0:
            targets = targets * (1 - label_smoothing) + label_smoothing / targets.shape[1]
        return -(targets * F.log_softmax(_fp32(logits), dim=1)).sum(dim=1).mean()


def _kl(log_p_teacher: Tensor, log_p_student: Tensor) -> Tensor:
    """KL(teacher || student) from log-probabilities: sum over classes, mean over the batch
    (what F.kl_div calls 'batchmean'; 'mean' would also divide by the number of classes)."""
    return (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=1).mean()


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def _check_temperature(temperature: float) -> None:
    _check(temperature > 0, f"distillation temperature must be > 0, got {temperature}")


class Method(ABC):
    """A distillation loss: `method(student, teacher, targets, progress) -> (total, parts)`.

    `targets` are (B, C) probabilities; `progress` is epochs done as a float (epoch + step/steps).
    `parts` holds detached components for logging.
    """

    needs_teacher: bool = True

    def __init__(self, label_smoothing: float = 0.0):
        ok = 0 <= label_smoothing < 1
        _check(ok, f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def __call__(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor | None,
        targets: Tensor,
        progress: float,
    ) -> tuple[Tensor, Parts]:
        if self.needs_teacher and teacher_logits is None:
            raise ValueError(f"{type(self).__name__} needs teacher logits")
        with _fp32_region(student_logits):
            teacher = None if teacher_logits is None else _fp32(teacher_logits.detach())
            total, parts = self.loss(_fp32(student_logits), teacher, _fp32(targets), progress)
        return total, {k: v.detach() for k, v in parts.items()}

    def ce(self, student: Tensor, targets: Tensor) -> Tensor:
        return soft_cross_entropy(student, targets, self.label_smoothing)

    @abstractmethod
    def loss(
        self, student: Tensor, teacher: Tensor | None, targets: Tensor, progress: float
    ) -> tuple[Tensor, Parts]:
        """Float32 logits in, (total loss, parts) out."""


class NoDistillation(Method):
    """Plain (label-smoothed) cross-entropy: the baseline, and how teachers are trained."""

    needs_teacher = False

    def loss(self, student, teacher, targets, progress):
        ce = self.ce(student, targets)
        return ce, {"ce": ce}


class KD(Method):
    """Hinton et al. 2015: (1 - alpha) * CE + alpha * T^2 * KL(softmax(t/T) || softmax(s/T)).

    `alpha` weights the DISTILLATION term (RepDistiller convention; torchdistill's alpha weights
    the CE term instead). T^2 keeps the soft-target gradients' scale independent of T.
    """

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9, label_smoothing: float = 0.0):
        super().__init__(label_smoothing)
        _check_temperature(temperature)
        _check(0 <= alpha <= 1, f"KD alpha (the distillation weight) must be in [0, 1]: {alpha}")
        self.temperature, self.alpha = temperature, alpha

    def loss(self, student, teacher, targets, progress):
        t = self.temperature
        ce = self.ce(student, targets)
        kd = t * t * _kl(F.log_softmax(teacher / t, dim=1), F.log_softmax(student / t, dim=1))
        return (1 - self.alpha) * ce + self.alpha * kd, {"ce": ce, "kd": kd}


class DKD(Method):
    """Decoupled KD (Zhao et al., CVPR 2022): CE + warmup * (alpha * TCKD + beta * NCKD).

    TCKD is the KL between binary (target, non-target) distributions, NCKD the KL between the
    distributions over non-target classes; both scaled by T^2. Here `alpha` is the TCKD weight
    (paper default 1.0, not KD's 0.9) and `beta` the NCKD weight (8.0); CE has weight 1.
    warmup = min(progress / kd_warmup_epochs, 1). The target class is the argmax of the targets.
    """

    # Masks the target logit out of the non-target softmax; finite so 0 * (log p - log q) stays 0.
    _MASK = -1e9

    def __init__(
        self,
        temperature: float = 4.0,
        alpha: float = 1.0,
        beta: float = 8.0,
        kd_warmup_epochs: float = 20.0,
        label_smoothing: float = 0.0,
    ):
        super().__init__(label_smoothing)
        _check_temperature(temperature)
        _check(alpha >= 0, f"DKD alpha (the TCKD weight) must be >= 0, got {alpha}")
        _check(beta >= 0, f"DKD beta (the NCKD weight) must be >= 0, got {beta}")
        _check(kd_warmup_epochs >= 0, f"kd_warmup_epochs must be >= 0, got {kd_warmup_epochs}")
        self.temperature, self.alpha, self.beta = temperature, alpha, beta
        self.kd_warmup_epochs = kd_warmup_epochs

    def warmup(self, progress: float) -> float:
        return 1.0 if self.kd_warmup_epochs == 0 else min(progress / self.kd_warmup_epochs, 1.0)

    def _log_probs(self, logits: Tensor, gt_mask: Tensor) -> tuple[Tensor, Tensor]:
        """(log binary [p_target, p_non-target], log softmax over the non-target classes)."""
        z = logits / self.temperature
        z_other = z.masked_fill(gt_mask, self._MASK)
        lse, lse_other = z.logsumexp(dim=1), z_other.logsumexp(dim=1)
        z_target = z[gt_mask]
        # log(1 - p_t) = lse(non-target) - lse(all): no cancellation when p_t is close to 1.
        log_binary = torch.stack([z_target - lse, lse_other - lse], dim=1)
        return log_binary, F.log_softmax(z_other, dim=1)

    def loss(self, student, teacher, targets, progress):
        gt_mask = F.one_hot(targets.argmax(dim=1), targets.shape[1]).bool()
        binary_s, other_s = self._log_probs(student, gt_mask)
        binary_t, other_t = self._log_probs(teacher, gt_mask)
        t2 = self.temperature**2
        tckd, nckd = t2 * _kl(binary_t, binary_s), t2 * _kl(other_t, other_s)
        ce = self.ce(student, targets)
        kd = self.warmup(progress) * (self.alpha * tckd + self.beta * nckd)
        return ce + kd, {"ce": ce, "kd": kd, "tckd": tckd, "nckd": nckd}


METHODS: Registry[Method] = Registry("distillation method", declared=METHOD_NAMES)


# Constructors take every method keyword (so one config dict serves all) and ignore the rest.
@METHODS.register()
def none(label_smoothing: float = 0.0, **_: object) -> Method:
    return NoDistillation(label_smoothing)


@METHODS.register()
def kd(
    label_smoothing: float = 0.0, temperature: float = 4.0, alpha: float = 0.9, **_: object
) -> Method:
    return KD(temperature, alpha, label_smoothing)


@METHODS.register()
def dkd(
    label_smoothing: float = 0.0,
    temperature: float = 4.0,
    alpha: float = 1.0,
    beta: float = 8.0,
    kd_warmup_epochs: float = 20.0,
    **_: object,
) -> Method:
    return DKD(temperature, alpha, beta, kd_warmup_epochs, label_smoothing)
