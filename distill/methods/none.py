"""The baseline: plain (optionally label-smoothed) cross-entropy, no teacher. Teachers train with it too."""

from __future__ import annotations

from distill.methods import register
from distill.methods.base import Method


@register
class NoDistillation(Method):
    name = "none"
    summary = "no teacher: cross-entropy only (the baseline, and how teachers train)"
    needs_teacher = False

    def loss(self, student, teacher, batch):
        ce = self.ce(student.logits, batch.targets)
        return ce, {"ce": ce}
