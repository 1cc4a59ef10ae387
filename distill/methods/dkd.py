"""Decoupled KD (Zhao et al., CVPR 2022): CE + warmup * (alpha * TCKD + beta * NCKD), the paper's alpha and
beta being --tckd-weight and --nckd-weight.

TCKD is the KL between the binary (target, non-target) distributions, NCKD the KL between the
distributions over the non-target classes; both scaled by T^2. warmup = min(progress / kd_warmup, 1), where
progress is the share of the run done: the paper ramps over 20 of its 240 epochs, 1/12 of the run, so a
40-epoch run ramps over 3.3 epochs rather than half of the run. The target class is the argmax of the
(possibly mixed) targets.
"""

from __future__ import annotations

from dataclasses import dataclass

from distill.methods import register
from distill.methods.base import F, Method, kl, temperature_option, torch
from distill.front.options import NON_NEGATIVE, Range, opt

# Masks the target logit out of the non-target softmax; finite, so 0 * (log p - log q) stays 0.
MASK = -1e9


@register
class DKD(Method):
    name = "dkd"
    summary = "Zhao et al. 2022: target and non-target KL weighted apart"

    @dataclass
    class Options:
        temperature: float = temperature_option()
        tckd_weight: float = opt(1.0, "Weight of TCKD, the target-class term (the paper's alpha, 1.0 on CIFAR).",
                                 within=NON_NEGATIVE, symbol="α")
        nckd_weight: float = opt(8.0, "Weight of NCKD, the non-target-class term (the paper's beta, 8.0 for most "
                                      "CIFAR pairs).", within=NON_NEGATIVE, symbol="β")
        kd_warmup: float = opt(round(20 / 240, 4), "Share of the run over which the distillation weight ramps up "
                                                   "linearly (the paper: 20 of 240 epochs).", within=Range(0, 1))

    def warmup(self, progress: float) -> float:
        share = self.options.kd_warmup
        return 1.0 if share == 0 else min(progress / share, 1.0)

    def log_probs(self, logits, gt_mask):
        """(log binary [p_target, p_non-target], log softmax over the non-target classes)."""
        z = logits / self.options.temperature
        z_other = z.masked_fill(gt_mask, MASK)
        lse, lse_other = z.logsumexp(dim=1), z_other.logsumexp(dim=1)
        # log(1 - p_t) = lse(non-target) - lse(all): no cancellation when p_t is close to 1.
        log_binary = torch.stack([z[gt_mask] - lse, lse_other - lse], dim=1)
        return log_binary, F.log_softmax(z_other, dim=1)

    def loss(self, student, teacher, batch):
        o, targets = self.options, batch.targets
        gt_mask = F.one_hot(targets.argmax(dim=1), targets.shape[1]).bool()
        binary_s, other_s = self.log_probs(student.logits, gt_mask)
        binary_t, other_t = self.log_probs(teacher.logits, gt_mask)
        t2 = o.temperature**2
        tckd, nckd = t2 * kl(binary_t, binary_s), t2 * kl(other_t, other_s)
        ce = self.ce(student.logits, targets)
        kd = self.warmup(batch.progress) * (o.tckd_weight * tckd + o.nckd_weight * nckd)
        return ce + kd, {"ce": ce, "kd": kd, "tckd": tckd, "nckd": nckd}
