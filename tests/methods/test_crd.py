"""CRD (Tian et al. 2020): the contrastive loss against the paper's formula written here independently, the
negatives and the memory banks, resume bit for bit, a group behind one teacher forward, and banks that stay the
same in every process under torchrun."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distill.engine.checkpoint import load_checkpoint
from distill.methods import Batch, Outputs, TrainingSet, create
from distill.methods.crd import contrast_rows
from runhelpers import assert_same, child_env, run_args, signal_after_steps

N, CLASSES, DIM, K, B = 40, 4, 8, 6, 5


def heads_and_method(**options):
    torch.manual_seed(0)
    method = create("crd", {"crd_dim": DIM, "crd_negatives": K, **options})
    labels = torch.arange(N) % CLASSES
    student, teacher = [torch.randn(B, 16, 4, 4), torch.randn(B, 16)], [torch.randn(B, 32, 4, 4), torch.randn(B, 32)]
    method.setup(Outputs(None, student), Outputs(None, teacher), TrainingSet(N, labels, torch.device("cpu")))
    return method, labels, student, teacher


def paper_loss(v_s, v_t, bank_s, bank_t, rows, tau, n, z):
    """Eq. 18 of the paper per image, in float64: h = P / (P + K/N) for the positive, 1 - h for negatives,
    P = exp(v . m / tau) / Z; one term with the teacher as anchor over the student's memory, one reversed."""
    total = 0.0
    for anchor, bank, z_term in ((v_t, bank_s, z[0]), (v_s, bank_t, z[1])):
        for i in range(len(rows)):
            p = [math.exp(float(anchor[i].double() @ bank[j].double()) / tau) / z_term for j in rows[i].tolist()]
            k = len(p) - 1
            total -= math.log(p[0] / (p[0] + k / n)) + sum(math.log((k / n) / (q + k / n)) for q in p[1:])
    return total / len(rows)


def test_the_loss_is_the_papers_nce_on_the_memory_banks_and_the_banks_then_move():
    method, labels, student, teacher = heads_and_method(crd_weight=0.8, nce_temperature=0.07, bank_momentum=0.5)
    heads = method.modules
    idx = torch.tensor([0, 5, 10, 15, 21])
    banks = heads.bank_s.clone(), heads.bank_t.clone()
    logits = torch.randn(B, CLASSES, requires_grad=True)
    targets = torch.eye(CLASSES)[labels[idx]]
    rows = contrast_rows(heads, idx, K, torch.Generator().manual_seed(7))
    loss, parts = method(Outputs(logits, student), Outputs(torch.randn(B, CLASSES), teacher),
                         Batch(targets, 0.5, idx, torch.Generator().manual_seed(7)))
    v_s = torch.nn.functional.normalize(heads.embed_s(student[-1]), dim=1)
    v_t = torch.nn.functional.normalize(heads.embed_t(teacher[-1]), dim=1)
    # Z: fixed from the first batch as mean(exp(scores / tau)) * N, per direction
    z = [float(torch.bmm(bank[rows], v.detach().unsqueeze(2)).div(0.07).exp().mean()) * N
         for bank, v in ((banks[0], v_t), (banks[1], v_s))]
    assert heads.z.tolist() == pytest.approx(z, rel=1e-5)
    expected = paper_loss(v_s.detach(), v_t.detach(), *banks, rows, 0.07, N, z)
    assert parts["crd"].item() == pytest.approx(expected, rel=1e-4)
    ce = torch.nn.functional.cross_entropy(logits, labels[idx])
    torch.testing.assert_close(loss, ce + 0.8 * parts["crd"])
    loss.backward()
    assert heads.embed_s.weight.grad.abs().sum() > 0 and heads.embed_t.weight.grad.abs().sum() > 0
    # The batch's rows moved halfway to its embeddings (renormalized); every other row is untouched.
    for bank, before, v in ((heads.bank_s, banks[0], v_s), (heads.bank_t, banks[1], v_t)):
        moved = torch.nn.functional.normalize(0.5 * before[idx] + 0.5 * v.detach(), dim=1)
        torch.testing.assert_close(bank[idx], moved)
        others = torch.ones(N, dtype=torch.bool)
        others[idx] = False
        assert torch.equal(bank[others], before[others])


def test_negatives_come_from_other_classes_uniformly_and_the_positive_is_first():
    method, labels, _, _ = heads_and_method()
    idx = torch.tensor([0, 1, 2, 3])
    rows = contrast_rows(method.modules, idx, 20_000, torch.Generator().manual_seed(3))
    assert torch.equal(rows[:, 0], idx)
    assert not (labels[rows[:, 1:]] == labels[idx].unsqueeze(1)).any()
    counts = torch.bincount(rows[0, 1:], minlength=N)[labels != labels[0]].float()  # 30 candidates
    assert counts.min() > 0.8 * counts.mean() and counts.max() < 1.2 * counts.mean()


def test_the_banks_stay_the_same_in_every_process_under_torchrun(tmp_path):
    """Two gloo processes each take their own images; after every update both hold identical banks."""
    script = tmp_path / "banks.py"
    script.write_text('''
import torch, torch.distributed as dist
from distill.engine.distributed import all_gather_cat
from distill.methods import Outputs, TrainingSet, create
from distill.methods.crd import update_banks
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)  # the same initial banks and heads everywhere, as a run's --seed gives
method = create("crd", {"crd_dim": 8, "crd_negatives": 6})
labels = torch.arange(40) % 4
feats = [torch.randn(4, 16, 2, 2), torch.randn(4, 16)]
method.setup(Outputs(None, feats), Outputs(None, feats), TrainingSet(40, labels, torch.device("cpu"), all_gather_cat))
heads = method.modules
for step in range(3):
    torch.manual_seed(100 * step + rank)  # each process its own shard of images and its own embeddings
    idx = torch.randperm(20)[:4] + 20 * rank
    update_banks(heads, idx, torch.randn(4, 8), torch.randn(4, 8), 0.5, all_gather_cat)
banks = all_gather_cat(torch.stack([heads.bank_s, heads.bank_t]).unsqueeze(0))
assert torch.equal(banks[0], banks[1]), "the banks differ between processes"
if rank == 0:
    print("BANKS AGREE")
dist.destroy_process_group()
''')
    torchrun = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2", str(script)]
    result = subprocess.run(torchrun, env=child_env(GLOO_SOCKET_IFNAME="lo"), capture_output=True, text=True,
                            timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "BANKS AGREE" in result.stdout


CRD = ("--method", "crd", "--crd-negatives", "16", "--crd-dim", "16", "--deterministic")


def test_a_crd_run_interrupted_and_resumed_equals_the_uninterrupted_one(cli, tiny_teacher, tmp_path, monkeypatch):
    data, best = tiny_teacher
    args = ("--teacher", best, "--any-teacher", *CRD)
    assert cli(*run_args("student", data, tmp_path / "whole", 2, *args)).code == 0
    with monkeypatch.context() as m:
        signal_after_steps(m, 7, signal.SIGINT)  # in the middle of epoch 2
        assert cli(*run_args("student", data, tmp_path / "pieces", 2, *args)).code == 130
    assert cli("student", "--out", tmp_path / "pieces", "--resume").code == 0
    whole, pieces = (load_checkpoint(tmp_path / d / "last.pt") for d in ("whole", "pieces"))
    for key in ("model", "method_state", "optimizer"):
        assert_same(whole[key], pieces[key], key)
    state = whole["method_state"]
    assert state["bank_s"].shape == (42, 16) and (state["z"] > 0).all()  # 48 images - 6 for validation


def test_crd_in_a_group_behind_one_teacher_forward_ends_as_trained_alone(tiny_teacher, tmp_path, monkeypatch):
    import distill.engine.loop as train_mod
    from distill.front import config as C
    from distill.engine.run import train_group, train_run

    data, best = tiny_teacher

    def group(folder):
        common = {"data": str(data), "image_size": 16, "val_size": 6, "batch_size": 8, "epochs": 1, "device": "cpu",
                  "quiet": True, "deterministic": True, "teacher": str(best), "any_teacher": True}
        return [C.resolve(C.StudentConfig, {}, {**common, "arch": "resnet8", "method": "crd", "crd_negatives": 16,
                                                "crd_dim": 16, "out": str(folder / "crd")}),
                C.resolve(C.StudentConfig, {}, {**common, "arch": "resnet8", "out": str(folder / "kd")})]

    forwards = []
    real = train_mod.teacher_outputs
    monkeypatch.setattr(train_mod, "teacher_outputs", lambda loop, x: forwards.append(1) or real(loop, x))
    train_group(group(tmp_path / "together"))
    assert len(forwards) == 42 // 8  # one teacher forward per step for both students
    monkeypatch.setattr(train_mod, "teacher_outputs", real)
    for cfg in group(tmp_path / "alone"):
        train_run(cfg)
    for name in ("crd", "kd"):
        a, b = (load_checkpoint(tmp_path / run / name / "last.pt") for run in ("together", "alone"))
        for key in ("model", "method_state", "optimizer"):
            assert_same(a[key], b[key], f"{name} {key}")
