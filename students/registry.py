"""The student registry: every architecture module registers its constructors here, by name."""

from __future__ import annotations

from torch import nn

from distill.front.names import STUDENT_ARCHS
from distill.registry import Registry

STUDENTS: Registry[nn.Module] = Registry("student arch", declared=STUDENT_ARCHS)


def create(name: str, num_classes: int = 10) -> nn.Module:
    """Build student `name`; unknown names raise UserError listing the valid ones."""
    return STUDENTS.create(name, num_classes=num_classes)
