"""`distill teach` end to end on tiny data: files, TensorBoard tags, resume, refusals."""

from __future__ import annotations

import json

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import file_digest, tiny_teach_args

TAGS = {"loss/train", "accuracy/train", "accuracy/val", "result/test_accuracy", "lr",
        "throughput/train_images_per_second", "time/epoch_seconds"}
METRIC_KEYS = {"role", "arch", "params", "test_accuracy", "best_val_accuracy", "epochs", "wall_seconds",
               "train_images_per_second", "dataset", "device"}


def scalars(run_dir) -> dict[str, list[int]]:
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_teach_writes_every_file_and_tag(cli, tiny_data, tmp_path):
    out = tmp_path / "run"
    result = cli(*tiny_teach_args(tiny_data, out))
    assert result.code == 0, result.err
    assert {"config.json", "last.pt", "best.pt", "metrics.json"} <= {p.name for p in out.iterdir()}
    metrics = json.loads((out / "metrics.json").read_text())
    assert METRIC_KEYS <= metrics.keys()
    assert metrics["role"] == "teacher" and metrics["epochs"] == 2 and 0 <= metrics["test_accuracy"] <= 1
    steps = scalars(out)
    assert TAGS <= steps.keys()
    assert steps["accuracy/val"] == [1, 2] and steps["result/test_accuracy"] == [2]
    config = json.loads((out / "config.json").read_text())
    assert config["arch"] == "resnet18" and config["batch_size"] == 8 and config["spec"]["stem"] == "imagenet"
    ckpt = torch.load(out / "last.pt", weights_only=True)
    for key in ("model", "ema", "optimizer", "scheduler", "epoch", "rng", "config", "classes", "normalization", "spec"):
        assert key in ckpt
    assert ckpt["classes"] == ["apple", "boat", "cloud"] and ckpt["epoch"] == 2
    assert len(ckpt["normalization"]["mean"]) == 3


def test_resume_continues_at_next_epoch(cli, tiny_data, tmp_path):
    out = tmp_path / "run"
    args = tiny_teach_args(tiny_data, out)
    args[args.index("--epochs") + 1] = "1"
    assert cli(*args).code == 0
    result = cli("teach", "--out", out, "--resume", "--epochs", "2", "--quiet")  # the rest comes from config.json
    assert result.code == 0, result.err
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 2
    assert scalars(out)["accuracy/val"] == [1, 2]  # appended, no duplicate step


def test_existing_run_is_refused_and_kept(cli, tiny_data, tmp_path):
    out = tmp_path / "run"
    assert cli(*tiny_teach_args(tiny_data, out)).code == 0
    before = file_digest(out / "last.pt"), (out / "metrics.json").read_text()
    result = cli(*tiny_teach_args(tiny_data, out))
    assert result.code == 2 and "--resume" in result.err and "--force" in result.err
    assert result.err.count("\n") == 1 and "Traceback" not in result.err
    assert (file_digest(out / "last.pt"), (out / "metrics.json").read_text()) == before
    assert cli(*tiny_teach_args(tiny_data, out, "--force")).code == 0


def test_evaluate_json_matches_metrics(cli, tiny_data, tmp_path):
    out = tmp_path / "run"
    assert cli(*tiny_teach_args(tiny_data, out)).code == 0
    result = cli("evaluate", out / "best.pt", "--data", tiny_data, "--json", "--device", "cpu")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert abs(report["accuracy"] - metrics["test_accuracy"]) < 1e-6
    assert set(report["per_class"]) == {"apple", "boat", "cloud"}


def test_compile_flag_trains_and_saves_plain_weights(cli, tiny_data, tmp_path):
    """--compile wraps the model in torch.compile; checkpoints must still hold the plain module's keys."""
    out = tmp_path / "compiled"
    result = cli("student", "--no-teacher", "--arch", "resnet8", "--data", tiny_data, "--image-size", "16",
                 "--val-size", "6", "--epochs", "1", "--batch-size", "8", "--out", out, "--device", "cpu",
                 "--compile", "--quiet")
    assert result.code == 0, result.err
    keys = torch.load(out / "best.pt", weights_only=True)["model"].keys()
    assert not any(k.startswith("_orig_mod.") for k in keys)
    assert cli("evaluate", out / "best.pt", "--data", tiny_data, "--json", "--device", "cpu").code == 0


def test_val_size_0_trains_on_every_image_and_keeps_the_last_epochs_ema(cli, tiny_data, tmp_path):
    out = tmp_path / "all"
    args = [a for a in tiny_teach_args(tiny_data, out)]
    args[args.index("--val-size") + 1] = "0"
    assert cli(*args, "--ema-horizon", "0.3").code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_images"] == 48 and metrics["best_val_accuracy"] is None  # all 3 x 16 images
    assert metrics["eval_weights"] == "ema"
    last, best = (torch.load(out / name, weights_only=True) for name in ("last.pt", "best.pt"))
    assert last["epoch"] == 2 and best["epoch"] == 2
    for key, value in last["ema"].items():  # nothing was chosen: best.pt holds the last epoch's average
        assert torch.equal(best["model"][key], value), key
    assert "accuracy/val" not in scalars(out) and scalars(out)["result/test_accuracy"] == [2]

    raw = tmp_path / "raw"
    args[args.index("--out") + 1] = str(raw)
    assert cli(*args, "--ema-horizon", "0").code == 0  # no EMA: the last raw weights
    last, best = (torch.load(raw / name, weights_only=True) for name in ("last.pt", "best.pt"))
    assert last["ema"] is None and all(torch.equal(best["model"][k], v) for k, v in last["model"].items())


def test_compile_keeps_its_kernels_in_the_user_cache_folder(tiny_data, tmp_path):
    """A second run reads inductor's compiled kernels back from $DISTILL_CACHE/inductor (a fresh process,
    as a user's next run is: inductor fixes its cache folder at the first compile of a process)."""
    import subprocess
    import sys

    from runhelpers import REPO, child_env

    cache = tmp_path / "cache"
    args = ["student", "--no-teacher", "--arch", "resnet8", "--data", tiny_data, "--image-size", "16", "--val-size",
            "6", "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--compile", "--quiet"]
    env = {k: v for k, v in child_env(DISTILL_CACHE=str(cache)).items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    run = subprocess.run([sys.executable, "-m", "distill", *map(str, args), "--out", tmp_path / "one"], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    compiled = {p for p in (cache / "inductor").rglob("*") if p.is_file()}
    assert any(p.suffix == ".py" for p in compiled), sorted(compiled)[:5]  # generated kernels live there
