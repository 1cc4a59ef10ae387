"""Attention Transfer (Zagoruyko & Komodakis, ICLR 2017, "Paying more attention to attention").

Each stage's spatial attention map, a(f) = normalize(mean over channels of |f|^p, flattened), of the
student is pulled towards the teacher's at the same resolution:

    loss = CE + attention_weight * sum over student stages of mean((a(f_s) - a(f_t))^2),

as RepDistiller and mdistiller compute it (p = 2, weight 1000 on CIFAR). Each student stage is paired
with the teacher stage of its spatial size (a ResNet50 has a fourth, smaller stage the student lacks).
"""

from __future__ import annotations

from dataclasses import dataclass

from distill.methods import register
from distill.methods.base import F, Method, matching_stage, resize_to
from distill.front.options import NON_NEGATIVE, POSITIVE, opt


def attention(feature, p: float):
    """The normalized spatial attention map (B, H*W) of a (B, C, H, W) feature."""
    return F.normalize(feature.abs().pow(p).mean(1).flatten(1))


@register
class AT(Method):
    name = "at"
    summary = "Zagoruyko & Komodakis 2017: match each stage's spatial attention map"
    needs_features = True

    @dataclass
    class Options:
        attention_p: float = opt(2.0, "Exponent p of the attention map: mean over channels of |f|^p (the paper's 2).",
                                 within=POSITIVE, symbol="p")
        attention_weight: float = opt(1000.0, "Weight of the attention loss, summed over stages; CE keeps weight 1 "
                                              "(RepDistiller's and mdistiller's CIFAR value).", within=NON_NEGATIVE)

    def loss(self, student, teacher, batch):
        p, transfer = self.options.attention_p, 0.0
        for f_s in student.stages:
            f_t = teacher.stages[matching_stage(f_s.shape, teacher.stages)]
            size = min(tuple(f_s.shape[-2:]), tuple(f_t.shape[-2:]))  # pool the larger, as RepDistiller does
            transfer = transfer + (attention(resize_to(f_s, size), p) - attention(resize_to(f_t, size), p)).pow(2).mean()
        ce = self.ce(student.logits, batch.targets)
        return ce + self.options.attention_weight * transfer, {"ce": ce, "attention": transfer}
