"""DIST (Huang, You, Wang, Qian & Xu, NeurIPS 2022, "Knowledge Distillation from A Stronger Teacher").

Instead of matching probabilities exactly (KL), the student matches the teacher's *relations*: per image,
the Pearson correlation of its class probabilities with the teacher's (inter-class), and per class, the
correlation over the batch (intra-class):

    y = softmax(z / T);  inter = 1 - mean_i pearson(y_s[i, :], y_t[i, :]);
    intra = 1 - mean_c pearson(y_s[:, c], y_t[:, c]);  loss = CE + T^2 (beta inter + gamma intra),
the paper's beta and gamma being --inter-weight and --intra-weight.

Meant for stronger teachers (a ResNet50 teaching a resnet20), whose exact probabilities a small
student cannot match. Defaults T = 4, beta = gamma = 1 as in the public CIFAR ports of the authors' code.
"""

from __future__ import annotations

from dataclasses import dataclass

from distill.methods import register
from distill.methods.base import Method, temperature_option
from distill.front.options import NON_NEGATIVE, opt

EPS = 1e-8  # the reference implementation's guard against a zero norm


def pearson(a, b):
    """Row-wise Pearson correlation of two (N, D) matrices: the cosine of the centred rows."""
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + EPS)


@register
class DIST(Method):
    name = "dist"
    summary = "Huang et al. 2022: match the teacher's class and batch correlations, not its probabilities"

    @dataclass
    class Options:
        temperature: float = temperature_option()
        inter_weight: float = opt(1.0, "Weight of the inter-class relation, per image across classes (the paper's "
                                       "beta).", within=NON_NEGATIVE, symbol="β")
        intra_weight: float = opt(1.0, "Weight of the intra-class relation, per class across the batch (the paper's "
                                       "gamma).", within=NON_NEGATIVE, symbol="γ")

    def loss(self, student, teacher, batch):
        o = self.options
        y_s, y_t = (student.logits / o.temperature).softmax(1), (teacher.logits / o.temperature).softmax(1)
        inter = o.temperature**2 * (1 - pearson(y_s, y_t).mean())
        intra = o.temperature**2 * (1 - pearson(y_s.T, y_t.T).mean())
        ce = self.ce(student.logits, batch.targets)
        return ce + o.inter_weight * inter + o.intra_weight * intra, {"ce": ce, "inter": inter, "intra": intra}
