"""Issue 16's device calls, proved on the CPU: the preflight's steps, its verdict on compile and how bench/gpu.sh
acts on it, airbench's data conversion, the two calls' summary, and the configs the calls run."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distill import stats
from distill.bench import gpu as gpu_report
from distill.engine.checkpoint import PREDICTIONS_FILE, PREDICTIONS_FORMAT, PREDICTIONS_VERSION
from distill.front.config import parse_assignments
from distill.errors import UserError
from distill.experiments.pipeline import load_pipeline

REPO = Path(__file__).resolve().parents[2]
GPU_SH = REPO / "bench" / "gpu.sh"
HEADLINE = REPO / "configs" / "pipeline" / "cifar10.toml"
FM = REPO / "configs" / "pipeline" / "cifar10_fm.toml"


def bench_module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


preflight = bench_module("preflight")
peer = bench_module("peer_airbench")
TINY = ["--device", "cpu", "--no-compile", "--batch-size", "8", "--train-per-class", "8", "--test-per-class", "4"]


# ---------------------------------------------------------------------------------------------------- preflight


def test_every_preflight_step_passes_on_the_cpu(tmp_path):
    """The steps the GPU runs, uncompiled on the CPU: each one line `ok`, the JSON written with every step."""
    result = subprocess.run([sys.executable, str(REPO / "bench" / "preflight.py"), *TINY, "--out", str(tmp_path / "pf"),
                             "--json", str(tmp_path / "pf.json")], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    names = [s.name for s in preflight.all_steps()]
    assert {"teacher", "group", "feature", "resume", "deploy"} <= set(names)
    for name in names:
        assert re.search(rf"^preflight {name}: ok in \d+\.\d s$", result.stdout, re.M), result.stdout
    summary = json.loads((tmp_path / "pf.json").read_text())
    assert summary["passed"] is True and [s["name"] for s in summary["steps"]] == names
    assert all(s["status"] == "ok" and not s["compiled"] for s in summary["steps"])
    assert summary["headline_compile"] is None  # nothing compiled: no verdict either way
    runs = tmp_path / "pf"
    assert json.loads((runs / "resume" / "run" / "metrics.json").read_text())["epochs"] == 3
    assert (runs / "deploy" / "model.onnx").is_file()


@pytest.mark.parametrize("students, baselines", [
    ([("resnet8", "kd", "none"), ("resnet8", "dkd", "mixup=0.2,cutmix=1.0")], True),
    ([("resnet8", "fitnet", "none")], False)], ids=["group", "feature"])
def test_the_preflight_s_compiled_pipelines_validate(tmp_path, students, baselines):
    """What the GPU runs compiled (never run here): students and teacher forward compiled, the teacher stage not."""
    opts = preflight.Options("cuda", True, tmp_path, 32, 1.0, 1.0, 4, 2)
    ctx = preflight.Context("group", tmp_path, tmp_path / "data", opts, True, 0.0)
    config = tmp_path / "p.toml"
    config.write_text(preflight.pipeline_toml(ctx, students, baselines))
    pipe = load_pipeline(config, {"data": "d", "device": "cuda"}, str(tmp_path / "runs"),
                         {"batch_size": 32, "val_size": 0})
    cfgs = [stage.config(pipe.out) for stage in pipe.stages]
    assert cfgs[0].compile is False and all(c.compile is True for c in cfgs[1:])
    assert [c.compile_teacher for c in cfgs[1:] if c.effective_method != "none"] == [True] * len(students)
    assert [c.mix for c in cfgs[1:] if c.effective_method != "none"] == [mix for _, _, mix in students]
    assert len(cfgs) == 1 + len(students) + baselines


def step_running(*args: str, compiled: bool = False, only_uncompiled: bool = False):
    """A step whose body runs `python -m distill ARGS` (no torch: the CLI answers in a fraction of a second)."""
    def body(ctx):
        ctx.distill(*(("--version",) if only_uncompiled and not ctx.compile else args))
    return body


def test_a_failing_step_is_one_line_with_its_name_and_the_others_still_run(tmp_path, capsys):
    steps = [preflight.Step("broken", False, step_running("teach", "--epochs", "0")),
             preflight.Step("fine", False, step_running("--version")),
             preflight.Step("graphs", True, step_running("teach", "--epochs", "0", only_uncompiled=True))]
    opts = preflight.Options("cpu", True, tmp_path / "pf", 8, 60.0, 60.0, 2, 1)
    summary = preflight.run_all(steps, opts, tmp_path / "pf.json")
    out = capsys.readouterr().out
    assert re.search(r"^preflight broken: FAILED \(exit 2\) after \d+\.\d s: error: .*epochs.*$", out, re.M), out
    assert re.search(r"^preflight fine: ok in \d+\.\d s$", out, re.M), out
    # the compiled step failed, its uncompiled retry passed: the compiler is blamed
    assert re.search(r"^preflight graphs: FAILED \(exit 2\)", out, re.M), out
    assert re.search(r"^preflight graphs \(uncompiled retry\): ok in", out, re.M), out
    assert out.strip().splitlines()[-1].startswith("preflight: 1 of 3 steps ok")
    written = json.loads((tmp_path / "pf.json").read_text())
    assert written == json.loads(json.dumps(summary)) | {"total_seconds": written["total_seconds"]}
    by_name = {s["name"]: s for s in written["steps"]}
    assert by_name["broken"]["exit_code"] == 2 and by_name["broken"]["uncompiled"] is None  # not compiled: no retry
    assert by_name["graphs"]["uncompiled"]["status"] == "ok"
    assert written["passed"] is False and written["headline_compile"] is False


def test_an_unknown_preflight_step_is_refused_in_one_line(tmp_path, capsys):
    assert preflight.main(["--only", "warp", "--out", str(tmp_path / "pf")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown step 'warp': choose from teacher, group, feature, resume, deploy" in err
    assert not (tmp_path / "pf").exists()


def case(name: str, compiled: bool, status: str, retry: str | None = None, how: str | None = None) -> dict:
    return {"name": name, "compiled": compiled, "status": status, "how": how or (status != "ok" and "exit 1" or None),
            "uncompiled": retry and {"status": retry}}


@pytest.mark.parametrize("steps, expected", [
    ([case("teacher", True, "ok"), case("deploy", False, "failed")], True),  # a non-compile failure keeps compile
    ([case("group", True, "failed", "ok"), case("teacher", True, "ok")], False),  # compile to blame
    ([case("group", True, "failed", "failed")], True),  # broken either way: compile is not the cause
    ([case("group", True, "failed", None)], True),  # no retry ran (stopped): no evidence against compile
    ([case("group", True, "failed", "ok", how="timed out")], True),  # slow under six cold compiles, not broken
    ([case("deploy", False, "ok")], None),  # nothing compiled ran
])
def test_the_verdict_blames_compile_only_when_the_uncompiled_retry_passed(steps, expected):
    assert preflight.verdict(steps)[0] is expected


def gpu_sh(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    base = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "OUT": str(tmp_path / "out"),
            "WORK": str(tmp_path / "distill-work")}
    return subprocess.run(["bash", str(GPU_SH), *args], capture_output=True, text=True, env=base | env, cwd=REPO,
                          timeout=120)


def pipeline_line(stderr: str) -> str:
    [line] = [line for line in stderr.splitlines() if "pipeline: would run" in line]
    return line


@pytest.mark.parametrize("graphs_retry, fallback", [("ok", True), ("failed", False)])
def test_gpu_sh_runs_the_headline_uncompiled_only_when_the_preflight_blames_compile(tmp_path, graphs_retry, fallback):
    result_file = tmp_path / "preflight.json"
    result_file.write_text(json.dumps({"steps": [case("group", True, "failed", graphs_retry),
                                                 case("deploy", False, "ok")]}))
    result = gpu_sh(tmp_path, "--dry-run", CALL="1", PREFLIGHT_JSON=str(result_file))
    assert result.returncode == 0, result.stderr
    line = pipeline_line(result.stderr)
    assert "-m distill pipeline --config configs/pipeline/cifar10.toml" in line
    assert line.endswith("--set compile=false") is fallback
    assert ("compiled steps failed where uncompiled ones passed" in result.stderr) is fallback
    assert "preflight: would run" in result.stderr and "bench/preflight.py --device cuda" in result.stderr


def test_gpu_sh_continues_a_compiled_headline_that_failed_uncompiled(tmp_path):
    """The device path (not the dry run) with a stand-in python: its first `distill pipeline` fails as a
    compiled stage might; gpu.sh runs the pipeline again with --set compile=false and says so."""
    calls, fake = tmp_path / "calls.txt", tmp_path / "python"
    fake.write_text(f"""#!/bin/bash
echo "$*" >> {calls}
[[ "$*" == *"-m distill pipeline"* ]] && [ "$(grep -c 'distill pipeline' {calls})" = 1 ] && exit 1
exit 0
""")
    fake.chmod(0o755)
    (tmp_path / "data.tar.gz").write_bytes(b"")
    result = gpu_sh(tmp_path, CALL="1", STEPS="pipeline", PYTHON=str(fake), SITE=str(tmp_path / "site"),
                    DATA=str(tmp_path / "data.tar.gz"))
    assert result.returncode == 0, result.stderr
    runs = [line for line in calls.read_text().splitlines() if "-m distill pipeline" in line]
    assert len(runs) == 2 and "compile=false" not in runs[0] and runs[1].endswith("--set compile=false")
    assert "the compiled pipeline failed (exit 1): continued with --set compile=false" in result.stderr
    [record] = [line for line in calls.read_text().splitlines() if "distill.bench.gpu record" in line]
    assert "--compiled false" in record and "continued with --set compile=false" in record


def test_gpu_sh_call_2_without_call_1_says_so_and_runs_what_needs_no_runs(tmp_path):
    result = gpu_sh(tmp_path, "--dry-run", CALL="2", FM_CONFIG=str(tmp_path / "missing.toml"))
    assert result.returncode == 0, result.stderr
    err = result.stderr
    assert "no outputs of call 1" in err and "pipeline: SKIPPED, no runs of call 1" in err
    assert "fm: SKIPPED" in err and "missing.toml does not exist" in err
    assert "peer: would run" in err and "bench/peer_airbench.py --data" in err and "augment: would run" in err
    assert err.index("peer: would run") < err.index("augment: would run")  # the peer first


@pytest.mark.parametrize("args, env, needle", [(["--dry-run"], {"CALL": "3"}, "CALL=3: use 1"),
                                               (["--dry-run"], {"WORK": "/tmp/anywhere"}, "distill-*"),
                                               (["--bogus"], {}, "unknown argument '--bogus'")])
def test_gpu_sh_refuses_bad_settings_before_doing_anything(tmp_path, args, env, needle):
    result = gpu_sh(tmp_path, *args, **env)
    assert result.returncode == 2 and needle in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------- airbench


def test_our_data_converts_to_airbench_s_files(tiny_data, tmp_path):
    from distill.data import load_dataset

    ds = load_dataset(tiny_data, 16, tmp_path / "cache", quiet=True)
    root = peer.convert(ds, tmp_path / "work")
    assert root == tmp_path / "work" / "cifar10"
    for split, x, y in (("train", ds.train_x, ds.train_y), ("test", ds.test_x, ds.test_y)):
        data = torch.load(root / f"{split}.pt", weights_only=True)  # as airbench's CifarLoader loads it
        assert data["images"].dtype == torch.uint8 and data["images"].shape == (len(x), 16, 16, 3)
        assert torch.equal(data["images"].permute(0, 3, 1, 2), x)  # airbench's own permute gives ours back
        assert data["labels"].dtype == torch.int64 and torch.equal(data["labels"], y)
        assert data["classes"] == ["apple", "boat", "cloud"]
    with pytest.raises(UserError, match="10 outputs.*3 classes"):
        peer.check_fits(ds)


def test_airbench_without_cuda_or_without_airbench_is_one_line(tiny_data, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert peer.main(["--data", str(tiny_data)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: airbench trains on a CUDA GPU only") and "--check" in err
    monkeypatch.setitem(sys.modules, "airbench", None)  # import airbench now fails
    assert peer.main(["--data", str(tiny_data), "--check"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "airbench is not installed: pip install airbench==0.1.8" in err


def test_airbench_report_averages_the_runs(tiny_data, tmp_path):
    from distill.data import load_dataset

    ds = load_dataset(tiny_data, 16, tmp_path / "cache", quiet=True)
    runs = [{"run": 0, "test_accuracy": 0.93, "seconds": 3.0}, {"run": 1, "test_accuracy": 0.94, "seconds": 2.5}]
    result = peer.report("d.tar.gz", ds, runs, "NVIDIA H100", False)
    assert result["mean_test_accuracy"] == pytest.approx(0.935) and result["mean_seconds"] == pytest.approx(2.75)
    assert result["train_images"] == len(ds.train_x) and result["dataset"] == ds.source
    assert result["package"] == "airbench==0.1.8" and result["runs"] == runs


# ---------------------------------------------------------------------------------------------------- the summary


def metrics(role: str, arch: str, method: str | None, acc: float, **extra) -> dict:
    return {"role": role, "arch": arch, "method": method, "test_accuracy": acc, "epochs": 40,
            "train_images_per_second": 20000.0, "wall_seconds": 100.0, **extra}


def write_predictions(folder: Path, correct: torch.Tensor) -> None:
    labels = torch.zeros(len(correct), dtype=torch.long)
    top1 = torch.where(correct, labels, torch.ones_like(labels))
    torch.save({"format": PREDICTIONS_FORMAT, "version": PREDICTIONS_VERSION, "classes": ["a", "b"], "labels": labels,
                "top1": top1, "probs": torch.full((len(correct), 2), 0.5).half(), "tta": True},
               folder / PREDICTIONS_FILE)


def two_calls(tmp_path: Path) -> tuple[Path, Path, Path, torch.Tensor, torch.Tensor]:
    """What call 1 and call 2 leave: call 1's outputs copied to WORK/out1, call 2's in OUT, one runs folder."""
    out1, out2, runs = tmp_path / "out1", tmp_path / "out2", tmp_path / "runs"
    out1.mkdir()
    out2.mkdir()
    stages = {"teacher-resnet50": metrics("teacher", "resnet50", "none", 0.951, steady_images_per_second=21000.0,
                                          first_epoch_seconds=40.0),
              "student-resnet20-kd": metrics("student", "resnet20", "kd", 0.925, baseline="baseline-resnet20",
                                             gain_over_baseline=1.5, gain_interval=[0.9, 2.1], mcnemar_p=0.001),
              "baseline-resnet20": metrics("baseline", "resnet20", "none", 0.91),
              "student-resnet20-kd-mixed": metrics("student", "resnet20", "kd", 0.93)}
    for name, m in stages.items():
        (runs / name).mkdir(parents=True)
        (runs / name / "metrics.json").write_text(json.dumps(m))
    kd = torch.tensor([True] * 90 + [False] * 10)
    fm = torch.tensor([True] * 85 + [False] * 5 + [True] * 10)  # 5 images lost, 10 won over kd: +5 points
    write_predictions(runs / "student-resnet20-kd", kd)
    write_predictions(runs / "student-resnet20-kd-mixed", fm)
    headline = {"config": "configs/pipeline/cifar10.toml", "finished": True, "total_seconds": 455.0,
                "stages": [{"name": n, "status": "ran"} for n in list(stages)[:3]]}
    (runs / "pipeline.json").write_text(json.dumps(headline))
    (out1 / "headline.json").write_text(json.dumps(gpu_report.pipeline_record(
        1, "configs/pipeline/cifar10.toml", runs, 0, 470.2, True, True)))
    (out1 / "preflight.json").write_text(json.dumps({"device": "cuda", "passed": False, "total_seconds": 48.0,
                                                     "headline_compile": True, "verdict": "v", "steps": [
        case("teacher", True, "ok") | {"seconds": 40.0}, case("deploy", False, "failed") | {"error": "boom"}]}))
    (out1 / "compare.json").write_text(json.dumps({"runs": []}))  # call 1's, before the fm student existed
    (out2 / "compare.json").write_text(json.dumps({"runs": [
        {"name": "student-resnet20-kd", "gain_over_baseline": 1.5, "gain_interval": [0.9, 2.1], "mcnemar_p": 0.001,
         "baseline_run": "baseline-resnet20"},
        {"name": "student-resnet20-kd-mixed", "gain_over_baseline": 2.0, "gain_interval": [1.2, 2.8],
         "mcnemar_p": 0.0001, "baseline_run": "baseline-resnet20"}]}))
    (out2 / "airbench.json").write_text(json.dumps({"mean_test_accuracy": 0.935, "runs": [{}, {}]}))
    fm_pipeline = {"finished": True, "stages": [{"name": "teacher-resnet50", "status": "skipped"},
                                                {"name": "student-resnet20-kd-mixed", "status": "ran"}]}
    (out2 / "fm.json").write_text(json.dumps({"call": 2, "exit_code": 0, "command_seconds": 95.0, "compiled": True,
                                              "pipeline": fm_pipeline}))
    return out1, out2, runs, kd, fm


def test_the_second_call_s_summary_merges_the_first_and_compares_function_matching(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_COMMIT", "abc123")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(gpu_report, "this_device", lambda: "NVIDIA H100 80GB HBM3")  # summarize names its card
    out1, out2, runs, kd, fm = two_calls(tmp_path)
    s = gpu_report.summarize(out2, runs, also=[out1])
    assert s["preflight"]["steps"]["deploy"] == {"status": "failed", "seconds": None, "compiled": False,
                                                 "error": "boom", "uncompiled_retry": None}
    assert s["preflight"]["total_seconds"] == 48.0 and s["preflight"]["headline_compile"] is True
    head = s["headline"]
    assert head["compiled"] is True and head["finished"] is True and head["cold_total_seconds"] == 455.0
    assert head["calls"] == [{"call": 1, "exit_code": 0, "command_seconds": 470.2, "timed_out": False, "compiled": True,
                              "fresh": True, "finished": True, "pipeline_seconds": 455.0}]
    assert head["teacher"]["run"] == "teacher-resnet50" and head["teacher"]["steady_images_per_second"] == 21000.0
    assert list(head["students"]) == ["student-resnet20-kd"]  # the fm student is not the headline's
    assert head["students"]["student-resnet20-kd"]["gain_over_baseline"] == 1.5
    assert s["airbench"]["mean_test_accuracy"] == 0.935
    f = s["function_matching"]
    assert (f["fm_run"], f["kd_run"], f["fm_test_accuracy"], f["kd_test_accuracy"]) == (
        "student-resnet20-kd-mixed", "student-resnet20-kd", 0.93, 0.925)
    assert f["fm_gain_over_baseline"] == 2.0 and f["fm_mcnemar_p"] == 0.0001  # call 2's compare.json
    expected = stats.paired_comparison(fm, kd)
    assert f["difference_points"] == pytest.approx(5.0) == pytest.approx(expected.gain.points)
    assert f["difference_mcnemar_p"] == pytest.approx(stats.mcnemar_exact(10, 5))
    assert f["difference_interval"] == pytest.approx([expected.gain.low, expected.gain.high])
    t = s["targets"]
    assert t["teacher test accuracy"]["met"] is True and t["teacher images/s in the pipeline"]["met"] is True
    assert t["headline seconds, cold"] == {"target": "<= 480", "measured": 455.0, "met": True}
    assert t["student-resnet20-kd over its baseline"]["met"] is True
    assert t["student-resnet20-kd test accuracy"]["met"] is True and t["preflight seconds"]["met"] is True


def test_on_the_cpu_the_targets_are_reported_but_not_judged(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_report, "this_device", lambda: "cpu (2 cores)")  # the CPU smoke of the calls
    out1, out2, runs, _, _ = two_calls(tmp_path)
    targets = gpu_report.summarize(out2, runs, also=[out1])["targets"]
    assert targets["headline seconds, cold"] == {"target": "<= 480", "measured": 455.0, "met": None}
    assert all(t["met"] is None for t in targets.values())


def test_a_headline_cut_in_call_1_and_finished_in_call_2_has_no_cold_time(tmp_path):
    out1, out2, runs, _, _ = two_calls(tmp_path)
    cut = json.loads((out1 / "headline.json").read_text())
    cut |= {"exit_code": 124, "timed_out": True, "pipeline": {"finished": False, "total_seconds": 520.0}}
    (out1 / "headline.json").write_text(json.dumps(cut))
    (out2 / "headline.json").write_text(json.dumps(gpu_report.pipeline_record(
        2, "configs/pipeline/cifar10.toml", runs, 0, 60.0, False, False, "compile=false")))
    head = gpu_report.summarize(out2, runs, also=[out1])["headline"]
    assert [c["call"] for c in head["calls"]] == [1, 2] and head["calls"][0]["timed_out"] is True
    assert head["finished"] is True and head["cold_total_seconds"] is None and head["compiled"] is False
    assert head["notes"] == ["compile=false"]


def test_record_writes_the_command_and_the_pipeline_it_left(tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "pipeline.json").write_text(json.dumps({"finished": False, "total_seconds": 12.0}))
    gpu_report.main(["record", "--call", "1", "--config", "c.toml", "--runs", str(runs), "--exit-code", "124",
                     "--seconds", "500.5", "--compiled", "false", "--fresh", "true", "--note", "why",
                     "--out", str(tmp_path / "headline.json")])
    written = json.loads((tmp_path / "headline.json").read_text())
    assert written == {"call": 1, "config": "c.toml", "exit_code": 124, "command_seconds": 500.5, "timed_out": True,
                       "compiled": False, "fresh": True, "note": "why",
                       "pipeline": {"finished": False, "total_seconds": 12.0}}


# ---------------------------------------------------------------------------------------------------- configs


def gpu_sh_sets() -> dict:
    """The --set flags gpu.sh gives the headline and the fm pipeline in the CPU smoke."""
    found = re.search(r"^\s*PIPELINE_SIZES=\((.+)\)\s*$", GPU_SH.read_text(), re.M)
    return parse_assignments(found.group(1).split()[1::2], "--set")


@pytest.mark.parametrize("sets", [{}, {"compile": False}, gpu_sh_sets()], ids=["device", "fallback", "cpu-smoke"])
def test_the_headline_config_validates_as_each_call_runs_it(tmp_path, sets):
    pipe = load_pipeline(HEADLINE, {"data": "d", "quiet": True}, str(tmp_path / "runs"), sets)
    cfgs = [stage.config(pipe.out) for stage in pipe.stages]
    assert [s.name for s in pipe.stages][0] == "teacher-resnet50" and len(cfgs) == 5
    if sets.get("compile") is False:  # the fallback: every stage uncompiled, and the teacher forward follows
        assert all(c.compile is False for c in cfgs) and all(c.compile_teacher is None for c in cfgs[1:])
    if "limit_train" in sets:
        assert all(c.epochs == 1 and c.limit_train == 100 and c.batch_size == 25 for c in cfgs)


def test_the_function_matching_pipeline_reuses_the_headline_teacher(tmp_path):
    runs = str(tmp_path / "runs")
    headline, fm = (load_pipeline(path, {"data": "d", "quiet": True}, runs) for path in (HEADLINE, FM))
    assert fm.stages[0].name == headline.stages[0].name
    assert fm.stages[0].config(fm.out) == headline.stages[0].config(headline.out)  # skipped, not retrained
    assert not {s.name for s in fm.stages[1:]} & {s.name for s in headline.stages}  # beside, not over, its runs
