"""Hinton, Vinyals & Dean 2015, "Distilling the knowledge in a neural network":
loss = (1 - w) * CE + w * T^2 * KL(softmax(t / T) || softmax(s / T)), w = --kd-weight.
w weights the DISTILLATION term (RepDistiller's alpha; torchdistill's alpha weights CE instead).
T^2 keeps the soft targets' gradients at the same scale whatever T. KL with batchmean reduction.
"""

from __future__ import annotations

from dataclasses import dataclass

from distill.methods import register
from distill.methods.base import F, Method, kl, temperature_option
from distill.front.options import Range, opt


@register
class KD(Method):
    name = "kd"
    summary = "Hinton et al. 2015: KL between temperature-softened logits"

    @dataclass
    class Options:
        temperature: float = temperature_option()
        kd_weight: float = opt(0.9, "Weight w of the distillation term: loss = (1 - w) CE + w T^2 KL (RepDistiller's "
                                    "alpha; some toolkits weight CE instead).", within=Range(0, 1),
                               symbol="α")

    def loss(self, student, teacher, batch):
        t, w = self.options.temperature, self.options.kd_weight
        ce = self.ce(student.logits, batch.targets)
        soft = t * t * kl(F.log_softmax(teacher.logits / t, dim=1), F.log_softmax(student.logits / t, dim=1))
        return (1 - w) * ce + w * soft, {"ce": ce, "kd": soft}
