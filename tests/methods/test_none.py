"""The baseline's loss: label-smoothed cross-entropy without a teacher, as teachers train too."""

from __future__ import annotations

import torch

from distill.methods import soft_cross_entropy
from methodhelpers import call, logits, make, mixed_targets, seeded  # noqa: F401  (seeded: autouse)

def test_none_is_label_smoothed_ce_without_teacher():
    s, y = logits(), mixed_targets()
    loss, parts = call(make("none", label_smoothing=0.1), s, None, y, 0.0)
    torch.testing.assert_close(loss, soft_cross_entropy(s, y, 0.1))
    assert set(parts) == {"ce"}
