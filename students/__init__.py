"""Student architectures, created by name.

Every architecture module registers its constructors in `STUDENTS` when it is imported. To add an
architecture, declare its name in distill/names.py (the CLI checks names there before
importing torch), add one file here that decorates its constructors with `@STUDENTS.register()` (each
taking `num_classes`), and add one import line at the bottom of this file.
"""

from __future__ import annotations

from torch import nn

from distill.front.names import STUDENT_ARCHS
from distill.registry import Registry

STUDENTS: Registry[nn.Module] = Registry("student arch", declared=STUDENT_ARCHS)


def create(name: str, num_classes: int = 10) -> nn.Module:
    """Build student `name`; unknown names raise UserError listing the valid ones."""
    return STUDENTS.create(name, num_classes=num_classes)


def list_archs() -> list[str]:
    return STUDENTS.list()


# Imported last: these modules import STUDENTS from here to register into it.
from distill.students import mobilenetv2, resnet_cifar, shufflenet, vgg, wrn  # noqa: E402,F401
