"""FitNets (Romero et al. 2015): the hint through mdistiller's connector, the connector's shape rule, and a
fitnet run interrupted and resumed bit for bit (the connector saved and restored with the student)."""

from __future__ import annotations

import signal

import pytest
import torch
import torch.nn.functional as F

from distill.engine.checkpoint import load_checkpoint
from distill.errors import UserError
from distill.methods import Batch, Outputs, create
from methodhelpers import C, features, one_hot, seeded  # noqa: F401  (an autouse fixture)
from runhelpers import assert_same, run_args, signal_after_steps

B = 12

def test_fitnet_regresses_the_teacher_stage_of_the_hint_stages_resolution_through_a_trained_connector():
    student = features((16, 32, 64), (32, 16, 8))
    teacher = features((256, 512, 1024, 2048), (32, 16, 8, 4))
    method = create("fitnet", {"hint_stage": 2, "hint_weight": 100.0})
    connector = method.setup(Outputs(None, student), Outputs(None, teacher), None).double()
    conv, bn = connector[0], connector[1]
    # mdistiller's ConvReg for maps of one size: a 1x1 conv with bias
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (32, 512, (1, 1)) and conv.bias is not None
    assert bn.num_features == 512
    labels, logits = torch.randint(C, (B,)), torch.randn(B, C, dtype=torch.float64, requires_grad=True)
    loss, parts = method(Outputs(logits, student), Outputs(torch.randn(B, C), teacher), Batch(one_hot(labels), 1.0))
    hint = ((connector(student[2]) - teacher[2]) ** 2).mean()  # stage 2 (16x16) -> the teacher's 16x16 stage
    torch.testing.assert_close(parts["hint"], hint)
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels) + 100.0 * hint)
    loss.backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0  # the connector learns


@pytest.mark.parametrize("student_size, teacher_size, conv_type, kernel, stride", [
    (16, 8, "Conv2d", (3, 3), (2, 2)),  # twice the teacher's size: a strided 3x3
    (8, 16, "ConvTranspose2d", (4, 4), (2, 2)),  # half of it: a 4x4 transposed conv
    (8, 6, "Conv2d", (3, 3), (1, 1)),  # larger: a valid conv of 1 + the difference
])
def test_fitnet_connector_follows_mdistillers_rule_for_other_sizes(student_size, teacher_size, conv_type, kernel,
                                                                    stride):
    from distill.methods.fitnet import regressor_conv

    conv = regressor_conv((B, 32, student_size, student_size), (B, 64, teacher_size, teacher_size))
    described = (type(conv).__name__, conv.kernel_size, conv.stride, conv.bias is not None)
    assert described == (conv_type, kernel, stride, True)
    assert conv(torch.zeros(1, 32, student_size, student_size)).shape == (1, 64, teacher_size, teacher_size)


def test_fitnet_refuses_a_hint_stage_the_student_does_not_have():
    with pytest.raises(UserError, match="--hint-stage 4 does not exist: the student has 3 stages"):
        create("fitnet", {"hint_stage": 4}).setup(Outputs(None, features((4, 8, 16), (8, 4, 2))),
                                                   Outputs(None, features((4, 8), (8, 4))), None)


def test_a_fitnet_run_interrupted_and_resumed_equals_the_uninterrupted_one(cli, tiny_teacher, tmp_path, monkeypatch):
    data, best = tiny_teacher
    args = ("--teacher", best, "--any-teacher", "--method", "fitnet", "--deterministic")
    assert cli(*run_args("student", data, tmp_path / "whole", 2, *args)).code == 0
    with monkeypatch.context() as m:
        signal_after_steps(m, 7, signal.SIGINT)
        assert cli(*run_args("student", data, tmp_path / "pieces", 2, *args)).code == 130
    assert cli("student", "--out", tmp_path / "pieces", "--resume").code == 0
    whole, pieces = (load_checkpoint(tmp_path / d / "last.pt") for d in ("whole", "pieces"))
    for key in ("model", "method_state", "optimizer"):
        assert_same(whole[key], pieces[key], key)
