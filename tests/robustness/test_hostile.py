"""Hostile files and a hostile machine, through the CLI: each gives one clear line and exit 2, and loses nothing.

Checkpoints (malicious, truncated, empty, random, foreign, wrong role or classes, missing) go through
`distill student --teacher FILE` and `distill evaluate FILE`; data errors through `distill teach`;
divergence, out of memory and a full disk are provoked in the training path.
"""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import random
import tarfile

import numpy as np
import pytest
import torch
import torchvision

from distill.engine.checkpoint import load_checkpoint
from runhelpers import assert_one_line_error, before_steps_from_epoch, run_args, spawn, temp_files


class MakesFile:
    """Unpickling this object would create `marker`: the proof that a load ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A teacher and a baseline student, one epoch each, shared by the checkpoint cases."""
    from conftest import write_image_tree
    from distill.front.cli import main

    root = tmp_path_factory.mktemp("trained")
    data, cache = write_image_tree(root / "data"), root / "cache"
    for command, out, extra in (("teach", "teacher", []), ("student", "baseline", ["--no-teacher"])):
        try:
            main(run_args(command, data, root / out, 1, "--cache-dir", cache, *extra))
        except SystemExit as exc:
            assert not exc.code, exc.code
    return {"data": data, "cache": cache, "teacher": root / "teacher" / "last.pt",
            "baseline": root / "baseline" / "best.pt", "root": root}


def bad_checkpoint(kind: str, trained, folder) -> tuple:
    """(path, words the message must contain) for each broken or hostile checkpoint."""
    path, real = folder / f"{kind.replace(' ', '_')}.pt", trained["teacher"].read_bytes()
    if kind == "runs code":
        torch.save({"format": "distill-checkpoint", "model": MakesFile(folder / "marker")}, path)
        return path, "open), not only tensors, and loading it could run code"  # io.open or _io.open
    if kind == "truncated":
        path.write_bytes(real[: len(real) // 2])
        return path, "truncated or corrupt"
    if kind == "empty":
        path.write_bytes(b"")
        return path, "is empty"
    if kind == "random bytes":
        path.write_bytes(random.Random(0).randbytes(4096))
        return path, "not a PyTorch checkpoint"
    if kind == "text file":  # torch's safe unpickler fails on it with a bare KeyError
        path.write_text("hello world " * 100)
        return path, "truncated or corrupt"
    if kind == "torchvision state_dict":
        torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), path)
        return path, "plain state_dict"
    if kind == "other classes":
        ck = torch.load(trained["teacher"], weights_only=True)
        torch.save({**ck, "classes": ["xenon", "yak", "zebra"]}, path)
        return path, "trained on classes 3 [xenon, yak, zebra] but the data has 3 [apple, boat, cloud]"
    if kind == "missing":
        return folder / "nowhere.pt", "not found"
    raise AssertionError(kind)


CHECKPOINTS = ["runs code", "truncated", "empty", "random bytes", "text file", "torchvision state_dict", "other classes", "missing"]


def command(name: str, ckpt, trained, out) -> list:
    if name == "evaluate":
        return ["evaluate", ckpt, "--data", trained["data"], "--cache-dir", trained["cache"], "--device", "cpu"]
    return run_args("student", trained["data"], out, 1, "--teacher", ckpt, "--cache-dir", trained["cache"])


@pytest.mark.parametrize("name", ["student", "evaluate"])
@pytest.mark.parametrize("kind", CHECKPOINTS)
def test_bad_checkpoint(cli, trained, tmp_path, kind, name):
    ckpt, needle = bad_checkpoint(kind, trained, tmp_path)
    assert_one_line_error(cli(*command(name, ckpt, trained, tmp_path / "run")), needle, str(ckpt))
    assert not (tmp_path / "marker").exists()
    assert not (tmp_path / "run" / "last.pt").exists()


def test_malicious_checkpoint_in_a_real_process_prints_one_line(trained, tmp_path):
    ckpt, needle = bad_checkpoint("runs code", trained, tmp_path)
    proc = spawn(command("evaluate", ckpt, trained, None))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and err.count("\n") == 1 and needle in err and "Traceback" not in err, err
    assert not (tmp_path / "marker").exists()


def test_student_checkpoint_as_teacher_needs_any_teacher(cli, trained, tmp_path):
    args = command("student", trained["baseline"], trained, tmp_path / "run")
    assert_one_line_error(cli(*args), "is a baseline checkpoint, not a teacher", "--any-teacher")
    result = cli(*args, "--any-teacher")
    assert result.code == 0, result.err
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["teacher"]["role"] == "baseline"


# --- data ------------------------------------------------------------------------------------------

def cifar_with_bad_shapes(root):
    """The python batches layout, with data_batch_2 holding 100-byte images instead of 3x32x32."""
    root.mkdir(parents=True)
    good = {b"data": np.zeros((6, 3072), np.uint8), b"labels": [0, 1, 2] * 2}
    for i in range(1, 6):
        bad = {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}
        (root / f"data_batch_{i}").write_bytes(pickle.dumps(bad if i == 2 else good))
    (root / "test_batch").write_bytes(pickle.dumps(good))
    (root / "batches.meta").write_bytes(pickle.dumps({"label_names": ["a", "b", "c"]}))
    return root


def archive_escaping(path, names):
    with tarfile.open(path, "w:gz") as tar:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
    return path


@pytest.mark.parametrize("case", ["symlink loop", "dotdot archive", "absolute archive", "cifar shapes"])
def test_bad_data_through_the_cli(cli, tiny_data, tmp_path, case):
    outside = tmp_path / "outside.txt"
    if case == "symlink loop":
        (tiny_data / "train" / "boat" / "loop").symlink_to("..")
        data, needle = tiny_data, "reached twice through a symlink"
    elif case == "cifar shapes":
        data, needle = cifar_with_bad_shapes(tmp_path / "cifar-10-batches-py"), "data_batch_2 has data (2, 100)"
    else:
        escape = "../../outside.txt" if case == "dotdot archive" else str(outside)
        data = archive_escaping(tmp_path / "evil.tar.gz", ["d/train/a/0.png", escape])
        needle = "has an unsafe entry"
    assert_one_line_error(cli(*run_args("teach", data, tmp_path / "run", 1)), needle)
    assert not outside.exists() and not (tmp_path.parent / "outside.txt").exists()
    assert not (tmp_path / "run" / "last.pt").exists()


# --- divergence, memory, disk ------------------------------------------------------------------------

def snapshot(out) -> dict:
    return {name: (out / name).read_bytes() for name in ("last.pt", "best.pt")}


def fail_in_epoch_2(monkeypatch, cli, tiny_data, out, hook) -> tuple:
    """Train 2 epochs with hook(loop) before each step of epoch 2; returns the result and the files
    as they were when epoch 2 began."""
    saved = {}

    def first_then_hook(loop):
        saved.setdefault("files", snapshot(out))
        hook(loop)

    before_steps_from_epoch(monkeypatch, 2, first_then_hook)
    return cli(*run_args("teach", tiny_data, out, 2)), saved["files"]


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(cli, tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "run"

    def explode(loop):  # a learning rate no network survives: the weights overflow within a step or two
        for group in loop.learners[0].optimizer.param_groups:
            group["lr"] = 1e30

    result, files = fail_in_epoch_2(monkeypatch, cli, tiny_data, out, explode)
    assert_one_line_error(result, "non-finite in epoch 2 by step 5", "--lr")
    assert snapshot(out) == files and load_checkpoint(out / "last.pt")["epoch"] == 1
    assert temp_files(out) == []


def test_non_finite_loss_in_the_first_epoch_writes_no_checkpoint(cli, tiny_data, tmp_path):
    out = tmp_path / "run"
    assert_one_line_error(cli(*run_args("teach", tiny_data, out, 2, "--lr", "1e30")), "non-finite in epoch 1")
    assert not (out / "last.pt").exists() and not (out / "best.pt").exists()


def test_out_of_memory_suggests_a_smaller_batch_and_loses_nothing(cli, tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "run"

    def oom(loop):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    result, files = fail_in_epoch_2(monkeypatch, cli, tiny_data, out, oom)
    assert_one_line_error(result, "out of GPU memory in epoch 2", "lower --batch-size", "last.pt is kept")
    assert snapshot(out) == files


class FullDisk(io.RawIOBase):
    """A file that takes 1000 bytes, then fails every write with ENOSPC, as a full disk does."""

    def __init__(self, fh):
        self.fh, self.room = fh, 1000

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        if len(b) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(b)
        return self.fh.write(b)


def test_full_disk_while_saving_keeps_the_previous_checkpoint(cli, tiny_data, tmp_path, monkeypatch):
    out, full, real_save = tmp_path / "run", [], torch.save
    # torch.save turns the failed write into a RuntimeError deep in its zip writer; it must still read well.
    monkeypatch.setattr(torch, "save", lambda obj, fh: real_save(obj, io.BufferedWriter(FullDisk(fh)) if full else fh))
    result, files = fail_in_epoch_2(monkeypatch, cli, tiny_data, out, lambda loop: full.append(True))
    assert_one_line_error(result, "could not write", "disk full", "is untouched")
    assert snapshot(out) == files and temp_files(out) == []


def test_unwritable_output_folder(cli, tiny_data, tmp_path):
    (tmp_path / "file").write_text("a file, not a folder")  # blocks mkdir even for root
    assert_one_line_error(cli(*run_args("teach", tiny_data, tmp_path / "file" / "run", 1)),
                          "cannot create the run folder")


def test_os_replace_failing_keeps_the_previous_file(tmp_path, monkeypatch):
    from distill import atomic
    from distill.engine import checkpoint

    target = tmp_path / "last.pt"
    checkpoint.save_atomic({"v": 1}, target)

    def no_space(*_):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "replace", no_space)
    with pytest.raises(checkpoint.UserError, match="No space left on device"):
        checkpoint.save_atomic({"v": 2}, target)
    assert torch.load(target, weights_only=True) == {"v": 1} and temp_files(tmp_path) == []



def test_a_checkpoint_writer_that_strays_from_the_schema_is_caught_at_once():
    """The schema is written in one place (engine/checkpoint.py): a field too many or too few is a bug there."""
    from distill.engine import checkpoint

    fields = {key: None for key in checkpoint.MODEL_KEYS}
    assert set(checkpoint.model_checkpoint(**fields)) == {"format", "version", *checkpoint.MODEL_KEYS}
    with pytest.raises(ValueError, match="do not match the schema"):
        checkpoint.model_checkpoint(**fields, extra=1)
    with pytest.raises(ValueError, match="do not match the schema"):
        checkpoint.training_checkpoint(fields, optimizer={})
    assert set(checkpoint.REQUIRED_KEYS) <= set(checkpoint.MODEL_KEYS)
    assert set(checkpoint.RESUME_KEYS) <= set(checkpoint.MODEL_KEYS) | set(checkpoint.TRAINING_KEYS)
