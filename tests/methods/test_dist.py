"""DIST (Huang et al. 2022) against the paper's correlations, written here with torch.corrcoef."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distill.methods import Batch, Outputs, create
from methodhelpers import C, one_hot, seeded  # noqa: F401  (seeded: autouse)

B = 12

def dist_reference(z_s, z_t, tau, beta, gamma):
    """Huang et al. 2022, eq. (5)-(8), with torch.corrcoef for each Pearson correlation."""
    y_s, y_t = (z_s / tau).softmax(1), (z_t / tau).softmax(1)
    inter = 1 - torch.stack([torch.corrcoef(torch.stack([y_s[i], y_t[i]]))[0, 1] for i in range(len(y_s))]).mean()
    intra = 1 - torch.stack([torch.corrcoef(torch.stack([y_s[:, c], y_t[:, c]]))[0, 1]
                             for c in range(y_s.shape[1])]).mean()
    return tau**2 * (beta * inter + gamma * intra)


@pytest.mark.parametrize(("tau", "beta", "gamma"), [(4.0, 1.0, 1.0), (1.0, 2.0, 0.5)])
def test_dist_matches_the_papers_correlations(tau, beta, gamma):
    z_s, z_t, labels = torch.randn(B, C, dtype=torch.float64) * 3, torch.randn(B, C, dtype=torch.float64) * 3, \
        torch.randint(C, (B,))
    method = create("dist", {"temperature": tau, "inter_weight": beta, "intra_weight": gamma})
    loss, parts = method(Outputs(z_s), Outputs(z_t), Batch(one_hot(labels), 1.0))
    expected = F.cross_entropy(z_s, labels) + dist_reference(z_s, z_t, tau, beta, gamma)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-7)
    assert set(parts) == {"ce", "inter", "intra"}


def test_dist_vanishes_when_the_student_matches_the_teachers_relations():
    z = torch.randn(B, C, dtype=torch.float64)
    _, parts = create("dist")(Outputs(z), Outputs(z.clone()), Batch(one_hot(torch.randint(C, (B,))), 1.0))
    # not exactly 0: the reference's 1e-8 guard in the denominator, against T^2 = 16 and soft probabilities
    assert parts["inter"].abs() < 1e-3 and parts["intra"].abs() < 1e-3
