"""DIST, FitNets and Attention Transfer against their papers' formulas (written here independently, one
sample or one pair at a time), and a feature method through a real run: connectors trained, saved, resumed."""

from __future__ import annotations

import signal

import pytest
import torch
import torch.nn.functional as F

from distill.engine.checkpoint import load_checkpoint
from distill.errors import UserError
from distill.methods import Batch, Outputs, create
from runhelpers import assert_same, run_args, signal_after_steps

B, C = 12, 10


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def one_hot(labels: torch.Tensor) -> torch.Tensor:
    return F.one_hot(labels, C).double()


def features(channels: tuple[int, ...], sizes: tuple[int, ...], batch: int = B) -> list[torch.Tensor]:
    """[stem, stages..., pooled] as a model returns them; stage outputs are ReLU outputs (non-negative)."""
    stages = [torch.rand(batch, c, s, s, dtype=torch.float64) for c, s in zip(channels, sizes)]
    return [stages[0].clone(), *stages, stages[-1].mean((2, 3))]


# --- DIST ---------------------------------------------------------------------------------------------


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


# --- Attention Transfer ---------------------------------------------------------------------------------


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


# --- FitNets ------------------------------------------------------------------------------------------


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
    assert (type(conv).__name__, conv.kernel_size, conv.stride, conv.bias is not None) == (conv_type, kernel, stride, True)
    assert conv(torch.zeros(1, 32, student_size, student_size)).shape == (1, 64, teacher_size, teacher_size)


def test_fitnet_refuses_a_hint_stage_the_student_does_not_have():
    with pytest.raises(UserError, match="--hint-stage 4 does not exist: the student has 3 stages"):
        create("fitnet", {"hint_stage": 4}).setup(Outputs(None, features((4, 8, 16), (8, 4, 2))),
                                                   Outputs(None, features((4, 8), (8, 4))), None)


# --- through a real run -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    from conftest import write_image_tree
    from distill.front import config as C
    from distill.engine.run import train_run

    root = tmp_path_factory.mktemp("methods")
    data = write_image_tree(root / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISTILL_CACHE", str(root / "cache"))
        train_run(C.resolve(C.TeachConfig, {}, {"data": str(data), "arch": "resnet14", "image_size": 16,
                                                "val_size": 6, "batch_size": 8, "epochs": 1, "device": "cpu",
                                                "quiet": True, "out": str(root / "teacher")}))
    return data, root / "teacher" / "best.pt"


@pytest.mark.parametrize("method", ["fitnet", "at", "dist"])
def test_every_method_trains_a_student_end_to_end(cli, teacher, tmp_path, method):
    data, best = teacher
    out = tmp_path / method
    result = cli(*run_args("student", data, out, 1, "--teacher", best, "--any-teacher", "--method", method))
    assert result.code == 0, result.err
    ck = load_checkpoint(out / "last.pt")
    assert (ck["method_state"] is not None) == (method == "fitnet")  # the connector is saved with the run
    assert not any(k.startswith("module.") for k in ck["model"])  # the plain student's keys, not the wrapper's


def test_a_fitnet_run_interrupted_and_resumed_equals_the_uninterrupted_one(cli, teacher, tmp_path, monkeypatch):
    data, best = teacher
    args = ("--teacher", best, "--any-teacher", "--method", "fitnet", "--deterministic")
    assert cli(*run_args("student", data, tmp_path / "whole", 2, *args)).code == 0
    with monkeypatch.context() as m:
        signal_after_steps(m, 7, signal.SIGINT)
        assert cli(*run_args("student", data, tmp_path / "pieces", 2, *args)).code == 130
    assert cli("student", "--out", tmp_path / "pieces", "--resume").code == 0
    whole, pieces = (load_checkpoint(tmp_path / d / "last.pt") for d in ("whole", "pieces"))
    for key in ("model", "method_state", "optimizer"):
        assert_same(whole[key], pieces[key], key)


def test_the_readmes_example_method_registers_and_computes_its_loss():
    """README, "Add a method": the example file, run as written, is a working method."""
    import re
    import sys
    import types
    from pathlib import Path

    from distill.methods import METHODS

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("### Add a method"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    module = types.ModuleType("distill.methods.cosine")  # a real module, as the file would be
    sys.modules[module.__name__] = module
    try:
        exec(compile(code, "README example", "exec"), module.__dict__)
        method = create("cosine", {"cosine_weight": 2.0})
        z = torch.randn(B, C)
        loss, parts = method(Outputs(z), Outputs(z.clone()), Batch(one_hot(torch.randint(C, (B,))).float(), 1.0))
        assert parts["cosine"].abs() < 1e-6 and torch.allclose(loss, parts["ce"])  # a perfect copy costs only CE
        assert method.option_values() == {"temperature": 4.0, "cosine_weight": 2.0}
    finally:
        METHODS.pop("cosine", None)
        sys.modules.pop(module.__name__, None)
