"""Training, evaluation and `distill bench --mode distill` read no output of a compiled call after another
compiled call (CUDA-graph trees overwrite them), checked on the CPU with a stand-in for torch.compile's
reduce-overhead mode (tests/cuda_graph_standin.py): every result equals the uncompiled one exactly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cuda_graph_standin import STALE, CudaGraphStandIn, GraphPool, standin_compile
from distill.bench import timing as bench
from distill.bench.options import bench_options
from distill.front import config as C
from distill.engine.checkpoint import load_checkpoint
from distill.engine.run import train_group
from distill.engine.evaluate import evaluate
from distill.engine.loop import train_step
from distill.models import unwrap
from runhelpers import assert_same

RECIPE = dict(image_size=16, val_size=6, batch_size=8, lr=0.05, device="cpu", quiet=True, deterministic=True,
              epochs=1, augment="default", ema_horizon=0.2, compile_mode="reduce-overhead")
NOT_STATE = ("config", "wall_seconds", "train_seconds", "first_epoch_seconds")


def test_the_standin_raises_on_a_stale_output_and_its_views():
    pool = GraphPool()
    a, b = CudaGraphStandIn(nn.Linear(4, 3), pool), CudaGraphStandIn(nn.Linear(4, 3), pool)
    x = torch.randn(2, 4)
    out = a(x)
    view = out.detach()
    out.sum().backward()  # fresh outputs are ordinary tensors, gradients flow through them
    assert a.module.weight.grad is not None
    kept = b(x).clone()  # the next call: a's outputs are overwritten
    for stale in (out, view):
        with pytest.raises(RuntimeError, match=STALE):
            stale.argmax(1)
    assert torch.equal(kept, unwrap(b)(x))  # what was materialized in time is still readable


def group(teacher, folder, compile: bool) -> list[C.StudentConfig]:
    """KD, KD on a mix of its own (function matching: a second teacher forward each step, on that mix), a
    feature method (FitNets: the teacher's stage outputs are read) and a baseline, trained together."""
    data, best = teacher
    common = {**RECIPE, "data": str(data), "compile": compile, "teacher": str(best), "any_teacher": True}
    return [C.resolve(C.StudentConfig, {}, {**common, "arch": "resnet8", "out": str(folder / "kd")}),
            C.resolve(C.StudentConfig, {}, {**common, "arch": "resnet8", "mix": "mixup=0.4,cutmix=1.0",
                                            "out": str(folder / "fm")}),
            C.resolve(C.StudentConfig, {}, {**common, "arch": "resnet14", "method": "fitnet", "out": str(folder / "fit")}),
            C.resolve(C.StudentConfig, {}, {**{k: v for k, v in common.items() if k != "teacher"},
                                            "arch": "resnet8", "no_teacher": True, "out": str(folder / "base")})]


def test_a_group_under_cuda_graph_semantics_ends_exactly_as_uncompiled(tiny_teacher, tmp_path, monkeypatch):
    plain = train_group(group(tiny_teacher, tmp_path / "plain", compile=False))
    pool = GraphPool()
    monkeypatch.setattr(torch, "compile", standin_compile(pool))
    graphed = train_group(group(tiny_teacher, tmp_path / "graphed", compile=True))
    assert pool.calls >= 5 * 6  # two teacher forwards (shared batch, fm's mix) and four learners, every step
    for name in ("kd", "fm", "fit", "base"):
        a, b = (load_checkpoint(tmp_path / run / name / "last.pt") for run in ("plain", "graphed"))
        assert_same({k: v for k, v in a.items() if k not in NOT_STATE},
                    {k: v for k, v in b.items() if k not in NOT_STATE}, name)
    assert [m["test_accuracy"] for m in plain] == [m["test_accuracy"] for m in graphed]


def test_evaluation_with_flip_tta_reads_each_output_before_the_next_call():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(5))
    x, y = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8), torch.randint(0, 5, (10,))
    model(torch.zeros(1, 3, 8, 8))
    kwargs = dict(num_classes=5, batch_size=4, tta=True)
    plain = evaluate(model, nn.Identity(), x, y, **kwargs)
    graphed = evaluate(CudaGraphStandIn(model, GraphPool()), nn.Identity(), x, y, **kwargs)
    assert torch.equal(plain["probs"], graphed["probs"]) and plain["per_class"] == graphed["per_class"]


def test_bench_distill_step_under_cuda_graph_semantics(monkeypatch):
    def loop_and_step(compile: bool):
        opts = bench_options(["resnet8"], ["distill"], 4, "cpu", "fp32", False, compile, "resnet8", 0, 1,
                                     compile_mode="reduce-overhead")
        loop = bench.bench_loop(opts, "resnet8", distill=True)
        torch.manual_seed(3)
        [(loss, _)] = train_step(loop, torch.arange(4), index=0)
        return loop, loss.item(), next(unwrap(loop.learners[0].model).parameters()).detach().clone()

    _, loss, weights = loop_and_step(False)
    pool = GraphPool()
    monkeypatch.setattr(torch, "compile", standin_compile(pool))
    loop, graphed_loss, graphed_weights = loop_and_step(True)
    assert loop.cuda_graphs and pool.calls == 2  # the teacher, then the student
    assert graphed_loss == loss and torch.equal(graphed_weights, weights)
