"""The learning-rate schedules: --schedule step against RepDistiller's rule, its refusals, and a resume across
its milestones bit for bit."""

from __future__ import annotations

import json
import signal

import pytest
from torch import nn

from distill.engine.checkpoint import load_checkpoint
from distill.engine.optim import SCHEDULE_FACTORS, make_optimizer, step_factor
from distill.errors import UserError
from distill.front import config as C
from runhelpers import assert_one_line_error, assert_same, before_steps_from_epoch, run_args, signal_after_steps

NOT_STATE = ("config", "wall_seconds", "train_seconds", "first_epoch_seconds")  # the command line and the clock differ


def test_every_schedule_a_user_can_name_has_a_factor():
    assert set(SCHEDULE_FACTORS) == set(C.SCHEDULES)


def test_step_factor_ramps_then_decays_once_per_milestone_passed():
    # 4 steps per epoch, a 2-step warm-up, milestones after epochs 2 and 3, decay 0.1: by hand,
    per_step = [step_factor(s, 4, 2, (2, 3), 0.1) for s in range(20)]
    assert per_step == [0.5, 1.0, 1.0, 1.0] + [1.0] * 4 + [0.1] * 4 + [0.1 ** 2] * 8


def repdistiller_lr(epoch: int, lr: float, milestones: list[int], decay: float) -> float:
    """helper/util.py adjust_learning_rate of RepDistiller, for its 1-based epoch: lr * decay ** (milestones passed)."""
    return lr * decay ** sum(epoch > m for m in milestones)


def test_the_reference_schedule_sets_repdistillers_rate_at_every_epoch_boundary():
    cfg = C.resolve(C.TrainConfig, {}, {"epochs": 240, "lr": 0.05, "schedule": "step", "milestones": "150,180,210",
                                         "lr_decay": 0.1, "warmup_epochs": 0})
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))  # two groups: with and without weight decay
    steps_per_epoch = 3
    optimizer, scheduler = make_optimizer(model, cfg, set(), steps_per_epoch)
    seen = []  # per step, the set of the groups' rates
    for _ in range(240 * steps_per_epoch):
        seen.append({group["lr"] for group in optimizer.param_groups})
        optimizer.step()
        scheduler.step()
    assert all(len(rates) == 1 for rates in seen)  # every group at the same rate
    per_step = [rates.pop() for rates in seen]
    by_epoch = [per_step[e * steps_per_epoch:(e + 1) * steps_per_epoch] for e in range(240)]
    assert all(len(set(rates)) == 1 for rates in by_epoch)  # constant within an epoch
    first = [rates[0] for rates in by_epoch]
    assert first == [repdistiller_lr(e, 0.05, [150, 180, 210], 0.1) for e in range(1, 241)]
    # By hand: 0.05 for epochs 1-150, then a tenth of it after each of epochs 150, 180 and 210.
    assert [first[e - 1] for e in (1, 150, 151, 180, 181, 210, 211, 240)] == [
        0.05, 0.05, 0.05 * 0.1, 0.05 * 0.1, 0.05 * 0.1 ** 2, 0.05 * 0.1 ** 2, 0.05 * 0.1 ** 3, 0.05 * 0.1 ** 3]


@pytest.mark.parametrize("values, needle", [
    ({"schedule": "step"}, "--schedule step needs --milestones"),
    ({"milestones": "10,20"}, "--milestones 10,20 applies to --schedule step only, not cosine"),
    ({"schedule": "step", "milestones": "150,180,210", "epochs": 200}, "must lie in [1, 199] for --epochs 200"),
    ({"schedule": "step", "milestones": "5,30"}, "must lie in [1, 29] for --epochs 30"),  # at --epochs: no effect
    ({"schedule": "step", "milestones": "0,10"}, "must lie in [1, 29]"),
    ({"schedule": "step", "milestones": "20,10"}, "--milestones 20,10 must increase"),
    ({"schedule": "step", "milestones": "10,10"}, "must increase"),
    ({"schedule": "step", "milestones": "10;20"}, "--milestones '10;20' is not a comma-separated list of epochs"),
    ({"schedule": "step", "milestones": "-5,10"}, "not a comma-separated list"),
    ({"schedule": "step", "milestones": ""}, "not a comma-separated list"),
    ({"schedule": "step", "milestones": "10", "lr_decay": 1.0}, "--lr-decay must be in (0, 1)"),
    ({"schedule": "linear"}, "unknown --schedule 'linear': choose one of cosine, step"),
])
def test_inconsistent_schedules_are_refused(values, needle):
    with pytest.raises(UserError) as err:
        C.resolve(C.TrainConfig, {}, {"epochs": 30, **values})
    assert needle in str(err.value)


def test_a_bad_milestone_is_one_line_before_anything_is_written(cli, tiny_data, tmp_path):
    out = tmp_path / "run"
    result = cli(*run_args("teach", tiny_data, out, 3, "--schedule", "step", "--milestones", "1,3"))
    assert_one_line_error(result, "--milestones 1,3 must lie in [1, 2] for --epochs 3")
    assert not out.exists()


STEPS = 5  # conftest's tiny data: 42 training images in batches of 8
STEP_RUN = ["--deterministic", "--schedule", "step", "--milestones", "1,2", "--warmup-epochs", "0.4"]


def test_a_run_interrupted_before_its_milestones_resumes_across_them_bit_for_bit(cli, tiny_data, tmp_path,
                                                                                  monkeypatch):
    whole, pieces = tmp_path / "whole", tmp_path / "pieces"
    lrs = []
    with monkeypatch.context() as m:
        before_steps_from_epoch(m, 1, lambda loop: lrs.append(loop.learners[0].optimizer.param_groups[0]["lr"]))
        assert cli(*run_args("teach", tiny_data, whole, 3, *STEP_RUN)).code == 0
    # --lr 0.05, a 2-step warm-up, a tenth after epoch 1 and another after epoch 2: by hand,
    assert lrs == pytest.approx([0.025, 0.05, 0.05, 0.05, 0.05] + [0.005] * STEPS + [0.0005] * STEPS, rel=1e-12)

    with monkeypatch.context() as m:
        signal_after_steps(m, 3, signal.SIGINT)  # in epoch 1, before either milestone
        result = cli(*run_args("teach", tiny_data, pieces, 3, *STEP_RUN))
    assert result.code == 130 and "interrupted (epoch 1 step 3)" in result.err, result.err
    assert cli("teach", "--out", pieces, "--resume").code == 0  # the schedule comes back from config.json

    a, b = (load_checkpoint(d / "last.pt") for d in (whole, pieces))
    assert_same({k: v for k, v in a.items() if k not in NOT_STATE}, {k: v for k, v in b.items() if k not in NOT_STATE})
    assert b["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0005, rel=1e-12)
    config = json.loads((pieces / "config.json").read_text())
    assert (config["schedule"], config["milestones"], config["lr_decay"]) == ("step", "1,2", 0.1)


def test_the_schedule_is_part_of_the_recipe_a_resume_may_not_change(cli, tiny_data, tmp_path, monkeypatch):
    step_run, cosine_run = tmp_path / "step", tmp_path / "cosine"
    for out, extra in ((step_run, STEP_RUN), (cosine_run, ["--deterministic"])):
        with monkeypatch.context() as m:
            signal_after_steps(m, STEPS, signal.SIGINT)  # after epoch 1
            assert cli(*run_args("teach", tiny_data, out, 3, *extra)).code == 130
    before = {out: load_checkpoint(out / "last.pt") for out in (step_run, cosine_run)}
    assert_one_line_error(cli("teach", "--out", step_run, "--resume", "--milestones", "2", "--lr-decay", "0.5"),
                          "cannot resume", "milestones: '1,2' -> '2'", "lr_decay: 0.1 -> 0.5")
    assert_one_line_error(cli("teach", "--out", cosine_run, "--resume", "--schedule", "step", "--milestones", "2"),
                          "cannot resume", "schedule: 'cosine' -> 'step'", "milestones: None -> '2'")
    for out, ck in before.items():
        assert_same(load_checkpoint(out / "last.pt"), ck)  # refusals write nothing
