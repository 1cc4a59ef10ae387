"""One entry point for every model: teachers (torchvision) and students (CIFAR ResNets).

A checkpoint stores a model *spec* (family, arch, stem, classes, input size) so any run can rebuild
any model, e.g. a student checkpoint used as a teacher.
"""

from __future__ import annotations

from torch import nn

import students
import teachers
from distill.errors import UserError


def family_of(arch: str) -> str:
    if arch in teachers.TEACHERS:
        return "teacher"
    if arch in students.STUDENTS:
        return "student"
    valid = ", ".join(teachers.TEACHERS.list() + students.STUDENTS.list())
    raise UserError(f"unknown arch '{arch}': choose one of {valid}")


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
    """Parameters that start from scratch in a fine-tuned model: they train at the full learning rate."""
    if spec["family"] != "teacher" or weights == "none":
        return set()
    return {"fc.weight", "fc.bias"} | ({"conv1.weight"} if spec["stem"] == "cifar" else set())
