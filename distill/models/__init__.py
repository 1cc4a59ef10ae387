"""One entry point for every model: teachers (torchvision) and students (CIFAR ResNets).

A checkpoint stores a model *spec* (family, arch, stem, classes, input size) so any run can rebuild
any model, e.g. a student checkpoint used as a teacher.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from distill import students, teachers
from distill.errors import UserError


def family_of(arch: str) -> str:
    if arch in teachers.TEACHERS:
        return "teacher"
    if arch in students.STUDENTS:
        return "student"
    valid = ", ".join(teachers.TEACHERS.list() + students.STUDENTS.list())
    raise UserError(f"unknown arch '{arch}': choose one of {valid}")


class WithFeatures(nn.Module):
    """A model whose forward returns (logits, features): what a feature-distillation method trains through.
    Wrapping (rather than calling a second method) keeps torch.compile and DDP seeing an ordinary forward;
    `module` holds the model itself, whose state_dict is the one saved."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return forward_with_features(self.module, x)


def forward_with_features(model: nn.Module, x):
    """(logits, [stem output, stage outputs..., pooled feature]) of any student or teacher."""
    if hasattr(model, "forward_features"):  # the CIFAR students
        return model.forward_features(x)
    return teachers.forward_features(model, x)


def make_spec(arch: str, num_classes: int, input_size: int, stem: str = "cifar") -> dict:
    family = family_of(arch)
    return {"family": family, "arch": arch, "stem": stem if family == "teacher" else "cifar",
            "num_classes": num_classes, "input_size": input_size}


def build_model(spec: dict, weights: str = "none") -> nn.Module:
    if spec["family"] == "teacher":
        return teachers.create(spec["arch"], num_classes=spec["num_classes"], stem=spec["stem"], weights=weights)
    if weights != "none":
        raise UserError(f"--weights applies to teachers only; {spec['arch']} is a student: use --weights none")
    return students.create(spec["arch"], num_classes=spec["num_classes"])


def new_parameter_names(spec: dict, weights: str) -> set[str]:
    """Parameters of a fine-tuned model that train at the full learning rate, the rest at backbone_lr_scale.

    The head starts from scratch. With the CIFAR stem and ImageNet weights, conv1 is derived from the 7x7 kernel
    (finer detail lost) and bn1 keeps its ImageNet affine and statistics, now fed 32x32 responses: both must
    adapt, so both get the full rate (bn1's running statistics re-estimate themselves in training mode anyway).
    A distill checkpoint's stem was trained on such images already: it is pretrained like the rest.
    """
    if spec["family"] != "teacher" or weights == "none":
        return set()
    derived = spec["stem"] == "cifar" and teachers.imagenet_layout(weights)
    return {"fc.weight", "fc.bias"} | ({"conv1.weight", "bn1.weight", "bn1.bias"} if derived else set())


def model_stages(spec: dict) -> tuple[Callable[[str], int] | None, int]:
    """How a model divides into stages for fine-tuning schedules: a parameter's or module's name -> its stage
    (0 the stem ... the head last), and the head's stage. Only teachers start from pretrained weights."""
    if spec["family"] != "teacher":
        return None, 0
    return teachers.stage_of, teachers.HEAD_STAGE


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DistributedDataParallel, torch.compile and WithFeatures wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner
