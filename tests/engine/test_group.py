"""Runs trained together (`train_group`): one augmented batch and one teacher forward per step feed every
student and baseline, and each ends exactly where it would have ended trained alone on the same batches."""

from __future__ import annotations

import json
import signal

import pytest
import torch

import distill.engine.loop as train_mod
from distill.front import config as C
from distill.engine.checkpoint import load_checkpoint
from distill.errors import UserError
from distill.engine.run import train_group, train_run
from distill.models import unwrap
from runhelpers import assert_same, signal_after_steps

STEPS = 5  # 42 training images in batches of 8
EPOCHS = 2
# Every random draw of the recipe takes part: crop, flip and MixUp draw from torch's RNG once per step.
RECIPE = dict(image_size=16, val_size=6, batch_size=8, lr=0.05, device="cpu", quiet=True, deterministic=True,
              epochs=EPOCHS, augment="default,mixup=0.2", ema_horizon=0.2)
NOT_STATE = ("config", "wall_seconds", "train_seconds", "first_epoch_seconds")  # folders and clock differ


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    from conftest import write_image_tree

    root = tmp_path_factory.mktemp("group")
    data = write_image_tree(root / "data")
    out = root / "teacher"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISTILL_CACHE", str(root / "cache"))
        train_run(C.resolve(C.TeachConfig, {}, {**RECIPE, "data": str(data), "arch": "resnet8", "epochs": 1,
                                                "out": str(out)}))
    return data, out / "best.pt"


def configs(teacher, folder, **extra) -> list[C.StudentConfig]:
    """A KD student, a DKD student and a baseline of different archs, all on the same batches."""
    data, best = teacher
    common = {**RECIPE, "data": str(data), **extra}
    return [C.resolve(C.StudentConfig, {}, {**common, "arch": "resnet8", "teacher": str(best), "any_teacher": True,
                                            "temperature": 2.0, "out": str(folder / "kd")}),
            C.resolve(C.StudentConfig, {}, {**common, "arch": "resnet14", "method": "dkd", "teacher": str(best),
                                            "any_teacher": True, "out": str(folder / "dkd")}),
            C.resolve(C.StudentConfig, {}, {**common, "arch": "resnet8", "no_teacher": True, "lr": 0.1,
                                            "out": str(folder / "base")})]


def state(folder) -> dict:
    ck = load_checkpoint(folder / "last.pt")
    return {k: v for k, v in ck.items() if k not in NOT_STATE}


def test_each_run_of_a_group_ends_with_the_weights_it_gets_alone(teacher, tmp_path, monkeypatch):
    forwards = []
    real = train_mod.teacher_outputs
    monkeypatch.setattr(train_mod, "teacher_outputs", lambda loop, x: forwards.append(1) or real(loop, x))
    together = train_group(configs(teacher, tmp_path / "together"))
    assert len(forwards) == EPOCHS * STEPS  # one teacher forward per step for the whole group
    alone = [train_run(cfg) for cfg in configs(teacher, tmp_path / "alone")]
    for name in ("kd", "dkd", "base"):
        assert_same(state(tmp_path / "together" / name), state(tmp_path / "alone" / name), name)
    for a, b in zip(together, alone):
        assert a["test_accuracy"] == b["test_accuracy"]
    assert together[0]["trained_with"] == ["dkd", "base"] and alone[0]["trained_with"] == []
    assert together[0]["teacher"]["test_accuracy"] == alone[0]["teacher"]["test_accuracy"]
    assert together[2]["teacher"] is None  # the baseline learnt from nobody


def test_an_interrupted_group_saves_every_run_and_resumes_bit_for_bit(teacher, tmp_path, monkeypatch):
    train_group(configs(teacher, tmp_path / "whole"))
    with monkeypatch.context() as m:
        signal_after_steps(m, STEPS + 2, signal.SIGINT)  # in the middle of epoch 2
        with pytest.raises(UserError, match=r"interrupted \(epoch 2 step 2\); saved .*kd/last.pt, .*dkd/last.pt, "
                                            r".*base/last.pt"):
            train_group(configs(teacher, tmp_path / "pieces"))
    train_group(configs(teacher, tmp_path / "pieces", resume=True))
    for name in ("kd", "dkd", "base"):
        assert_same(state(tmp_path / "whole" / name), state(tmp_path / "pieces" / name), name)


def test_runs_that_do_not_share_their_batches_are_refused_before_anything_is_written(teacher, tmp_path):
    cfgs = configs(teacher, tmp_path / "g")
    cfgs[2] = C.resolve(C.StudentConfig, {}, {**C.to_dict(cfgs[2]), "batch_size": 6, "config": None})
    with pytest.raises(UserError, match=r"cannot train in one group with .*batch_size: 8 vs 6"):
        train_group(cfgs)
    assert not (tmp_path / "g").exists()


def test_runs_at_different_steps_are_refused(teacher, tmp_path, monkeypatch):
    cfgs = configs(teacher, tmp_path / "g", epochs=1)
    train_run(cfgs[0])
    with monkeypatch.context() as m:
        signal_after_steps(m, 2, signal.SIGINT)
        with pytest.raises(UserError, match="interrupted"):
            train_run(cfgs[1])
    resumed = [C.resolve(C.StudentConfig, {}, {**C.to_dict(c), "resume": True, "config": None}) for c in cfgs[1:]]
    resumed[1] = cfgs[2]
    with pytest.raises(UserError, match=r"stand at different points of training \(\[\(0, 0\), \(0, 2\)\]\)"):
        train_group(resumed)
    assert torch.load(tmp_path / "g" / "dkd" / "last.pt", weights_only=True)["step_in_epoch"] == 2


def test_a_group_writes_predictions_and_each_students_paired_gain_and_fidelity(teacher, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tensorboard.plugins.hparams import plugin_data_pb2

    from distill import stats

    metrics = train_group(configs(teacher, tmp_path))
    preds = {name: torch.load(tmp_path / name / "predictions.pt", weights_only=True) for name in ("kd", "dkd", "base")}
    for name, m in zip(("kd", "dkd", "base"), metrics):
        p = preds[name]
        assert p["format"] == "distill-predictions" and p["probs"].dtype == torch.float16
        # top1 is the float32 argmax; the stored float16 probabilities may only tie where it was a near tie
        assert (p["top1"] == p["probs"].float().argmax(1)).float().mean() > 0.9
        assert (p["top1"] == p["labels"]).float().mean().item() == pytest.approx(m["test_accuracy"])
    kd, base = metrics[0], metrics[2]
    right, base_right = preds["kd"]["top1"] == preds["kd"]["labels"], preds["base"]["top1"] == preds["base"]["labels"]
    gain = stats.paired_gain(right, base_right)
    assert kd["baseline"] == "base" and kd["gain_over_baseline"] == pytest.approx(gain.points)
    assert kd["gain_interval"] == pytest.approx([gain.low, gain.high])
    assert kd["mcnemar_p"] == pytest.approx(stats.mcnemar_exact(*stats.discordant(right, base_right)))
    assert metrics[1].get("gain_over_baseline") is None  # resnet14 has no baseline in this group
    assert "gain_over_baseline" not in base and "teacher_agreement" not in base
    teacher_preds = torch.load(teacher[1].parent / "predictions.pt", weights_only=True)
    assert torch.equal(teacher_preds["labels"], preds["kd"]["labels"])
    assert kd["teacher_agreement"] == pytest.approx(stats.agreement(teacher_preds["top1"], preds["kd"]["top1"]))
    assert kd["teacher_kl"] == pytest.approx(stats.mean_kl(teacher_preds["probs"], preds["kd"]["probs"]), abs=1e-3)

    events = EventAccumulator(str(tmp_path / "kd"), size_guidance={"images": 0, "tensors": 0}).Reload()
    assert "test/confusion_matrix" in events.Tags()["images"]
    summary = events.Tensors("summary/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "gain over base" in summary and "McNemar p" in summary and "agreement with the teacher" in summary
    content = events.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    # TensorBoard sorts columns by name (numbered names keep ours in order) and ticks the first five, 10em
    # each: at 1400 px two fit beside the trial name and the three metrics, so there are two.
    assert [h.display_name for h in experiment.hparam_infos] == ["method", "params (M)"]
    assert [h.name for h in experiment.hparam_infos] == sorted(h.name for h in experiment.hparam_infos)
    assert [(m.name.tag, m.display_name) for m in experiment.metric_infos] == [
        ("result/test_accuracy", "test accuracy (%)"), ("result/gain_over_baseline", "gain (points)"),
        ("result/teacher_agreement", "agreement with teacher (%)")]
    folders = {name: tmp_path / name for name in ("kd", "dkd", "base")} | {"teacher": teacher[1].parent}
    rows = {name: hparams_row(folder) for name, folder in folders.items()}
    # Every option as the method used it (KD's default alpha too); the teacher and the baseline by their role.
    assert {name: row["method"].string_value for name, row in rows.items()} == {
        "kd": "kd T=2 α=0.9", "dkd": "dkd T=4 α=1 β=8 kd_warmup=0.0833", "base": "baseline", "teacher": "teacher"}
    assert rows["kd"]["params_M"].number_value == pytest.approx(round(kd["params"] / 1e6, 3))


def hparams_row(folder) -> dict:
    """A run's HPARAMS values by column name."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = EventAccumulator(str(folder), size_guidance={"tensors": 0}).Reload().PluginTagToContent("hparams")
    row = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    return {key.split("_", 1)[1]: value for key, value in row.hparams.items()}


def test_a_learners_own_mix_is_its_batch_and_its_teachers_and_it_ends_as_trained_alone(teacher, tmp_path,
                                                                                      monkeypatch):
    """Function matching in a group: a KD student with --mix sees (and its teacher sees) the mixed batch, a KD
    student and a baseline without it the shared batch; one teacher forward per distinct batch, and every run
    ends exactly as it ends trained alone."""
    def group(folder):
        cfgs = configs(teacher, folder, augment="default")
        mixed = C.resolve(C.StudentConfig, {}, {**C.to_dict(cfgs[0]), "config": None, "mix": "mixup=0.4,cutmix=1.0",
                                                "out": str(folder / "kd-mix")})
        return [mixed, cfgs[0], cfgs[2]]

    seen = []
    real = train_mod.teacher_outputs
    monkeypatch.setattr(train_mod, "teacher_outputs", lambda loop, x: seen.append(x.clone()) or real(loop, x))
    together = train_group(group(tmp_path / "together"))
    assert len(seen) == 2 * EPOCHS * STEPS  # the mixed batch and the shared one, each once per step
    assert not torch.equal(seen[0], seen[1])  # two different views of the same images
    monkeypatch.setattr(train_mod, "teacher_outputs", real)
    alone = [train_run(cfg) for cfg in group(tmp_path / "alone")]
    for name in ("kd-mix", "kd", "base"):
        assert_same(state(tmp_path / "together" / name), state(tmp_path / "alone" / name), name)
    assert [m["test_accuracy"] for m in together] == [m["test_accuracy"] for m in alone]
    assert not torch.equal(load_checkpoint(tmp_path / "together" / "kd-mix" / "last.pt")["model"]["fc.weight"],
                           load_checkpoint(tmp_path / "together" / "kd" / "last.pt")["model"]["fc.weight"])


@pytest.mark.parametrize("key, value", [("augment", "default,cutout=1,cutout_size=4"), ("batch_size", 6),
                                        ("epochs", 3), ("seed", 1), ("val_size", 9), ("precision", "bf16"),
                                        ("compile_mode", "default")])
def test_a_group_refuses_members_that_differ_in_a_shared_setting(teacher, tmp_path, key, value):
    cfgs = configs(teacher, tmp_path / "g")
    cfgs[1] = C.resolve(C.StudentConfig, {}, {**C.to_dict(cfgs[1]), "config": None, key: value})
    with pytest.raises(UserError, match=rf"cannot train in one group with .*{key}: "):
        build_group_checks(cfgs)


def test_a_group_allows_members_that_differ_only_in_their_own_mix(teacher, tmp_path):
    cfgs = configs(teacher, tmp_path / "g", augment="default")
    cfgs[0] = C.resolve(C.StudentConfig, {}, {**C.to_dict(cfgs[0]), "config": None, "mix": "mixup=0.2"})
    build_group_checks(cfgs)


def build_group_checks(cfgs):
    from distill.engine.checks import check_group

    check_group(cfgs)


def test_each_learner_of_a_group_has_its_method_its_ema_over_the_whole_run_and_an_eval_mode_teacher(teacher,
                                                                                                  tmp_path):
    """The baseline's loss is plain cross-entropy (method none), the EMA's time constant is a share of every
    epoch's steps, and a feature method's shape probe leaves the frozen teacher in eval mode."""
    from distill.engine.build import build_group
    from distill.engine.ema import ema_decay

    cfgs = configs(teacher, tmp_path / "g", epochs=3)
    cfgs[1] = C.resolve(C.StudentConfig, {}, {**C.to_dict(cfgs[1]), "config": None, "method": "fitnet"})
    group = build_group(cfgs)
    try:
        loop = group.loop
        assert [learner.method.name for learner in loop.learners] == ["kd", "fitnet", "none"]
        steps = loop.steps_per_epoch
        for learner in loop.learners:  # RECIPE's horizon 0.2 of 3 epochs x 5 steps: 3 steps, not 1 epoch's 1
            assert learner.ema.decay == ema_decay(0.2, 3 * steps) == pytest.approx(1 - 1 / (0.2 * 3 * steps))
        assert not any(m.training for m in unwrap(loop.teacher.model).modules())
    finally:
        group.release()


def test_a_member_diverging_by_its_own_method_weight_is_named_and_the_others_finish(teacher, tmp_path, capsys):
    cfgs = configs(teacher, tmp_path / "g", precision="fp32")
    cfgs[1] = C.resolve(C.StudentConfig, {}, {**C.to_dict(cfgs[1]), "config": None, "method": "fitnet",
                                              "hint_weight": 1e30})
    with pytest.raises(UserError) as err:
        train_group(cfgs)
    message = str(err.value)
    assert "training loss of dkd became non-finite in epoch 1" in message
    assert "--hint-weight 1e+30 (default 100)" in message and "--precision fp32" not in message
    assert "\n" not in message and err.value.exit_code == 2
    assert not (tmp_path / "g" / "dkd" / "metrics.json").exists()  # no checkpoint of diverged weights either
    assert not (tmp_path / "g" / "dkd" / "last.pt").exists()
    for name in ("kd", "base"):  # the others trained to the end
        assert json.loads((tmp_path / "g" / name / "metrics.json").read_text())["epochs"] == EPOCHS
