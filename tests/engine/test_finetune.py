"""Fine-tuning schedules: each changes exactly the parameters it says, at the rates it says, and continues
bit for bit when resumed in the middle of a phase; without pretrained weights each is refused in one line."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torchvision

import distill.engine.loop as loop_mod
from conftest import file_digest, tiny_teach_args
from distill import teachers
from distill.engine.checkpoint import load_checkpoint
from distill.engine.optim import lr_factor, make_optimizer
from distill.engine.results import method_text, summary_markdown
from distill.front import config as C
from distill.models import make_spec, model_stages, new_parameter_names, unwrap
from runhelpers import assert_one_line_error, assert_same, signal_after_steps

STEPS = 5  # tiny_teach_args: 42 training images in batches of 8
HEAD = teachers.HEAD_STAGE
EVERY_STAGE = set(range(HEAD + 1))
NOT_STATE = ("config", "wall_seconds", "train_seconds", "first_epoch_seconds")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """'Pretrained' weights as torchvision saves a resnet18 (7x7 conv1, 1000-way fc), seeded."""
    torch.manual_seed(0)
    state = torchvision.models.resnet18().state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(state, path)
    return path, state


def moved_stages(state: dict, reference: dict) -> set[int]:
    """The stages (0 the stem ... HEAD) holding a tensor, parameter or BatchNorm statistic, that differs from the
    pretrained one; the head always differs (a new one, of 3 classes)."""
    return {teachers.stage_of(k) for k, v in state.items() if k not in reference or not torch.equal(v, reference[k])}


@pytest.fixture
def epochs_seen(monkeypatch):
    """Per epoch, as its first step begins: the weights, each parameter's learning rate, BatchNorm modes."""
    seen: list[dict] = []
    real = loop_mod.train_step

    def step(loop, positions, index):
        if index % loop.steps_per_epoch == 0:
            learner = loop.learners[0]
            model = unwrap(learner.model)
            lr = {id(p): g["lr"] for g in learner.optimizer.param_groups for p in g["params"]}
            seen.append({"state": {k: v.clone() for k, v in model.state_dict().items()},
                         "lr": {n: lr[id(p)] for n, p in model.named_parameters()},
                         "bn_training": {n: m.training for n, m in model.named_modules()
                                         if isinstance(m, torch.nn.BatchNorm2d)}})
        return real(loop, positions, index)

    monkeypatch.setattr(loop_mod, "train_step", step)
    return seen


def finetune_args(data, out, weights, epochs, *extra):
    args = tiny_teach_args(data, out, "--weights", weights, *extra)
    args[args.index("--epochs") + 1] = str(epochs)
    return args


@pytest.mark.parametrize("unfreeze, moved", [
    ("all", [{HEAD}, EVERY_STAGE]),
    # ULMFiT: layer4 joins first, then one stage below per epoch, the stem in the last epoch (the fewest that let
    # every stage train after the frozen one: check_gradual refuses fewer)
    ("gradual", [{HEAD}, {4, HEAD}, {3, 4, HEAD}, {2, 3, 4, HEAD}, {1, 2, 3, 4, HEAD}, EVERY_STAGE]),
])
def test_frozen_stages_stay_bit_identical_until_they_unfreeze(cli, tiny_data, tmp_path, pretrained, epochs_seen,
                                                              unfreeze, moved):
    path, reference = pretrained
    out = tmp_path / "run"
    result = cli(*finetune_args(tiny_data, out, path, len(moved), "--freeze-epochs", 1, "--unfreeze", unfreeze))
    assert result.code == 0, result.err
    states = [seen["state"] for seen in epochs_seen[1:]] + [load_checkpoint(out / "last.pt")["model"]]
    assert [moved_stages(state, reference) for state in states] == moved
    # While frozen, a stage's BatchNorm layers run in eval mode (the others train).
    frozen_bn = [{n for n, training in seen["bn_training"].items() if not training} for seen in epochs_seen]
    assert [{teachers.stage_of(n) for n in names} for names in frozen_bn] == [
        EVERY_STAGE - moved_at - {HEAD} for moved_at in moved]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["finetune"] == {"weights": str(path), "backbone_lr_scale": 0.1, "freeze_epochs": 1,
                                   "unfreeze": unfreeze, "layer_decay": 1.0, "freeze_bn": False}
    text = f"teacher: fine-tuned from resnet18.pth, {unfreeze} after 1 frozen epoch, backbone lr x0.1"
    assert method_text(metrics) == text  # TensorBoard's HPARAMS column


def test_lp_ft_probes_the_head_alone_then_fine_tunes_everything_at_the_backbone_rate(
        cli, tiny_data, tmp_path, pretrained, epochs_seen):
    path, reference = pretrained
    out = tmp_path / "run"
    assert cli(*finetune_args(tiny_data, out, path, 2, "--freeze-epochs", 1, "--unfreeze", "lp-ft")).code == 0
    probe, finetune = epochs_seen
    assert moved_stages(finetune["state"], reference) == {HEAD}  # BatchNorm statistics too
    assert moved_stages(load_checkpoint(out / "last.pt")["model"], reference) == EVERY_STAGE
    warmup = STEPS  # --warmup-epochs 1
    assert probe["lr"]["fc.weight"] == pytest.approx(0.05 * lr_factor(0, 2 * STEPS, warmup), rel=1e-12)
    # After the probe every parameter, the head too, at --lr x --backbone-lr-scale (here at the cosine's peak).
    after = 0.005 * lr_factor(STEPS, 2 * STEPS, warmup)
    assert all(lr == pytest.approx(after, rel=1e-12) for lr in finetune["lr"].values())


def test_frozen_batchnorm_keeps_its_statistics_while_every_weight_trains(cli, tiny_data, tmp_path, pretrained,
                                                                         epochs_seen):
    path, reference = pretrained
    out = tmp_path / "run"
    assert cli(*finetune_args(tiny_data, out, path, 1, "--freeze-bn")).code == 0
    state = load_checkpoint(out / "last.pt")["model"]
    statistics = [k for k in reference if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(statistics) == 3 * 20  # resnet18's 20 BatchNorm layers
    for key in statistics:
        assert torch.equal(state[key], reference[key]), key
    assert moved_stages({k: v for k, v in state.items() if k not in statistics}, reference) == EVERY_STAGE
    assert not any(epochs_seen[0]["bn_training"].values())


@pytest.mark.parametrize("stem, full_rate", [("imagenet", {"fc.weight", "fc.bias"}),
                                             ("cifar", {"fc.weight", "fc.bias", "conv1.weight", "bn1.weight",
                                                        "bn1.bias"})])
def test_layer_decay_gives_each_stage_its_rate_in_the_optimizers_param_groups(pretrained, stem, full_rate):
    """lr of stage i = lr x decay^(5 - i), the head at lr; a stem derived from ImageNet's 7x7 kernel is new
    (it must adapt) and trains at lr like the head."""
    path, _ = pretrained
    cfg = C.resolve(C.TeachConfig, {}, {"arch": "resnet18", "stem": stem, "weights": str(path), "layer_decay": 0.5,
                                        "lr": 0.1, "warmup_epochs": 0.0, "epochs": 2})
    spec = make_spec("resnet18", 3, 16, stem)
    model = teachers.create("resnet18", num_classes=3, stem=stem, weights=str(path))
    stage_of, depth = model_stages(spec)
    optimizer, _ = make_optimizer(model, cfg, new_parameter_names(spec, cfg.weights), 5, None, stage_of, depth)
    lr = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    got = {name: lr[id(p)] for name, p in model.named_parameters()}
    want = {name: 0.1 if name in full_rate else 0.1 * 0.5 ** (5 - teachers.stage_of(name)) for name in got}
    assert got == pytest.approx(want, rel=1e-12)
    assert {round(v, 12) for v in got.values()} == {0.1, 0.05, 0.025, 0.0125, 0.00625} | (
        {0.003125} if stem == "imagenet" else set())
    decayed = {g["weight_decay"] for g in optimizer.param_groups if any(p.ndim == 1 for p in g["params"])}
    assert decayed == {0.0}  # still none on BatchNorm and biases


@pytest.mark.parametrize("schedule, epochs", [
    # layer4 and the head, then layer3 joins, ...: the stem's epoch is the last (fewer are refused)
    (["--freeze-epochs", 0, "--unfreeze", "gradual", "--freeze-bn"], 5),
    (["--freeze-epochs", 1, "--unfreeze", "lp-ft"], 2),  # the probe, then everything
    (["--freeze-epochs", 1, "--unfreeze", "all", "--layer-decay", 0.7], 2),  # the probe, then each layer's own rate
], ids=["gradual", "lp-ft", "all-layer-decay"])
def test_a_run_resumed_in_the_middle_of_each_phase_ends_bit_for_bit_as_the_uninterrupted_one(
        cli, tiny_data, tmp_path, pretrained, monkeypatch, schedule, epochs):
    path, _ = pretrained
    stops = ((2, "epoch 1 step 2"), (5, "epoch 2 step 2"))  # in the first phase, then in the second
    whole, pieces = tmp_path / "whole", tmp_path / "pieces"
    recipe = ["--deterministic", "--augment", "default,mixup=0.2", *schedule]
    assert cli(*finetune_args(tiny_data, whole, path, epochs, *recipe)).code == 0
    for steps_this_time, where in stops:
        with monkeypatch.context() as m:
            signal_after_steps(m, steps_this_time, signal.SIGINT)
            resume = ["--resume"] if (pieces / "last.pt").exists() else []
            result = cli(*finetune_args(tiny_data, pieces, path, epochs, *recipe, *resume))
        assert result.code == 130 and f"interrupted ({where})" in result.err, result.err
    assert cli("teach", "--out", pieces, "--resume").code == 0
    a, b = (load_checkpoint(d / "last.pt") for d in (whole, pieces))
    assert_same({k: v for k, v in a.items() if k not in NOT_STATE}, {k: v for k, v in b.items() if k not in NOT_STATE})


def test_a_resume_may_not_change_the_schedule(cli, tiny_data, tmp_path, pretrained, monkeypatch):
    path, _ = pretrained
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        signal_after_steps(m, 2, signal.SIGINT)
        assert cli(*finetune_args(tiny_data, out, path, 3, "--freeze-epochs", 1, "--unfreeze", "lp-ft")).code == 130
    before = file_digest(out / "last.pt")
    assert_one_line_error(cli("teach", "--out", out, "--resume", "--freeze-epochs", "2", "--unfreeze", "all"),
                          "freeze_epochs: 1 -> 2", "unfreeze: 'lp-ft' -> 'all'")
    assert_one_line_error(cli("teach", "--out", out, "--resume", "--layer-decay", "0.5", "--unfreeze", "all"),
                          "layer_decay: 1.0 -> 0.5")
    assert_one_line_error(cli("teach", "--out", out, "--resume", "--freeze-bn"), "freeze_bn: False -> True")
    assert file_digest(out / "last.pt") == before


@pytest.mark.parametrize("extra, needle", [
    (["--freeze-epochs", "1"], "--freeze-epochs needs pretrained weights: set --weights"),
    (["--unfreeze", "gradual"], "--unfreeze needs pretrained weights: set --weights"),
    (["--layer-decay", "0.7"], "--layer-decay needs pretrained weights: set --weights"),
    (["--freeze-bn"], "--freeze-bn needs pretrained weights: set --weights"),
    (["--weights", "w.pth", "--unfreeze", "lp-ft"], "--unfreeze lp-ft needs --freeze-epochs N"),
    (["--weights", "w.pth", "--freeze-epochs", "2"], "--freeze-epochs 2 leaves none of the 2 --epochs"),
    (["--weights", "w.pth", "--freeze-epochs", "1", "--unfreeze", "lp-ft", "--layer-decay", "0.5"],
     "--unfreeze lp-ft fine-tunes every layer at one rate"),
    (["--weights", "w.pth", "--layer-decay", "0.5", "--backbone-lr-scale", "0.2"],
     "--layer-decay 0.5 sets every pretrained layer's rate and replaces --backbone-lr-scale 0.2, which would be "
     "ignored: choose one"),
    (["--weights", "w.pth", "--freeze-epochs", "1", "--unfreeze", "gradual"],  # --epochs 2
     "--unfreeze gradual after --freeze-epochs 1 thaws one stage per epoch, the stem last in epoch 6: within "
     "--epochs 2, the stem, layer1, layer2 and layer3 would never train; set --epochs 6 or more"),
    (["--weights", "w.pth", "--epochs", "7", "--freeze-epochs", "3", "--unfreeze", "gradual"],
     "the stem last in epoch 8: within --epochs 7, the stem would never train; set --epochs 8 or more, or "
     "--freeze-epochs 2 or less"),
    (["--layer-decay", "0"], "--layer-decay must be in (0, 1]"),
])
def test_a_schedule_that_makes_no_sense_is_refused_in_one_line(cli, tiny_data, tmp_path, extra, needle):
    out = tmp_path / "run"
    assert_one_line_error(cli(*tiny_teach_args(tiny_data, out, *extra)), needle)
    assert not out.exists()


def test_the_summary_names_the_schedule():
    metrics = {"role": "teacher", "arch": "resnet18", "params": 11e6, "test_accuracy": 0.9, "epochs": 4,
               "wall_seconds": 3.0, "finetune": {"weights": "runs/x/best.pt", "backbone_lr_scale": 0.1,
                                                 "freeze_epochs": 0, "unfreeze": "all", "layer_decay": 0.7,
                                                 "freeze_bn": True}}
    run = SimpleNamespace(out=Path("runs/y/teacher-resnet18"))
    assert "| fine-tuned | from best.pt, layer decay 0.7, frozen BN |" in summary_markdown(run, metrics)

