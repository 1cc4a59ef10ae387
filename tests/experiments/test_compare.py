"""`distill compare` on hand-written metrics.json and predictions.pt files (no training, a few seconds)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import threading
from pathlib import Path

import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from distill.experiments.chart import Series, format_params, most_different
from distill.experiments.compare import ACCURACY_TAG, CHART_TAG, SUMMARY_TAG, compare, markdown_summary
from runhelpers import assert_one_line_error

@pytest.fixture(autouse=True)
def terminal(monkeypatch):
    """What the output looks like must not depend on the caller's terminal: 80 columns, no colour, unless a
    test says otherwise."""
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("NO_COLOR", "1")
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)


N_TEST, CLASSES = 20, ["apple", "boat", "cloud"]
LABELS = torch.arange(N_TEST) % len(CLASSES)
TOP, OTHER = 0.75, 0.125  # exact in float16 and summing to 1, so the expected KL is exact too


def write_predictions(folder: Path, right: range, labels: torch.Tensor = LABELS) -> torch.Tensor:
    """predictions.pt whose model is right exactly on the images in `right` (else it says label + 1);
    returns which images it gets right."""
    correct = torch.zeros(len(labels), dtype=torch.bool)
    correct[list(right)] = True
    top1 = torch.where(correct, labels, (labels + 1) % len(CLASSES))
    probs = torch.full((len(labels), len(CLASSES)), OTHER).index_put_((torch.arange(len(labels)), top1),
                                                                      torch.tensor(TOP))
    torch.save({"format": "distill-predictions", "version": 1, "classes": CLASSES, "labels": labels, "top1": top1,
                "probs": probs.half(), "tta": False}, folder / "predictions.pt")
    return correct


def fake_run(folder: Path, role: str, arch: str, accuracy: float | None = None, method: str | None = None,
             params: int = 270_000, right: range | None = None, seed: int | None = None, **extra) -> None:
    """A finished run: metrics.json, plus predictions.pt when `right` (the images it gets right) is given."""
    folder.mkdir(parents=True)
    if right is not None:
        correct = write_predictions(folder, right).double()
        accuracy = correct.mean().item()
        extra |= {"test_images": N_TEST, "per_class_accuracy": {
            c: correct[LABELS == k].mean().item() for k, c in enumerate(CLASSES)}}
    metrics = {"role": role, "arch": arch, "method": method, "params": params, "gflops": 0.08,
               "test_accuracy": accuracy, "best_val_accuracy": float("nan"), "epochs": 3, "wall_seconds": 75.0,
               "train_images_per_second": 1234.5, **extra}
    if seed is not None:
        metrics["seed"] = seed
    (folder / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def runs(tmp_path) -> Path:
    """Old runs: no predictions.pt, no seeds."""
    exp = tmp_path / "exp"
    fake_run(exp / "student-resnet20-kd", "student", "resnet20", 0.9215, "kd")
    fake_run(exp / "student-resnet20-dkd", "student", "resnet20", 0.9100, "dkd")
    fake_run(exp / "baseline-resnet20", "baseline", "resnet20", 0.9150, "none")
    fake_run(exp / "student-resnet8x4-kd", "student", "resnet8x4", 0.9300, "kd", params=1_230_000)
    fake_run(exp / "teacher-resnet50", "teacher", "resnet50", 0.9512, params=23_500_000)
    fake_run(tmp_path / "other" / "baseline-resnet8x4", "baseline", "resnet8x4", 0.5)  # another experiment
    return tmp_path


# Seeds 0-2 of a resnet8x4 baseline and KD student, one DKD student: the images each gets right.
BASELINE_RIGHT = {0: range(12), 1: range(11), 2: range(13)}  # 60%, 55%, 65%
KD_RIGHT = {0: [*range(10), *range(12, 18)], 1: range(14), 2: range(17)}  # 80%, 70%, 85%
DKD_RIGHT = range(7)  # 35%: wrong on 5 images its baseline gets right, right on none it gets wrong
TEACHER_RIGHT = range(18)


def name(kind: str, seed: int) -> str:
    return f"{kind}-resnet8x4{'-kd' if kind == 'student' else ''}{f'-seed{seed}' if seed else ''}"


@pytest.fixture
def scored(tmp_path) -> Path:
    """One experiment whose runs all have predictions.pt: every gain, interval, p and agreement is known."""
    exp = tmp_path / "exp"
    teacher = {"path": "elsewhere/teacher-resnet50/best.pt", "arch": "resnet50", "test_accuracy": 0.9}
    small = {"arch": "resnet8x4", "params": 1_230_000, "teacher": teacher}
    fake_run(exp / "teacher-resnet50", "teacher", "resnet50", params=23_500_000, right=TEACHER_RIGHT, seed=0)
    for seed in (0, 1, 2):
        fake_run(exp / name("baseline", seed), "baseline", method="none", right=BASELINE_RIGHT[seed], seed=seed,
                 **{k: v for k, v in small.items() if k != "teacher"})
        fake_run(exp / name("student", seed), "student", method="kd", right=KD_RIGHT[seed], seed=seed, **small)
    fake_run(exp / "student-resnet8x4-dkd", "student", method="dkd", right=DKD_RIGHT, seed=0, **small)
    return exp


def flat(text: str) -> str:
    """The text with rich's line wrapping undone."""
    return " ".join(text.split())


def by_name(result: dict) -> dict:
    return {Path(r["name"]).name: r for r in result["runs"]}


def test_gain_is_over_the_baseline_of_the_same_arch_in_the_same_experiment(runs):
    rows = {r["name"]: r for r in compare(runs)["runs"]}
    assert rows["exp/student-resnet20-kd"]["gain_over_baseline"] == pytest.approx(0.65)
    assert rows["exp/student-resnet20-dkd"]["gain_over_baseline"] == pytest.approx(-0.5)
    assert rows["exp/student-resnet8x4-kd"]["gain_over_baseline"] is None  # its arch's baseline is elsewhere
    assert rows["exp/teacher-resnet50"]["gain_over_baseline"] is None
    assert rows["exp/baseline-resnet20"]["best_val_accuracy"] is None  # NaN is not JSON


def test_rows_teacher_first_then_by_arch_baseline_before_students(runs):
    names = [r["name"] for r in compare(runs)["runs"]]
    assert names == ["exp/teacher-resnet50", "exp/baseline-resnet20", "exp/student-resnet20-dkd",
                     "exp/student-resnet20-kd", "exp/student-resnet8x4-kd", "other/baseline-resnet8x4"]


def test_json_output_chart_and_tensorboard_image(runs, cli):
    result = json.loads(cli("compare", runs / "exp", "--json").out)
    assert len(result["runs"]) == 5 and result["chart"] == str(runs / "exp" / "compare.png")
    expected = {"name", "path", "role", "arch", "method", "params", "gflops", "test_accuracy", "best_val_accuracy",
                "epochs", "wall_seconds", "train_images_per_second", "gain_over_baseline", "seed", "gain_interval",
                "mcnemar_p", "teacher_agreement", "teacher_kl", "baseline_run", "teacher_run"}
    assert all(set(r) == expected for r in result["runs"])
    assert result["aggregates"] == [] and result["notes"] == []
    assert all(r[k] is None for r in result["runs"] for k in ("gain_interval", "mcnemar_p", "teacher_agreement"))
    with Image.open(result["chart"]) as chart:
        assert chart.size == (960, 600) and chart.mode == "RGB"
    assert cli("compare", runs / "exp", "--json").code == 0  # a second comparison replaces the first image
    teacher = runs / "exp" / "teacher-resnet50"  # the first run shown holds compare's TensorBoard output
    assert result["tensorboard"] == str(teacher) and not (runs / "exp" / "compare").exists()
    assert len(list(teacher.glob("events.out.tfevents.*.distill-compare"))) == 1


def test_table_names_every_run_and_shows_dashes_without_predictions(runs, cli, monkeypatch):
    out = cli("compare", runs).out
    assert all(name in out for name in ("teacher-resnet50", "student-resnet20-kd", "+0.65", "-0.50"))
    assert "student-resnet20-kd: +0.65 points over baseline-resnet20 (without both runs' predictions.pt" \
        in flat(out)
    line = next(line for line in out.splitlines() if line.startswith("student-resnet20-dkd "))
    assert line.split()[-2:] == ["-0.50", "-"]  # no interval, no agreement
    monkeypatch.setenv("COLUMNS", "200")
    assert "1m15.0s" in cli("compare", runs, "--wide").out


def test_paired_gain_interval_mcnemar_agreement_and_kl_are_exact(scored, cli):
    rows = by_name(json.loads(cli("compare", scored, "--json").out))
    kd = rows["student-resnet8x4-kd"]
    # kd vs baseline (seed 0): right on 12-17 where the baseline is wrong (b = 6), wrong on 10-11 (c = 2).
    d = [1.0] * 6 + [-1.0] * 2 + [0.0] * 12
    half = 1.96 * statistics.stdev(d) / math.sqrt(N_TEST)
    assert kd["baseline_run"] == "baseline-resnet8x4" and kd["seed"] == 0
    assert kd["gain_over_baseline"] == pytest.approx(20.0)
    assert kd["gain_interval"] == [pytest.approx(100 * (0.2 - half), abs=1e-4), pytest.approx(100 * (0.2 + half),
                                                                                               abs=1e-4)]
    assert kd["mcnemar_p"] == pytest.approx(2 * (1 + 8 + 28) / 2 ** 8)  # 2 P(X <= 2), X ~ B(8, 1/2)
    # The teacher is wrong on 18-19 like kd (both say label + 1); kd is also wrong on 10-11: 18 of 20 agree.
    assert kd["teacher_run"] == "teacher-resnet50" and kd["teacher_agreement"] == pytest.approx(0.9)
    assert kd["teacher_kl"] == pytest.approx(2 / 20 * (TOP - OTHER) * math.log(TOP / OTHER))
    dkd = rows["student-resnet8x4-dkd"]
    assert dkd["gain_over_baseline"] == pytest.approx(-25.0) and dkd["mcnemar_p"] == pytest.approx(0.0625)
    seed1 = rows["student-resnet8x4-kd-seed1"]
    assert seed1["baseline_run"] == "baseline-resnet8x4-seed1" and seed1["gain_over_baseline"] == pytest.approx(15)
    assert seed1["mcnemar_p"] == pytest.approx(2 * 1 / 2 ** 3)  # b = 3 (images 11-13), c = 0
    base = rows["baseline-resnet8x4"]
    assert base["gain_interval"] is None and base["teacher_agreement"] == pytest.approx(14 / 20)  # 0-11, 18-19
    assert rows["teacher-resnet50"]["teacher_agreement"] is None


def test_seeds_aggregate_to_mean_sd_and_paired_t_test(scored, cli):
    result = json.loads(cli("compare", scored, "--json").out)
    aggregates = {a["role"] + "/" + a["method"]: a for a in result["aggregates"]}
    assert set(aggregates) == {"student/kd", "baseline/none"}  # dkd has one seed, the teacher one
    kd = aggregates["student/kd"]
    assert kd["seeds"] == [0, 1, 2] and kd["runs"] == [name("student", s) for s in (0, 1, 2)]
    assert kd["test_accuracy_mean"] == pytest.approx(statistics.mean([0.80, 0.70, 0.85]))
    assert kd["test_accuracy_std"] == pytest.approx(statistics.stdev([0.80, 0.70, 0.85]))
    assert kd["gain_mean"] == pytest.approx(55 / 3) and kd["gain_std"] == pytest.approx(statistics.stdev([20, 15, 20]))
    # d = 0.20, 0.15, 0.20: t = mean / (sd / sqrt(3)) = 11; df = 2: p = 1 - t / sqrt(t^2 + 2)
    assert kd["t"] == pytest.approx(11.0) and kd["df"] == 2 and kd["p"] == pytest.approx(1 - 11 / math.sqrt(123))
    assert aggregates["baseline/none"]["gain_mean"] is None and aggregates["baseline/none"]["p"] is None
    out = cli("compare", scored).out
    assert "student resnet8x4 kd" in out and "78.33 ± 7.64" in out and "+18.33 ± 2.89" in out


def test_the_default_table_reads_whole_in_80_columns(scored, cli):
    result = compare(scored)
    out = cli("compare", scored).out
    everything = out.splitlines()
    header = next(i for i, line in enumerate(everything) if line.startswith("run "))
    lines = everything[header:next(i for i, line in enumerate(everything) if line.startswith("gain: test accuracy"))]
    table = "\n".join(lines)
    assert "…" not in out and max(len(line) for line in lines) <= 80
    for row in result["runs"]:
        mine = next(line for line in lines if line.startswith(Path(row["name"]).name + " "))
        if row["gain_interval"]:
            lo, hi = row["gain_interval"]
            assert f"{row['gain_over_baseline']:+.2f} [{lo:+.2f},{hi:+.2f}]" in mine
        if row["teacher_agreement"] is not None:
            assert f"{100 * row['teacher_agreement']:.2f}%" in mine
        assert f"{100 * row['test_accuracy']:.2f}%" in mine and f"{row['params'] / 1e6:.2f}M" in mine
    assert "McNemar p" not in table and "KL" not in table  # --wide only
    assert "student-resnet8x4-kd: +20.00 points over baseline-resnet8x4, 95% CI [" in flat(out)
    assert "McNemar p = 0.289: not significant — within noise" in flat(out)


def test_wide_shows_every_column(scored, cli, monkeypatch):
    monkeypatch.delenv("COLUMNS")  # and stdout is no terminal: a file or a log has no edge to fit
    out = cli("compare", scored, "--wide").out
    header = next(line for line in out.splitlines() if line.startswith("run "))
    for column in ("role", "arch", "method", "seed", "GFLOPs", "best val", "McNemar p", "agree", "KL", "epochs",
                   "wall time", "img/s"):
        assert column in header, column
    kd = next(line for line in out.splitlines() if line.startswith("student-resnet8x4-kd "))
    assert "0.289" in kd and "1m15.0s" in kd and "…" not in out


def test_broken_predictions_give_a_note_not_a_crash(scored, cli):
    (scored / "student-resnet8x4-kd" / "predictions.pt").write_bytes(b"not a zip at all")
    torch.save({"weights": torch.zeros(3)}, scored / "student-resnet8x4-dkd" / "predictions.pt")
    write_predictions(scored / "student-resnet8x4-kd-seed1", range(14), labels=LABELS.flip(0))  # another split
    result = json.loads(cli("compare", scored, "--json").out)
    rows = by_name(result)
    assert rows["student-resnet8x4-kd"]["gain_over_baseline"] == pytest.approx(20.0)  # from metrics.json
    assert all(rows[n]["gain_interval"] is None and rows[n]["mcnemar_p"] is None and rows[n]["teacher_kl"] is None
               for n in ("student-resnet8x4-kd", "student-resnet8x4-dkd", "student-resnet8x4-kd-seed1"))
    assert result["notes"] == [
        "student-resnet8x4-dkd: predictions.pt is not a distill predictions file; treated as missing",
        "student-resnet8x4-kd: predictions.pt is unreadable; treated as missing",
        "student-resnet8x4-kd-seed1: its test labels differ from baseline-resnet8x4-seed1's (another test split?); "
        "no interval or p for its gain",
        "student-resnet8x4-kd-seed1: its test labels differ from teacher-resnet50's (another test split?); "
        "no agreement or KL"]
    out = cli("compare", scored)
    assert out.code == 0 and "note: student-resnet8x4-kd: predictions.pt is unreadable" in out.out


def test_the_teacher_is_found_by_its_checkpoint_path(scored, cli, monkeypatch):
    fake_run(scored / "teacher-wrn", "teacher", "resnet50", params=23_500_000, right=range(20), seed=0)
    rows = by_name(json.loads(cli("compare", scored, "--json").out))
    assert rows["student-resnet8x4-kd"]["teacher_run"] == "teacher-resnet50"  # by folder name
    assert rows["baseline-resnet8x4"]["teacher_run"] is None  # two teachers, no path: none is guessed
    monkeypatch.chdir(scored.parent)  # the path as given at training time, relative to this folder
    metrics = json.loads((scored / "student-resnet8x4-dkd" / "metrics.json").read_text())
    metrics["teacher"]["path"] = "exp/teacher-wrn/best.pt"
    (scored / "student-resnet8x4-dkd" / "metrics.json").write_text(json.dumps(metrics))
    rows = by_name(json.loads(cli("compare", scored, "--json").out))
    assert rows["student-resnet8x4-dkd"]["teacher_run"] == "teacher-wrn"
    assert rows["student-resnet8x4-dkd"]["teacher_agreement"] == pytest.approx(7 / 20)


def digest(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_run_named_compare_is_left_intact(scored, cli):
    run = scored / "compare"
    fake_run(run, "student", "resnet8x4", method="kd", params=1_230_000, right=range(15), seed=7)
    (run / "last.pt").write_bytes(b"weights")
    (run / "events.out.tfevents.1700000000.host.1.0").write_bytes(b"the run's own curves")
    before = digest(run)
    for _ in range(2):
        result = json.loads(cli("compare", scored, "--json").out)
        assert digest(run) == before
    assert "compare" in by_name(result)  # and it is compared like any run


def test_compare_adds_one_event_file_of_its_own_and_never_touches_the_runs(scored, cli):
    teacher = scored / "teacher-resnet50"
    own = teacher / "events.out.tfevents.1700000000.host.1.0"
    own.write_bytes(b"the teacher's curves")
    before = {p.name: p.read_bytes() for p in teacher.iterdir()}
    for _ in range(2):
        assert json.loads(cli("compare", scored, "--json").out)["tensorboard"] == str(teacher)
    after = {p.name: p.read_bytes() for p in teacher.iterdir()}
    added = sorted(set(after) - set(before))
    assert len(added) == 1 and added[0].endswith(".distill-compare")  # the second call replaced the first's
    assert all(after[name] == data for name, data in before.items())
    assert not (scored / "compare").exists()


def test_charts_are_pngs_and_tensorboard_has_them_and_a_summary(scored, cli):
    result = json.loads(cli("compare", scored, "--json").out)
    names = [Path(p).name for p in result["charts"]]
    assert names == ["compare.png", "compare_accuracy.png", "compare_per_class_resnet8x4.png"]
    sizes = {}
    for path in result["charts"]:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.mode == "RGB"
            sizes[Path(path).name] = image.size
    assert sizes["compare.png"] == (960, 600)
    assert sizes["compare_accuracy.png"] == (960, 170 + 52 * 8)  # one row per run
    assert sizes["compare_per_class_resnet8x4.png"][0] == 960
    events = EventAccumulator(result["tensorboard"], size_guidance={"images": 0, "tensors": 0}).Reload()
    assert events.Tags()["images"] == [CHART_TAG, ACCURACY_TAG, "compare/per_class/resnet8x4"]
    assert f"{SUMMARY_TAG}/text_summary" in events.Tags()["tensors"]


def test_markdown_summary_lists_every_run_with_its_gain(scored):
    result = compare(scored)
    text = markdown_summary(result)
    lines = text.splitlines()
    assert lines[0] == "| run | params | test acc | gain [95% CI] | McNemar p | agree |"
    kd = next(line for line in lines if line.startswith("| student-resnet8x4-kd |"))
    assert "| 1.23M | 80.00% | +20.00 [" in kd and "| 0.289 | 90.00% |" in kd
    assert "- student-resnet8x4-kd: +20.00 points over baseline-resnet8x4" in text


def test_parameter_ticks_use_one_unit():
    assert [format_params(v) for v in (5e4, 2.7e5, 1e6, 1.23e6, 2.35e7, 1e8)] == \
        ["0.05M", "0.27M", "1M", "1.23M", "23.5M", "100M"]


def test_many_classes_show_the_largest_student_vs_baseline_gaps():
    classes = [f"class{i}" for i in range(30)]
    student = [50.0 + (i if i % 3 == 0 else 0.5) for i in range(30)]  # big gaps at 0, 3, ..., 27 (0 is none)
    series = [Series("teacher", "teacher", [90.0] * 30), Series("baseline", "baseline", [50.0] * 30),
              Series("student kd (3 seeds)", "student", student)]
    picked, kept, subtitle = most_different(classes, series)
    # the 9 big gaps, then the first 3 of the equal small ones (1, 2, 4), in class order
    assert picked == [f"class{i}" for i in (1, 2, 3, 4, 6, 9, 12, 15, 18, 21, 24, 27)]
    assert [len(s.values) for s in kept] == [12, 12, 12]
    assert subtitle == "12 of 30 classes: the largest student kd vs baseline gaps"
    assert most_different(classes[:12], series)[0] == classes[:12]


def broken_run(root: Path, text: str) -> None:
    fake_run(root / "run", "student", "resnet20", 0.5)
    (root / "run" / "metrics.json").write_text(text)


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: p.mkdir(), "no runs (folders with metrics.json) under"),
    (lambda p: None, "is not a folder"),
    (lambda p: broken_run(p, "{"), "cannot read"),
    (lambda p: broken_run(p, "[]"), "a JSON list, not an object"),
])
def test_errors_are_one_line_and_exit_2(tmp_path, cli, make, message):
    make(tmp_path / "runs")
    assert_one_line_error(cli("compare", tmp_path / "runs"), message)


def test_a_read_only_folder_is_still_compared_and_the_note_says_why_no_charts(scored, cli, monkeypatch):
    import distill.atomic as atomic

    def read_only(*args, **kwargs):  # as root, chmod would not stop the write: simulate the refusal
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(atomic, "open", read_only, raising=False)  # the temporary cannot be created
    result = cli("compare", scored)
    assert result.code == 0, result.err
    flat_out = " ".join(result.out.split())
    assert "charts not written" in flat_out and "Permission denied" in flat_out and "--out" not in flat_out
    assert "student-resnet8x4-kd-seed1" in flat_out and "charts: " not in flat_out  # the table, no chart line


# ----------------------------------------------------------------------------------------------------------
# Files compare did not write, hostile metrics.json, weak teachers, the terminal (issue 17).

def user_png(path: Path, colour: str) -> None:
    Image.new("RGB", (4, 4), colour).save(path)


def test_charts_never_replace_a_file_compare_did_not_write(scored, cli, tmp_path):
    user_png(tmp_path / "mine.png", "red")
    user_png(scored / "compare.png", "blue")  # the user's own chart
    (scored / "compare_accuracy.png").write_bytes(b"not even a PNG")
    user_png(scored / "compare_accuracy.distill.png", "green")  # the first way out is taken too
    (scored / "compare_per_class_resnet8x4.png").symlink_to(tmp_path / "mine.png")
    before = digest(tmp_path)
    result = json.loads(cli("compare", scored, "--json").out)
    names = ["compare.distill.png", "compare_accuracy.distill-2.png", "compare_per_class_resnet8x4.distill.png"]
    assert result["charts"] == [str(scored / name) for name in names] and result["chart"] == result["charts"][0]
    assert result["notes"] == [
        f"compare.png, compare_accuracy.png, compare_per_class_resnet8x4.png in {scored} are not charts of distill "
        f"compare, left as they are: compare's charts went to {', '.join(names)} instead"]
    assert {k: v for k, v in digest(tmp_path).items() if k in before} == before
    assert (scored / "compare_per_class_resnet8x4.png").is_symlink()
    for path in result["charts"]:
        with Image.open(path) as image:
            assert image.size[0] == 960
    # The next comparison replaces its own charts where they are: no third name, the user's files untouched.
    assert json.loads(cli("compare", scored, "--json").out)["charts"] == result["charts"]
    assert {k: v for k, v in digest(tmp_path).items() if k in before} == before
    assert len(list(scored.glob("compare*.png"))) == 4 + 3  # the user's and compare's


def test_a_chart_compare_wrote_is_replaced_in_place(scored, cli):
    first = json.loads(cli("compare", scored, "--json").out)
    drawn = (scored / "compare.png").read_bytes()
    path = scored / "student-resnet8x4-dkd" / "metrics.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"test_accuracy": 0.95}))
    second = json.loads(cli("compare", scored, "--json").out)
    assert second["charts"] == first["charts"] and first["notes"] == []
    # (and predictions.pt that no longer match metrics.json lose their interval, not the whole comparison)
    assert second["notes"] == ["student-resnet8x4-dkd: predictions.pt gives 35.00% test accuracy, metrics.json "
                               "95.00% (another run's file?); treated as missing"]
    assert (scored / "compare.png").read_bytes() != drawn and not list(scored.glob("*.distill*"))


def test_a_fifo_a_device_or_an_oversized_metrics_json_is_skipped_with_a_note(runs):
    exp = runs / "exp"
    for name in ("fifo", "huge", "zero"):  # in this order: a blocked FIFO stops compare before /dev/zero
        (exp / name).mkdir()
    os.mkfifo(exp / "fifo" / "metrics.json")
    (exp / "huge" / "metrics.json").write_text('{"role": "student"' + " " * (2 << 20) + "}")  # valid JSON, 2 MiB
    (exp / "zero" / "metrics.json").symlink_to("/dev/zero")
    done: dict = {}
    thread = threading.Thread(target=lambda: done.update(result=compare(runs)), daemon=True)
    thread.start()
    thread.join(120)
    assert not thread.is_alive(), "compare blocked on a FIFO named metrics.json"
    result = done["result"]
    assert [r["name"] for r in result["runs"]] == [
        "exp/teacher-resnet50", "exp/baseline-resnet20", "exp/student-resnet20-dkd", "exp/student-resnet20-kd",
        "exp/student-resnet8x4-kd", "other/baseline-resnet8x4"]
    assert result["notes"] == [
        f"{exp / 'fifo' / 'metrics.json'} is a named pipe (FIFO), not a regular file; that run is skipped",
        f"{exp / 'huge' / 'metrics.json'} is over 1 MiB, far more than a run's metrics take; that run is skipped",
        f"{exp / 'zero' / 'metrics.json'} is a device file, not a regular file; that run is skipped"]


BAD_FIELDS = [  # (field, value, how the note shows it)
    ("role", ["student"], '["student"]'),
    ("arch", 20, "20"),
    ("method", {"kd": True}, '{"kd": true}'),
    ("test_accuracy", "0.8", '"0.8"'),
    ("test_accuracy", 1e308, "1e+308"),  # was a math domain error in the Wilson interval
    ("test_accuracy", -0.1, "-0.1"),
    ("best_val_accuracy", float("inf"), "Infinity"),
    ("params", 10 ** 400, "1" + "0" * 38 + "…"),  # was an OverflowError
    ("epochs", 2.5, "2.5"),
    ("seed", True, "true"),
    ("wall_seconds", -3, "-3"),
    ("test_images", 0, "0"),
    ("teacher", ["best.pt"], '["best.pt"]'),
    ("teacher.path", 7, "7"),
    ("teacher.test_accuracy", 2, "2"),
    ("per_class_accuracy.boat", "high", '"high"'),
]


def test_a_field_of_the_wrong_type_or_range_skips_that_run_with_a_note(runs, cli):
    """One run per bad field beside good runs, compared at once: a note per bad run, the good ones compared."""
    good = {"role": "student", "arch": "resnet20", "method": "kd", "params": 270_000, "test_accuracy": 0.9,
            "test_images": 20, "seed": 0, "teacher": {"path": "t/best.pt", "test_accuracy": 0.95},
            "per_class_accuracy": {"apple": 0.9, "boat": 0.9}}
    paths = []
    for index, (field, value, _) in enumerate(BAD_FIELDS):
        metrics = json.loads(json.dumps(good))
        *parents, key = field.split(".")
        target = metrics
        for parent in parents:
            target = target[parent]
        target[key] = value
        (runs / "bad" / f"run{index:02d}").mkdir(parents=True)
        paths.append(runs / "bad" / f"run{index:02d}" / "metrics.json")
        paths[-1].write_text(json.dumps(metrics))
    result = cli("compare", runs, "--json")
    assert result.code == 0, result.err
    compared = json.loads(result.out)
    assert [r["name"] for r in compared["runs"]] == [  # the good ones
        "exp/teacher-resnet50", "exp/baseline-resnet20", "exp/student-resnet20-dkd", "exp/student-resnet20-kd",
        "exp/student-resnet8x4-kd", "other/baseline-resnet8x4"]
    assert len(compared["notes"]) == len(BAD_FIELDS)
    for note, path, (field, _, shown) in zip(compared["notes"], paths, BAD_FIELDS):
        assert note.startswith(f"{path}: {field} is {shown}, not ") and note.endswith("; that run is skipped"), note
    assert compared["notes"][4] == f"{paths[4]}: test_accuracy is 1e+308, not a fraction from 0 to 1; that run is " \
                                   f"skipped"
    printed = cli("compare", runs)
    assert printed.code == 0 and "Traceback" not in printed.err
    assert f"note: {paths[1]}: arch is 20, not text; that run is skipped" in flat(printed.out)


def test_a_folder_of_only_unreadable_runs_is_one_line_naming_the_first(scored, cli):
    for path in scored.glob("*/metrics.json"):
        path.write_text(json.dumps({"role": "student", "test_accuracy": "high"}))
    assert_one_line_error(cli("compare", scored), f"no run under {scored} can be compared",
                          "test_accuracy is \"high\", not a fraction from 0 to 1", "(and 7 more runs)")


WEAK = {"path": "elsewhere/teacher-resnet50/best.pt", "arch": "resnet50", "test_accuracy": 0.296}
TEACH = "a teacher must beat the student's baseline to teach"


def test_a_teacher_weaker_than_the_baseline_is_a_note_under_the_table(tmp_path, cli):
    exp = tmp_path / "exp"
    fake_run(exp / "teacher-resnet50", "teacher", "resnet50", 0.296, params=23_500_000)
    fake_run(exp / "baseline-resnet8", "baseline", "resnet8", 0.339, "none")
    fake_run(exp / "student-resnet8-kd", "student", "resnet8", 0.296, "kd", teacher=WEAK)
    fake_run(exp / "student-resnet8-dkd", "student", "resnet8", 0.31, "dkd", teacher=WEAK)
    fake_run(exp / "student-resnet20-kd", "student", "resnet20", 0.28, "kd", teacher=WEAK)  # below its teacher
    fake_run(exp / "student-resnet32-kd", "student", "resnet32", 0.35, "kd", teacher=WEAK)  # no baseline: itself
    result = json.loads(cli("compare", tmp_path, "--json").out)
    assert result["notes"] == [  # in the table's order: resnet32 sorts before resnet8
        f"exp/student-resnet32-kd: the teacher exp/teacher-resnet50 tests at 29.60%, below exp/student-resnet32-kd "
        f"itself at 35.00%: {TEACH}, so the comparison judges the teacher, not the method; train a stronger "
        f"teacher first",
        f"exp/student-resnet8-dkd, exp/student-resnet8-kd: the teacher exp/teacher-resnet50 tests at 29.60%, below "
        f"exp/baseline-resnet8 at 33.90%: {TEACH}, so the comparison judges the teacher, not the method; "
        f"train a stronger teacher first"]
    out = cli("compare", tmp_path).out
    table_end = out.index("gain: test accuracy")
    assert out.index("note: exp/student-resnet8-dkd, exp/student-resnet8-kd: the teacher") > table_end
    assert f"below exp/baseline-resnet8 at 33.90%: {TEACH}" in flat(out)


def test_a_student_run_ends_saying_its_teacher_is_weaker_than_its_baseline():
    from types import SimpleNamespace

    from distill.engine.results import warn_weak_teachers

    said: list[str] = []
    runs = [SimpleNamespace(out=Path("runs", name), logger=SimpleNamespace(result=said.append))
            for name in ("student-resnet8-kd", "baseline-resnet8")]
    student = {"role": "student", "test_accuracy": 0.296, "teacher": WEAK, "baseline": "baseline-resnet8"}
    baseline = {"role": "baseline", "test_accuracy": 0.339, "teacher": None}
    warn_weak_teachers(SimpleNamespace(runs=runs), [student, baseline])
    assert said == [f"student-resnet8-kd: the teacher {WEAK['path']} tests at 29.60%, below baseline-resnet8 at "
                    f"33.90%: {TEACH}, so the comparison judges the teacher, not the method; train a stronger "
                    f"teacher first"]
    said.clear()  # trained alone, a student that beats its teacher says so too
    warn_weak_teachers(SimpleNamespace(runs=runs[:1]), [{**student, "baseline": None, "test_accuracy": 0.31}])
    assert said == [f"student-resnet8-kd: the teacher {WEAK['path']} tests at 29.60%, below this student itself at "
                    f"31.00%: {TEACH}, so the comparison judges the teacher, not the method; train a stronger "
                    f"teacher first"]
    said.clear()  # a teacher above the baseline, and the baseline itself, say nothing
    warn_weak_teachers(SimpleNamespace(runs=runs), [{**student, "teacher": {**WEAK, "test_accuracy": 0.5}}, baseline])
    assert said == []


def printed_lines(cli, *args) -> list[str]:
    result = cli("compare", *args)
    assert result.code == 0, result.err
    return result.out.splitlines()


@pytest.mark.parametrize("columns", ["80", "100", "240"])
def test_wide_fits_the_terminal_and_says_what_it_left_out(scored, cli, monkeypatch, columns):
    monkeypatch.setenv("COLUMNS", columns)
    lines = printed_lines(cli, scored, "--wide")
    paths = [line for line in lines if line.startswith(("runs in ", "  /", "TensorBoard: "))]
    assert all(len(line) <= int(columns) for line in lines if line not in paths)
    assert not any("…" in line for line in lines)
    header = next(line for line in lines if line.startswith("run "))
    for column in ("params", "test acc", "gain [95% CI]", "agree"):  # the key columns always stay
        assert column in header
    kd = next(line for line in lines if line.startswith("student-resnet8x4-kd "))
    assert "+20.00 [" in kd and "80.00%" in kd and "90.00%" in kd
    left_out = [line for line in lines if line.startswith("left out to fit")]
    if columns == "240":  # the whole table needs 187
        assert not left_out and "img/s" in header and "1,234" in kd
    else:
        assert left_out[0].startswith(f"left out to fit {columns} columns: img/s, wall time, ")
        assert "img/s" not in header and ("McNemar p" in header) == (columns == "100")


@pytest.mark.parametrize("wide", [[], ["--wide"]])
def test_no_line_ends_in_a_space_and_every_path_stands_whole_on_its_line(scored, cli, wide):
    lines = printed_lines(cli, scored, *wide)
    assert lines and all(line == line.rstrip() for line in lines)
    at = lines.index("charts:")
    assert lines[at + 1:] == [f"  {scored / name}" for name in (
        "compare.png", "compare_accuracy.png", "compare_per_class_resnet8x4.png")] + [
        f"TensorBoard: tensorboard --logdir {scored}"]
    assert lines[0] == f"runs in {scored}"


def test_paths_with_spaces_stay_whole_on_a_narrow_terminal(tmp_path, cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    root = tmp_path / "my runs"
    fake_run(root / "exp" / "teacher resnet50", "teacher", "resnet50", 0.9)
    fake_run(root / "exp" / "baseline resnet8", "baseline", "resnet8", 0.5, "none")
    fake_run(root / "exp" / "student resnet8 kd", "student", "resnet8", 0.6, "kd")
    (root / "exp" / "broken run").mkdir()
    (root / "exp" / "broken run" / "metrics.json").write_text("[]")
    lines = printed_lines(cli, root)
    assert f"  {root / 'exp' / 'broken run' / 'metrics.json'}" in lines  # longer than a line: one of its own
    assert "student resnet8 kd: +10.00 points over" in lines and "  baseline resnet8 (without both runs'" in lines
    assert lines[0] == f"runs in {root / 'exp'}" and lines[-1] == f"TensorBoard: tensorboard --logdir '{root}'"
    header = next(line for line in lines if line.startswith("run "))
    assert header.split() == ["run", "test", "acc", "gain", "[95%", "CI]"]  # agree and params left out
    assert "left out to fit 40 columns: agree, params (every column takes" in flat("\n".join(lines))


# ----------------------------------------------------------------------------------------------------------
# predictions.pt: one format, written by the engine and read by compare through one reader (issue 18).

def test_compare_reads_the_predictions_file_the_engine_writes(scored, cli):
    from types import SimpleNamespace

    from distill.engine.checkpoint import read_predictions
    from distill.engine.results import write_predictions as engine_writes

    for folder in (scored / "student-resnet8x4-kd", scored / "baseline-resnet8x4", scored / "teacher-resnet50"):
        probs = torch.load(folder / "predictions.pt", weights_only=True)["probs"]
        group = SimpleNamespace(splits=SimpleNamespace(classes=CLASSES, test_y=LABELS.int()))
        engine_writes(group, SimpleNamespace(out=folder, cfg=SimpleNamespace(tta=True)), probs.float())
        data = read_predictions(folder / "predictions.pt")
        assert data["tta"] is True and data["labels"].dtype == torch.long and data["probs"].dtype == torch.float16
        assert torch.equal(data["labels"], LABELS) and torch.equal(data["top1"], probs.float().argmax(1))
    result = json.loads(cli("compare", scored, "--json").out)
    kd = by_name(result)["student-resnet8x4-kd"]
    assert result["notes"] == [] and kd["mcnemar_p"] == pytest.approx(2 * (1 + 8 + 28) / 2 ** 8)
    assert kd["teacher_agreement"] == pytest.approx(0.9)  # the same figures as from the test's own files


def predictions_file(tmp_path: Path, change) -> Path:
    from distill.engine.checkpoint import predictions_record

    good = predictions_record(CLASSES, LABELS, torch.full((N_TEST, len(CLASSES)), 1 / 3), False)
    torch.save(change(good), tmp_path / "predictions.pt")
    return tmp_path / "predictions.pt"


@pytest.mark.parametrize(("change", "problem"), [
    (lambda d: [d], "is not a distill predictions file"),
    (lambda d: d | {"format": "distill-checkpoint"}, "is not a distill predictions file"),
    (lambda d: d | {"version": 2}, "has an unknown version (2): upgrade distill"),
    (lambda d: d | {"version": "1"}, "has an unknown version ('1'): upgrade distill"),
    (lambda d: {k: v for k, v in d.items() if k != "top1"}, "lacks the labels, top1 or probs tensor"),
    (lambda d: d | {"labels": d["labels"].float()}, "has tensors of the wrong type (labels and top1 hold classes, "
                                                    "probs probabilities)"),
    (lambda d: d | {"top1": d["top1"][:-1]}, "has mismatched shapes (labels (20,), top1 (19,), probs (20, 3))"),
    (lambda d: d | {"probs": d["probs"][0]}, "has mismatched shapes (labels (20,), top1 (20,), probs (3,))"),
], ids=["a list", "a checkpoint", "newer", "version as text", "no top1", "float labels", "short top1", "flat probs"])
def test_the_one_predictions_reader_says_what_is_wrong(tmp_path, change, problem):
    from distill.engine.checkpoint import PredictionsError, read_predictions

    with pytest.raises(PredictionsError) as refused:
        read_predictions(predictions_file(tmp_path, change))
    assert str(refused.value) == problem
    assert read_predictions(predictions_file(tmp_path, lambda d: d))["classes"] == CLASSES  # the unchanged file


def test_unreadable_predictions_are_refused_by_the_reader_without_a_traceback(tmp_path):
    from distill.engine.checkpoint import PredictionsError, read_predictions

    (tmp_path / "predictions.pt").write_bytes(b"PK\x03\x04 a torn zip")
    with pytest.raises(PredictionsError, match=r"^is unreadable$"):
        read_predictions(tmp_path / "predictions.pt")
