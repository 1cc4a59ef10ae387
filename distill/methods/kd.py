"""Hinton, Vinyals & Dean 2015, "Distilling the knowledge in a neural network":
loss = (1 - alpha) * CE + alpha * T^2 * KL(softmax(t / T) || softmax(s / T)).

`alpha` weights the DISTILLATION term (RepDistiller's convention; torchdistill's alpha weights CE).
T^2 keeps the soft targets' gradients at the same scale whatever T. KL with batchmean reduction.
"""

from __future__ import annotations

from dataclasses import dataclass

from distill.methods import register
from distill.methods.base import F, Method, kl
from distill.options import POSITIVE, Range, opt


@register
class KD(Method):
    name = "kd"
    summary = "Hinton et al. 2015: KL between temperature-softened logits"

    @dataclass
    class Options:
        temperature: float = opt(4.0, "Softmax temperature T of the distillation term (T = 4: the usual CIFAR value).",
                                 within=POSITIVE)
        alpha: float = opt(0.9, "Weight of the distillation term: loss = (1 - alpha) CE + alpha T^2 KL "
                                "(RepDistiller's convention; some toolkits weight CE instead).", within=Range(0, 1))

    def loss(self, student, teacher, targets, progress):
        t, alpha = self.options.temperature, self.options.alpha
        ce = self.ce(student.logits, targets)
        soft = t * t * kl(F.log_softmax(teacher.logits / t, dim=1), F.log_softmax(student.logits / t, dim=1))
        return (1 - alpha) * ce + alpha * soft, {"ce": ce, "kd": soft}
