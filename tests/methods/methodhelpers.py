"""What the method tests share: logits, targets and features made up for a loss, a method by name, and a tiny
seeded random state (the teacher the end-to-end tests train from is conftest's tiny_teacher)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distill.methods import Batch, Outputs, create

C = 10  # classes


def logits(scale: float = 3.0, batch: int = 16) -> torch.Tensor:
    return torch.randn(batch, C) * scale


def one_hot(labels: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return F.one_hot(labels, C).to(dtype)


def mixed_targets(lam: float = 0.7, batch: int = 16) -> torch.Tensor:
    return lam * one_hot(torch.randint(C, (batch,))) + (1 - lam) * one_hot(torch.randint(C, (batch,)))


def make(name: str, label_smoothing: float = 0.0, **options):
    return create(name, options, label_smoothing)


def call(method, s, t, y, progress: float = 1.0):
    """A logits-only method on (student, teacher) logits, as the loop calls it with Outputs."""
    return method(Outputs(s), None if t is None else Outputs(t), Batch(y, progress))


def total(name: str, s, t, y, progress: float = 1.0, **kw) -> torch.Tensor:
    return call(make(name, **kw), s, t, y, progress)[0]


def features(channels: tuple[int, ...], sizes: tuple[int, ...], batch: int = 12) -> list[torch.Tensor]:
    """[stem, stages..., pooled] as a model returns them; stage outputs are ReLU outputs (non-negative)."""
    stages = [torch.rand(batch, c, s, s, dtype=torch.float64) for c, s in zip(channels, sizes)]
    return [stages[0].clone(), *stages, stages[-1].mean((2, 3))]


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)
