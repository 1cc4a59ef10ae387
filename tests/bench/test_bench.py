"""`distill bench` and the helpers of bench/gpu.sh, on the CPU with tiny models and batches."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distill.bench import gpu as gpu_report
from distill.errors import UserError

TINY = ("--device", "cpu", "--arch", "resnet8", "--batch-size", "4", "--warmup", "0", "--steps", "1")
ROW_KEYS = {"arch", "mode", "batch_size", "precision", "channels_last", "compile", "images_per_second", "step_ms",
            "params"}
SUMMARY_KEYS = {"device", "torch", "date", "commit", "matmul_tflops", "teacher_train_images_per_second",
                "reference_images_per_second", "reference_ratio", "distill_images_per_second",
                "teacher_forward_images_per_second", "pipeline_wall_seconds", "test_accuracy", "stages"}
REPO = Path(__file__).resolve().parents[2]


def bench_json(cli, *args: str) -> dict:
    result = cli("bench", *TINY, "--json", *args)
    assert result.code == 0, result.err
    return json.loads(result.out)  # one JSON object and nothing else on stdout


def test_json_has_every_mode_with_positive_throughput(cli):
    report = bench_json(cli, "--mode", "train", "--mode", "infer", "--mode", "distill", "--teacher-arch", "resnet18")
    assert {"device", "torch", "results"} <= report.keys() and "reference_ratio" not in report
    rows = {r["mode"]: r for r in report["results"]}
    assert set(rows) == {"train", "infer", "distill", "teacher_forward"}
    for row in rows.values():
        assert ROW_KEYS <= row.keys() and row["images_per_second"] > 0 and row["params"] > 0
        assert row["batch_size"] == 4 and row["precision"] == "fp32" and row["channels_last"] is False
    assert rows["distill"]["arch"] == "resnet8" and rows["distill"]["teacher_arch"] == "resnet18"
    assert rows["teacher_forward"]["arch"] == "resnet18" and rows["teacher_forward"]["params"] > rows["train"]["params"]


def test_reference_reports_a_ratio_from_the_same_run(cli, tiny_data):
    report = bench_json(cli, "--reference", "--num-workers", "1", "--data", str(tiny_data))
    rows = {r["mode"]: r for r in report["results"]}
    assert set(rows) == {"train", "reference_train"}  # our step is timed too, for the ratio
    ref = rows["reference_train"]
    assert ref["precision"] == "fp32" and ref["channels_last"] is False and ref["num_workers"] == 1
    assert report["reference_ratio"] == pytest.approx(rows["train"]["images_per_second"] / ref["images_per_second"])
    assert report["reference_ratio"] > 0


def test_table_output(cli):
    result = cli("bench", *TINY, "--mode", "infer")
    assert result.code == 0, result.err
    assert "resnet8" in result.out and "infer" in result.out


@pytest.mark.parametrize("args, needle", [
    (("--arch", "resnet9"), "resnet20"),  # the message lists the valid archs
    (("--teacher-arch", "vgg"), "resnet50"),
    (("--mode", "eval"), "train, infer, distill"),
    (("--precision", "fp16"), "bf16, fp32"),
    (("--compile-mode", "fast"), "reduce-overhead, default, max-autotune"),
    (("--batch-size", "0"), "at least 1"),
    (("--steps", "0"), "at least 1"),
    (("--warmup", "-1"), "at least 0"),
    (("--device", "tpu"), "cpu"),
])
def test_bad_values_exit_2_with_one_line(cli, args, needle):
    result = cli("bench", "--device", "cpu", *args)
    assert result.code == 2 and result.out == ""
    assert result.err.startswith("error: ") and result.err.count("\n") == 1 and needle in result.err


def test_matmul_ceiling_is_skipped_on_the_cpu():
    assert gpu_report.matmul_tflops(256, torch.bfloat16, torch.device("cpu")) is None


def test_data_load_timing(tiny_data, tmp_path):
    timing = gpu_report.time_data_load(str(tiny_data), tmp_path / "fresh-cache")
    assert timing["train_images"] == 48 and timing["first_load_seconds"] > 0 and timing["cached_load_seconds"] > 0
    with pytest.raises(UserError, match="not empty"):  # a second call would not be cold
        gpu_report.time_data_load(str(tiny_data), tmp_path / "fresh-cache")


def bench_report(rows: list[dict]) -> str:
    return json.dumps({"device": "NVIDIA H100 80GB HBM3", "torch": "2.11.0", "results": rows})


def row(arch: str, mode: str, ips: float, **extra) -> dict:
    return {"arch": arch, "mode": mode, "batch_size": 512, "precision": "bf16", "channels_last": True,
            "compile": False, "images_per_second": ips, "step_ms": 512e3 / ips, "params": 1, **extra}


def write_gpu_out(out: Path, runs: Path) -> None:
    """What bench/gpu.sh leaves behind, with made-up numbers."""
    out.mkdir()
    (out / "01_matmul.json").write_text(json.dumps({"n": 8192, "dtype": "bfloat16", "tflops": 650.0}))
    lines = [bench_report([row("resnet50", "train", 9000.0), row("resnet50", "infer", 30000.0)]),
             bench_report([row("resnet20", "train", 60000.0), row("resnet20", "distill", 20000.0),
                           row("resnet50", "teacher_forward", 28000.0)])]
    (out / "02_bench.jsonl").write_text("\n".join(lines) + "\n")
    ref = json.loads(bench_report([row("resnet50", "train", 9000.0),
                                   row("resnet50", "reference_train", 3000.0, ratio=3.0, num_workers=8)]))
    (out / "03_reference.json").write_text(json.dumps({**ref, "reference_ratio": 3.0}))
    (out / "04_data.json").write_text(json.dumps({"first_load_seconds": 9.5, "cached_load_seconds": 0.4}))
    (out / "05_augment.json").write_text(json.dumps({"ops": {"pipeline strong": {"ms": 1.2, "pct_of_teacher_step": 3.5}}}))
    for name, acc, epochs in (("teacher-resnet50", 0.95, 30), ("student-resnet20-kd", 0.92, 40)):
        (runs / name).mkdir(parents=True)
        (runs / name / "metrics.json").write_text(json.dumps(
            {"arch": name.split("-")[1], "test_accuracy": acc, "epochs": epochs, "train_images_per_second": 1e4,
             "wall_seconds": 100.0}))
    (runs / "pipeline.json").write_text(json.dumps(
        {"finished": True, "total_seconds": 210.0, "stages": [{"name": "teacher-resnet50", "wall_seconds": 120.0}]}))


def test_summarize_writes_every_required_key(tmp_path, monkeypatch, capsys):
    out, runs = tmp_path / "out", tmp_path / "runs"
    write_gpu_out(out, runs)
    monkeypatch.chdir(tmp_path)  # no git checkout here: the commit comes from GIT_COMMIT
    monkeypatch.setenv("GIT_COMMIT", "abc123")
    gpu_report.main(["summarize", "--out", str(out), "--runs", str(runs)])
    [written] = [p for p in out.iterdir() if p.name.startswith("h100-")]  # <card>-<date>.json
    assert re.fullmatch(r"h100-\d{4}-\d\d-\d\d\.json", written.name)
    summary = json.loads(written.read_text())
    assert SUMMARY_KEYS <= summary.keys() and "bench_rows" not in json.loads(capsys.readouterr().out)
    assert summary["commit"] == "abc123" and summary["matmul_tflops"] == 650.0
    assert summary["teacher_train_images_per_second"] == 9000.0 and summary["reference_images_per_second"] == 3000.0
    assert summary["reference_ratio"] == 3.0 and summary["distill_images_per_second"] == {"resnet20": 20000.0}
    assert summary["teacher_forward_images_per_second"] == 28000.0 and summary["pipeline_wall_seconds"] == 210.0
    assert summary["test_accuracy"] == {"teacher-resnet50": 0.95, "student-resnet20-kd": 0.92}
    teacher = summary["stages"]["teacher-resnet50"]
    assert teacher["epochs"] == 30 and teacher["images_per_second"] == 1e4 and teacher["stage_wall_seconds"] == 120.0
    assert set(summary["missing"]) == {"compare", "preflight", "airbench", "fm"}
    assert summary["strong_augment_percent_of_teacher_step"] == 3.5


def test_summarize_merges_a_second_call_and_keeps_compiled_rows_apart(tmp_path):
    out, runs, other = tmp_path / "out", tmp_path / "runs", tmp_path / "compile-call"
    write_gpu_out(out, runs)
    other.mkdir()
    compiled = [row("resnet50", "train", 12000.0, compile=True, compile_mode="default", warmup_seconds=80.0),
                row("resnet50", "train", 13000.0, compile=True, compile_mode="reduce-overhead", warmup_seconds=95.0)]
    (other / "02_bench.jsonl").write_text(bench_report(compiled) + "\n")
    (other / "03_reference.json").write_text("\n".join(bench_report(
        [row("resnet50", "train", 9100.0), row("resnet50", "reference_train", 9100.0 / ratio, ratio=ratio,
                                                num_workers=workers)]) for ratio, workers in ((2.5, 8), (6.0, 2))))
    summary = gpu_report.summarize(out, runs, also=[other])
    assert summary["teacher_train_images_per_second"] == 9000.0  # the plain bench row, not a compiled one
    assert summary["compiled"] == {
        "resnet50 train default": {"images_per_second": 12000.0, "step_ms": 512e3 / 12000.0, "warmup_seconds": 80.0},
        "resnet50 train reduce-overhead": {"images_per_second": 13000.0, "step_ms": 512e3 / 13000.0,
                                           "warmup_seconds": 95.0}}
    # `out` comes first: its reference is the headline, and its 8-worker ratio is not replaced by the other's
    assert summary["reference_ratio"] == 3.0 and summary["reference_ratio_by_workers"] == {"8": 3.0, "2": 6.0}
    assert summary["test_accuracy"]["teacher-resnet50"] == 0.95 and "compare" in summary["missing"]


def test_summarize_tolerates_a_run_cut_short(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "01_matmul.json").write_text('{"tflops": 1')  # killed mid-write
    (out / "preflight.json").write_text('{"steps": [')  # likewise
    (out / "headline.json").write_text(json.dumps(gpu_report.pipeline_record(
        1, "c.toml", tmp_path / "no-runs", 124, 300.0, True, True)))  # killed in its first stage: no pipeline.json
    summary = gpu_report.summarize(out, tmp_path / "no-runs")
    assert SUMMARY_KEYS <= summary.keys() and summary["matmul_tflops"] is None and summary["test_accuracy"] == {}
    assert summary["pipeline_command_seconds"] == 300.0 and summary["pipeline_exit_code"] == 124
    assert summary["pipeline_wall_seconds"] is None and summary["preflight"] is None
    assert summary["headline"]["calls"][0]["timed_out"] is True and summary["headline"]["cold_total_seconds"] is None
    assert summary["targets"]["teacher test accuracy"] == {"target": ">= 0.95", "measured": None, "met": None}
    assert set(summary["missing"]) >= {"bench", "reference", "pipeline", "airbench", "fm"}


def test_gpu_script_parses():
    subprocess.run(["bash", "-n", str(REPO / "bench" / "gpu.sh")], check=True)


def test_gpu_script_refuses_an_unknown_step(tmp_path):
    result = subprocess.run(["bash", str(REPO / "bench" / "gpu.sh"), "--cpu-smoke"], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "STEPS": "bench warp", "OUT": str(tmp_path)})
    assert result.returncode == 2 and "unknown step 'warp'" in result.stderr and "matmul bench compile" in result.stderr
    assert not any(tmp_path.iterdir())  # refused before anything ran or was written


def test_runtimes_are_timed_in_one_run_with_their_ratio_to_eager_torch(cli):
    report = bench_json(cli, "--mode", "infer", "--runtime", "torch,onnxruntime", "--runtime", "torchscript,pt2")
    rows = {r["runtime"]: r for r in report["results"]}
    assert list(rows) == ["torch", "onnxruntime", "torchscript", "pt2"]
    for name, row in rows.items():
        assert row["mode"] == "infer" and row["batch_size"] == 4 and row["images_per_second"] > 0
        assert row["precision"] == "fp32" and row["compile"] is False
        if name != "torch":
            assert row["vs_torch"] == pytest.approx(rows["torch"]["step_ms"] / row["step_ms"])
    assert "vs_torch" not in rows["torch"]
    table = cli("bench", *TINY, "--mode", "infer", "--runtime", "onnxruntime")
    assert table.code == 0 and "onnxruntime" in table.out


@pytest.mark.parametrize("args, needle", [
    (("--mode", "infer", "--runtime", "tensorrt"), "choose one of torch, onnxruntime, torchscript, pt2"),
    (("--runtime", "onnxruntime"), "add --mode infer"),
    (("--mode", "infer", "--runtime", "torchscript", "--precision", "bf16"), "--precision fp32"),
])
def test_bad_runtimes_exit_2_with_one_line(cli, args, needle):
    result = cli("bench", "--device", "cpu", *args)
    assert result.code == 2 and result.out == ""
    assert result.err.startswith("error: ") and result.err.count("\n") == 1 and needle in result.err, result.err


def test_onnxruntime_without_the_extra_names_it(cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # an import of it now raises ImportError
    result = cli("bench", *TINY, "--mode", "infer", "--runtime", "onnxruntime")
    assert result.code == 2 and result.err == (
        'error: --runtime onnxruntime needs the export extra: pip install -e ".[export]" '
        "(or pip install onnx onnxscript onnxruntime)\n")
