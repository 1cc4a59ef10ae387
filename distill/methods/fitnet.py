"""FitNets (Romero et al., ICLR 2015, "FitNets: Hints for thin deep nets"): hint learning.

A middle stage of the student (the guided layer) learns to predict, through a small trainable regressor,
the output of the teacher's stage at the same resolution (the hint):

    loss = CE + feature_weight * MSE(regressor(student stage), teacher stage).

The regressor is RepDistiller's and mdistiller's ConvReg: 3x3 conv (student -> teacher channels) + BN +
ReLU (the teacher's stage outputs are ReLU outputs). Trained in one stage with CE, as mdistiller's
CIFAR recipe (feature weight 100), not the paper's two-stage schedule.
"""

from __future__ import annotations

from dataclasses import dataclass

from distill.errors import UserError
from distill.methods import register
from distill.methods.base import F, Method, matching_stage, nn, resize_to
from distill.options import AT_LEAST_1, NON_NEGATIVE, opt


@register
class FitNet(Method):
    name = "fitnet"
    summary = "Romero et al. 2015: a middle student stage regresses the teacher's (hint learning)"
    needs_features = True

    @dataclass
    class Options:
        hint_stage: int = opt(2, "Student stage (1 = first) that learns the teacher's stage of the same resolution; "
                                 "2 is the middle of a CIFAR ResNet (RepDistiller's hint layer).", within=AT_LEAST_1)
        feature_weight: float = opt(100.0, "Weight of the hint loss (MSE); CE keeps weight 1 (mdistiller's CIFAR "
                                           "value).", within=NON_NEGATIVE)

    def guided(self, student):
        stages, k = student.stages, self.options.hint_stage
        if k > len(stages):
            raise UserError(f"--hint-stage {k} does not exist: the student has {len(stages)} stages")
        return stages[k - 1]

    def setup(self, student, teacher):
        source = self.guided(student)
        self.teacher_stage = matching_stage(source.shape, teacher.stages)
        target = teacher.stages[self.teacher_stage]
        self.modules = nn.Sequential(nn.Conv2d(source.shape[1], target.shape[1], 3, padding=1, bias=False),
                                     nn.BatchNorm2d(target.shape[1]), nn.ReLU(inplace=True))
        return self.modules

    def loss(self, student, teacher, targets, progress):
        hint = teacher.stages[self.teacher_stage]
        regressed = self.modules(resize_to(self.guided(student), tuple(hint.shape[-2:])))
        feature = F.mse_loss(regressed, hint)
        ce = self.ce(student.logits, targets)
        return ce + self.options.feature_weight * feature, {"ce": ce, "hint": feature}
