"""FitNets (Romero et al., ICLR 2015, "FitNets: Hints for thin deep nets"): hint learning.

A middle stage of the student (the guided layer) learns to predict, through a small trainable regressor,
the output of the teacher's stage at the same resolution (the hint):

    loss = CE + hint_weight * MSE(regressor(student stage), teacher stage).

The regressor is RepDistiller's and mdistiller's ConvReg (mdistiller/distillers/_common.py), a conv chosen by
the two maps' sizes, then BN + ReLU (the teacher's stage outputs are ReLU outputs): 1x1 with bias when the
sizes match (our case: the teacher stage is picked by resolution), 3x3 stride 2 from twice the size,
a 4x4 stride-2 transposed conv from half of it, else a (1 + dH) x (1 + dW) valid conv. Trained in one stage
with CE at feature weight 100, mdistiller's CIFAR-100 value for every pair it reports, ResNet50 -> MobileNetV2
(a 512-channel hint) included; not the paper's two-stage schedule.
"""

from __future__ import annotations

from dataclasses import dataclass

from distill.errors import UserError
from distill.methods import register
from distill.methods.base import F, Method, matching_stage, nn
from distill.front.options import AT_LEAST_1, NON_NEGATIVE, opt


@register
class FitNet(Method):
    name = "fitnet"
    summary = "Romero et al. 2015: a middle student stage regresses the teacher's (hint learning)"
    needs_features = True

    @dataclass
    class Options:
        hint_stage: int = opt(2, "Student stage (1 = first) that learns the teacher's stage of the same resolution; "
                                 "2 is the middle of a CIFAR ResNet (RepDistiller's hint layer).", within=AT_LEAST_1)
        hint_weight: float = opt(100.0, "Weight of the hint loss (MSE); CE keeps weight 1 (mdistiller's CIFAR value).",
                                 within=NON_NEGATIVE)

    def guided(self, student):
        stages, k = student.stages, self.options.hint_stage
        if k > len(stages):
            raise UserError(f"--hint-stage {k} does not exist: the student has {len(stages)} stages")
        return stages[k - 1]

    def setup(self, student, teacher, data):
        source = self.guided(student)
        self.teacher_stage = matching_stage(source.shape, teacher.stages)
        target = teacher.stages[self.teacher_stage]
        self.modules = nn.Sequential(regressor_conv(source.shape, target.shape), nn.BatchNorm2d(target.shape[1]),
                                     nn.ReLU(inplace=True))
        return self.modules

    def loss(self, student, teacher, batch):
        hint = teacher.stages[self.teacher_stage]
        regressed = self.modules(self.guided(student))
        feature = F.mse_loss(regressed, hint)
        ce = self.ce(student.logits, batch.targets)
        return ce + self.options.hint_weight * feature, {"ce": ce, "hint": feature}


def regressor_conv(source, target):
    """ConvReg's conv for (B, C, H, W) shapes `source` -> `target` (mdistiller's rule, biases included)."""
    (c_s, h_s, w_s), (c_t, h_t, w_t) = source[1:], target[1:]
    if h_s == 2 * h_t:
        return nn.Conv2d(c_s, c_t, 3, stride=2, padding=1)
    if 2 * h_s == h_t:
        return nn.ConvTranspose2d(c_s, c_t, 4, stride=2, padding=1)
    if h_s >= h_t and w_s >= w_t:
        return nn.Conv2d(c_s, c_t, (1 + h_s - h_t, 1 + w_s - w_t))
    raise UserError(f"FitNets cannot map the student's {h_s}x{w_s} hint stage onto the teacher's {h_t}x{w_t} "
                    f"stage: choose another --hint-stage")
