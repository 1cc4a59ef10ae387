"""Attention Transfer (Zagoruyko & Komodakis 2017) against the paper's maps, stage by stage."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.methods import Batch, Outputs, create
from methodhelpers import C, features, one_hot, seeded  # noqa: F401  (seeded: autouse)

B = 12

def attention_reference(f: torch.Tensor, p: float) -> torch.Tensor:
    """Zagoruyko & Komodakis eq. (2): Q = vec(sum_c |A_c|^p) / || . ||_2 (mean or sum over c: same once
    normalized), one image at a time."""
    return torch.stack([(img.abs() ** p).sum(0).flatten() / (img.abs() ** p).sum(0).flatten().norm() for img in f])


def test_attention_transfer_pairs_stages_by_resolution_and_matches_the_paper():
    student = features((16, 32, 64), (32, 16, 8))  # a CIFAR ResNet
    teacher = features((256, 512, 1024, 2048), (32, 16, 8, 4))  # a ResNet50 with the CIFAR stem: one stage more
    labels = torch.randint(C, (B,))
    logits_s, logits_t = torch.randn(B, C, dtype=torch.float64), torch.randn(B, C, dtype=torch.float64)
    method = create("at", {"attention_p": 2.0, "attention_weight": 1000.0})
    loss, parts = method(Outputs(logits_s, student), Outputs(logits_t, teacher), Batch(one_hot(labels), 1.0))
    pairs = zip(student[1:-1], teacher[1:4])  # 32<->32, 16<->16, 8<->8; the teacher's 4x4 stage unused
    transfer = sum(((attention_reference(s, 2.0) - attention_reference(t, 2.0)) ** 2).mean() for s, t in pairs)
    torch.testing.assert_close(parts["attention"], transfer)
    torch.testing.assert_close(loss, F.cross_entropy(logits_s, labels) + 1000.0 * transfer)


def test_attention_transfer_pools_the_larger_map_when_no_stage_matches():
    student, teacher = features((8,), (16,)), features((4,), (8,))
    method = create("at")
    _, parts = method(Outputs(torch.zeros(B, C), student), Outputs(torch.zeros(B, C), teacher),
                      Batch(one_hot(torch.randint(C, (B,))), 1.0))
    pooled = F.adaptive_avg_pool2d(student[1], 8)
    expected = ((attention_reference(pooled, 2.0) - attention_reference(teacher[1], 2.0)) ** 2).mean()
    torch.testing.assert_close(parts["attention"], expected.float(), check_dtype=False)
