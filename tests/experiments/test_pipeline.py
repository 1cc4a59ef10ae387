"""`distill pipeline` on conftest's tiny image tree (CPU, about 10-20 seconds for the whole file)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from rich.console import Console
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import distill.experiments.pipeline as pipeline_mod
from conftest import write_image_tree
from distill.front.cli import main
from distill.errors import UserError
from distill.experiments.pipeline import load_pipeline
from runhelpers import assert_one_line_error, record_groups

STAGES = ("teacher-resnet8", "student-resnet8-kd", "baseline-resnet8")
SCALARS = {"accuracy/train", "accuracy/val", "result/test_accuracy", "lr", "throughput/train_images_per_second",
           "time/epoch_seconds"}
# Plain cross-entropy in one chart, the KD objective in its own: the values do not compare.
LOSS = dict(zip(STAGES, ("loss/train", "loss/train_kd", "loss/train")))
RESULTS = {"result/gain_over_baseline", "result/teacher_agreement"}  # a student's HPARAMS metrics besides its test


def write_config(path: Path, data: Path, cache: Path) -> Path:
    """2 epochs of 4 steps (42 of conftest's 48 images, batch 10); any arch can be trained as a teacher."""
    path.write_text(f"""
[common]
data = "{data}"
cache_dir = "{cache}"
image_size = 16
val_size = 6
batch_size = 10
epochs = 2
device = "cpu"

[teacher]
arch = "resnet8"

[[students]]
arch = "resnet8"
temperature = 2.0
""")
    return path


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> dict:
    """One pipeline run shared by the tests below; it records which stages each training call got."""
    root = tmp_path_factory.mktemp("pipeline")
    config = write_config(root / "tiny.toml", write_image_tree(root / "data"), root / "cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # a relative --out, so the resume test can rerun a copy from another folder
        calls = record_groups(mp)
        main(["pipeline", "--config", str(config), "--out", "exp", "--quiet"])
    return {"root": root, "out": root / "exp", "config": config, "calls": calls}


def accumulator(folder: Path) -> EventAccumulator:
    return EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0}).Reload()


def test_pipeline_makes_three_runs_with_the_same_tags_and_an_hparams_summary(experiment):
    report = json.loads((experiment["out"] / "pipeline.json").read_text())
    assert [s["name"] for s in report["stages"]] == list(STAGES)
    assert {s["status"] for s in report["stages"]} == {"ran"} and report["finished"]
    for name in STAGES:
        events = accumulator(experiment["out"] / name)
        tags = set(events.Tags()["scalars"])
        assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")
        metrics = json.loads((experiment["out"] / name / "metrics.json").read_text())
        assert SCALARS | {LOSS[name]} <= tags and not (set(LOSS.values()) - {LOSS[name]}) & tags
        assert not any(tag.startswith("hparam") for tag in tags)  # no section of single-point charts
        # The section SCALARS opens on holds curves, one point per epoch; single points come under result/.
        assert {len(events.Scalars(tag)) for tag in tags if tag.startswith("accuracy/")} == {metrics["epochs"]}
        final = {tag: events.Scalars(tag)[-1] for tag in tags}
        # Percent, as compare prints it, and the final figures at the last epoch.
        assert final["result/test_accuracy"].value == pytest.approx(100 * metrics["test_accuracy"])
        assert max(e.value for e in events.Scalars("accuracy/val")) == pytest.approx(100 * metrics["best_val_accuracy"])
        assert all(0 <= e.value <= 100 for e in events.Scalars("accuracy/train") + events.Scalars("accuracy/val"))
        if name == "student-resnet8-kd":
            assert final["result/gain_over_baseline"].value == pytest.approx(metrics["gain_over_baseline"])
            assert final["result/teacher_agreement"].value == pytest.approx(100 * metrics["teacher_agreement"])
            assert {final[tag].step for tag in RESULTS | {"result/test_accuracy"}} == {metrics["epochs"]}
        else:
            assert not RESULTS & tags


def test_compare_json_lists_every_run_and_draws_the_chart(experiment, cli):
    result = json.loads(cli("compare", experiment["out"], "--json").out)
    assert {r["name"]: r["role"] for r in result["runs"]} == dict(zip(STAGES, ("teacher", "student", "baseline")))
    assert [r["name"] for r in result["runs"]] == ["teacher-resnet8", "baseline-resnet8", "student-resnet8-kd"]
    student = result["runs"][2]
    assert student["gain_over_baseline"] == pytest.approx(100 * (student["test_accuracy"]
                                                                 - result["runs"][1]["test_accuracy"]))
    with Image.open(result["chart"]) as chart:
        assert chart.size == (960, 600)
    images = accumulator(experiment["out"] / "teacher-resnet8").Tags()["images"]  # no run of its own
    assert images == ["test/confusion_matrix", "compare/accuracy_vs_params", "compare/test_accuracy",
                      "compare/per_class/resnet8"]
    assert not (experiment["out"] / "compare").exists()
    # The student's gain, paired image by image, is in its metrics.json already (it trained beside its baseline).
    metrics = json.loads((experiment["out"] / "student-resnet8-kd" / "metrics.json").read_text())
    assert metrics["gain_over_baseline"] == pytest.approx(student["gain_over_baseline"])
    assert metrics["gain_interval"] == pytest.approx(student["gain_interval"])


def test_the_student_and_its_baseline_train_together_after_the_teacher(experiment):
    assert experiment["calls"] == [["teacher-resnet8"], ["student-resnet8-kd", "baseline-resnet8"]]
    report = json.loads((experiment["out"] / "pipeline.json").read_text())
    together = [s.get("trained_together") for s in report["stages"]]
    assert together == [None, ["student-resnet8-kd", "baseline-resnet8"], ["student-resnet8-kd", "baseline-resnet8"]]
    metrics = json.loads((experiment["out"] / "student-resnet8-kd" / "metrics.json").read_text())
    assert metrics["trained_with"] == ["baseline-resnet8"]


def test_rerun_skips_finished_resumes_interrupted_and_restarts_unsaved_stages(experiment, tmp_path, monkeypatch):
    out = tmp_path / "exp"
    shutil.copytree(experiment["out"], out)
    (out / "student-resnet8-kd" / "metrics.json").unlink()  # stopped after its last checkpoint
    for name in ("metrics.json", "last.pt", "best.pt"):  # stopped before its first checkpoint
        (out / "baseline-resnet8" / name).unlink()
    monkeypatch.chdir(tmp_path)
    main(["pipeline", "--config", str(experiment["config"]), "--out", "exp", "--quiet"])
    report = json.loads((out / "pipeline.json").read_text())
    assert [s["status"] for s in report["stages"]] == ["skipped", "resumed", "ran"]
    assert all((out / name / "metrics.json").is_file() for name in STAGES)


def test_a_rerun_with_the_same_data_named_relatively_names_no_changed_setting(experiment, tmp_path, monkeypatch,
                                                                            capsys):
    """config.json records --data resolved; a relative --data (as the README writes it) is the same data, and
    how a run is computed (--device) is no other setting of what it computed."""
    out = tmp_path / "exp"
    shutil.copytree(experiment["out"], out)
    monkeypatch.chdir(experiment["root"])
    capsys.readouterr()
    main(["pipeline", "--config", str(experiment["config"]), "--out", str(out), "--data", "data", "--device", "auto",
          "--set", "cache_dir=cache", "--quiet"])
    printed = capsys.readouterr().out
    assert [line for line in printed.splitlines() if line.startswith("skip ")] == [
        f"skip {name} (finished)" for name in STAGES]


def test_a_stage_whose_first_save_stopped_after_best_pt_starts_over_and_says_so(experiment, tmp_path, monkeypatch,
                                                                                capsys):
    """best.pt without last.pt (a full disk between the two writes) cannot be continued: the rerun says that this
    best.pt is replaced before it replaces it, and trains the stage again."""
    out = tmp_path / "exp"
    shutil.copytree(experiment["out"], out)
    baseline = out / "baseline-resnet8"
    for name in ("metrics.json", "last.pt"):
        (baseline / name).unlink()
    (baseline / "best.pt").write_bytes(b"the interrupted run's best.pt")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    main(["pipeline", "--config", str(experiment["config"]), "--out", "exp", "--quiet"])
    printed = " ".join(capsys.readouterr().out.split())  # as one line, however the console wrapped it
    assert ("baseline-resnet8 starts over: its folder holds best.pt but no last.pt (a run stopped during its first "
            "save), which cannot be continued; that best.pt is replaced") in printed
    report = json.loads((out / "pipeline.json").read_text())
    assert [s["status"] for s in report["stages"]] == ["skipped", "skipped", "ran"]
    assert (baseline / "best.pt").read_bytes() != b"the interrupted run's best.pt"
    assert (baseline / "last.pt").is_file() and (baseline / "metrics.json").is_file()


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


GOOD = '[teacher]\narch = "resnet8"\n[[students]]\narch = "resnet8"\n'


@pytest.mark.parametrize(("text", "match"), [
    ('[common]\nepoch = 3\n' + GOOD, r"\[common\]: unknown key 'epoch'"),
    ('[common]\nepochs = "3"\n' + GOOD, r"\[common\]: 'epochs' must be int, got str"),
    ('[common]\nstem = "cifar"\n' + GOOD, r"'stem' is not an option of every stage: move it to \[teacher\]"),
    ('[teacher]\narch = "resnet8"\ntemperature = 2.0\n[[students]]\narch = "resnet8"\n',
     r"\[teacher\]: unknown key 'temperature'"),
    (GOOD + 'temprature = 4.0\n', r"\[\[students\]\] #1: unknown key 'temprature'"),
    (GOOD + 'kd_weight = "high"\n', r"\[\[students\]\] #1: 'kd_weight' must be float"),
    ('[[students]]\narch = "resnet20"\n', r"no \[teacher\] table"),
    ('[teacher]\narch = "resnet8"\n', r"no \[\[students\]\] entries"),
    ('[teacher]\n[[students]]\nmethod = "kd"\n', r"#1: no 'arch'"),
    ('[teacher]\n[students]\narch = "resnet8"\n', r"write \[\[students\]\] \(double brackets\)"),
    (GOOD + 'teacher = "t.pt"\n', r"'teacher' is set by the pipeline"),
    ('[common]\nout = "x"\n' + GOOD, r"'out' is set by the pipeline"),
    ('baseline = true\n' + GOOD, r"unknown top-level key 'baseline'"),
    ('baselines = "yes"\n' + GOOD, r"'baselines' must be true or false"),
    (GOOD + '[[students]]\narch = "resnet8"\n', r"two stages would both write"),
    (GOOD + 'epochs = 0\n', r"#1: --epochs must be at least 1"),
])
def test_bad_pipeline_config_is_a_user_error(tmp_path, text, match):
    with pytest.raises(UserError, match=match):
        load_pipeline(write(tmp_path / "bad.toml", text), {})


def test_bad_config_on_the_command_line_is_one_line_and_exit_2(tmp_path, cli):
    assert_one_line_error(cli("pipeline", "--config", write(tmp_path / "bad.toml", "[teacher]\nlr = -1\n")),
                          "[teacher]: --lr must be positive")


def test_plan_names_stages_and_command_line_beats_the_file(tmp_path):
    text = ('baselines = true\n[common]\ndevice = "cuda"\n[teacher]\narch = "resnet18"\n'
            '[[students]]\narch = "resnet20"\n[[students]]\narch = "resnet20"\nmethod = "dkd"\nnckd_weight = 4.0\n'
            '[[students]]\narch = "resnet8x4"\n')
    pipe = load_pipeline(write(tmp_path / "plan.toml", text), {"device": "cpu", "data": "d"})
    assert pipe.out == Path("runs/plan")
    assert [s.name for s in pipe.stages] == ["teacher-resnet18", "student-resnet20-kd", "student-resnet20-dkd",
                                             "student-resnet8x4-kd", "baseline-resnet20", "baseline-resnet8x4"]
    assert all(s.values["device"] == "cpu" and s.values["data"] == "d" for s in pipe.stages)
    assert pipe.stages[1].values["teacher"] == str(Path("runs/plan/teacher-resnet18/best.pt"))
    baseline = pipe.stages[4].values
    assert baseline["no_teacher"] and "teacher" not in baseline and "method" not in baseline


def test_a_student_with_its_own_mix_has_a_stage_of_its_own_and_its_baseline_keeps_the_unmixed_batch(tmp_path):
    text = ('[teacher]\narch = "resnet8"\n[[students]]\narch = "resnet8"\nmix = "mixup=0.2,cutmix=1.0"\n'
            '[[students]]\narch = "resnet8"\n')
    pipe = load_pipeline(write(tmp_path / "fm.toml", text), {})
    assert [s.name for s in pipe.stages] == ["teacher-resnet8", "student-resnet8-kd-mix", "student-resnet8-kd",
                                             "baseline-resnet8"]
    assert "mix" not in pipe.stages[3].values


def test_set_gives_every_stage_an_option_over_the_file(tmp_path, cli):
    from distill.front.config import parse_assignments

    sets = parse_assignments(["compile=false", "epochs = 2", "augment=default,mixup=0.2"], "--set")
    pipe = load_pipeline(write(tmp_path / "p.toml", "[common]\nepochs = 3\n" + GOOD), {}, str(tmp_path / "o"), sets)
    assert all(s.values["compile"] is False and s.values["epochs"] == 2 and s.values["augment"] == "default,mixup=0.2"
               for s in pipe.stages)
    config = write(tmp_path / "q.toml", GOOD)
    assert_one_line_error(cli("pipeline", "--config", config, "--set", "epochs"), "--set 'epochs' is not KEY=VALUE")
    assert_one_line_error(cli("pipeline", "--config", config, "--set", "epochs=x"), "--set: 'epochs' must be int")
    assert_one_line_error(cli("pipeline", "--config", config, "--set", "method=dkd"),
                          "--set: 'method' is not an option of every stage")


def test_a_finished_stage_is_skipped_but_changed_settings_are_named(tmp_path, capsys):
    pipe = load_pipeline(write(tmp_path / "p.toml", "[common]\nepochs = 3\n" + GOOD), {}, str(tmp_path / "out"))
    teacher = pipe.out / pipe.stages[0].name
    teacher.mkdir(parents=True)
    (teacher / "config.json").write_text(json.dumps({"epochs": 2, "arch": "resnet8", "quiet": True}))
    (teacher / "metrics.json").write_text("{}")
    record = pipeline_mod.run_stage(pipe.stages[0], pipe.out, Console(width=300))
    assert record["status"] == "skipped"
    assert "skip teacher-resnet8 (finished; it was run with other epochs: delete" in capsys.readouterr().out


def test_an_interrupted_stage_says_how_to_continue_the_pipeline(tmp_path, cli, monkeypatch):
    def interrupted(cfgs):
        raise UserError(f"interrupted (epoch 1 step 3); saved {cfgs[0].out}/last.pt", exit_code=130)

    monkeypatch.setattr(pipeline_mod, "train_group", interrupted)
    config = write_config(tmp_path / "p.toml", write_image_tree(tmp_path / "data"), tmp_path / "cache")
    result = cli("pipeline", "--config", config, "--out", tmp_path / "out")
    assert result.code == 130
    assert "or rerun this distill pipeline command: finished stages are skipped" in result.err


def test_seeds_run_every_student_and_baseline_once_per_seed_and_the_teacher_once(tmp_path):
    from distill.experiments.pipeline import plan_groups

    text = ('seeds = [0, 1, 2]\n[common]\nseed = 7\n[teacher]\narch = "resnet8"\n'
            '[[students]]\narch = "resnet8"\n[[students]]\narch = "resnet14"\nmethod = "dkd"\n')
    pipe = load_pipeline(write(tmp_path / "seeds.toml", text), {"data": "d"}, str(tmp_path / "out"))
    names = [s.name for s in pipe.stages]
    per_seed = ["student-resnet8-kd", "student-resnet14-dkd", "baseline-resnet8", "baseline-resnet14"]
    assert names == ["teacher-resnet8"] + [f"{n}-seed{seed}" for seed in (0, 1, 2) for n in per_seed]
    cfgs = {s.name: s.config(pipe.out) for s in pipe.stages}
    assert cfgs["teacher-resnet8"].seed == 7  # the teacher keeps the file's seed
    assert cfgs["baseline-resnet14-seed2"].seed == 2 and cfgs["student-resnet8-kd-seed1"].seed == 1
    assert [[s.name for s in g] for g in plan_groups(pipe)] == [
        ["teacher-resnet8"], *[[f"{n}-seed{seed}" for n in per_seed] for seed in (0, 1, 2)]]


@pytest.mark.parametrize(("seeds", "extra", "match"), [
    ("[]", "", r"'seeds' must be a list of distinct integers"),
    ("[0, 0]", "", r"'seeds' must be a list of distinct integers"),
    ('["a"]', "", r"'seeds' must be a list of distinct integers"),
    ("[-1]", "", r"'seeds' must be a list of distinct integers"),
    ("3", "", r"'seeds' must be a list"),
    ("[0, 1]", "seed = 4\n", r"sets 'seed' while 'seeds' lists them all"),
])
def test_bad_seeds_are_one_line_errors(tmp_path, seeds, extra, match):
    with pytest.raises(UserError, match=match):
        load_pipeline(write(tmp_path / "bad.toml", f"seeds = {seeds}\n" + GOOD + extra), {})


@pytest.mark.parametrize(("student", "needle"), [
    ('data = "no/such/data"\n', "stage student-resnet8-kd: --data no/such/data does not exist"),
    ('limit_train = 9\n', "stage student-resnet8-kd: --batch-size 10 is larger than its 9 training images"),
])
def test_a_late_stages_problem_stops_the_pipeline_before_the_teacher_trains(tmp_path, cli, student, needle):
    data = write_image_tree(tmp_path / "data")
    config = write_config(tmp_path / "p.toml", data, tmp_path / "cache")
    config.write_text(config.read_text() + student)
    result = cli("pipeline", "--config", config, "--out", tmp_path / "out", "--quiet")
    assert_one_line_error(result, needle)
    assert not (tmp_path / "out" / "teacher-resnet8").exists()


def test_a_pipeline_out_that_is_a_file_is_one_line(tmp_path, cli):
    (tmp_path / "out").write_text("x")
    config = write_config(tmp_path / "p.toml", write_image_tree(tmp_path / "data"), tmp_path / "cache")
    assert_one_line_error(cli("pipeline", "--config", config, "--out", tmp_path / "out"), "is a file, not a folder")


def test_a_skipped_stage_keeps_its_test_accuracy_in_the_report(experiment, tmp_path, monkeypatch):
    out = tmp_path / "exp"
    shutil.copytree(experiment["out"], out)
    monkeypatch.chdir(tmp_path)
    main(["pipeline", "--config", str(experiment["config"]), "--out", "exp", "--quiet"])
    report = json.loads((out / "pipeline.json").read_text())
    for stage in report["stages"]:
        expected = json.loads((out / stage["name"] / "metrics.json").read_text())["test_accuracy"]
        assert stage["status"] == "skipped" and stage["test_accuracy"] == expected
