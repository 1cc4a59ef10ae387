"""`distill export`: every format round-trips with parity for a teacher and two students, dynamic batch takes
1 and 7, the README's export command and onnxruntime example run as written (the ONNX file needs only its
sidecar), model and sidecar are replaced together or not at all, and a failed parity check, a missing extra or
a hostile checkpoint leaves nothing behind."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
import sys
from pathlib import Path

import onnxruntime as ort
import pytest
import torch
from PIL import Image

from conftest import tiny_teach_args, write_image_tree
from distill.front.cli import main
from distill.engine.evaluate import model_from_checkpoint
from distill.deploy.export import TOLERANCE, Deployed, sample_images
from runhelpers import run_args, spawn
from test_predict import hostile_checkpoints, imports_torch

REPO = Path(__file__).resolve().parents[2]
EXTRA_LINE = ('error: ONNX export needs the export extra: pip install -e ".[export]" '
              '(or pip install onnx onnxscript onnxruntime)\n')


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """best.pt of a resnet18 teacher (ImageNet stem) and of resnet8 and resnet14 students, at 16x16."""
    root = tmp_path_factory.mktemp("export")
    data = write_image_tree(root / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISTILL_CACHE", str(root / "cache"))
        main([str(a) for a in tiny_teach_args(data, root / "teacher")])
        for arch in ("resnet8", "resnet14"):
            main(run_args("student", data, root / arch, 1, "--teacher", root / "teacher" / "best.pt", "--arch", arch))
    return {name: root / name / "best.pt" for name in ("teacher", "resnet8", "resnet14")}


def folder_state(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def load_exported(fmt: str, path: Path):
    """The file as a user loads it: uint8 images -> probabilities."""
    if fmt == "onnx":
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    module = torch.jit.load(path) if fmt == "torchscript" else torch.export.load(path).module()
    return lambda x: module(x).detach()


def checkpoint_model(path: Path) -> Deployed:
    ck = torch.load(path, weights_only=True)
    return Deployed(*model_from_checkpoint(ck, path, torch.device("cpu"))).eval()


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.load is deprecated; the file must still load
@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "pt2"])
@pytest.mark.parametrize("name", ["teacher", "resnet8", "resnet14"])
def test_every_format_round_trips_with_parity_and_any_batch(cli, runs, tmp_path, name, fmt):
    out = tmp_path / f"model.{fmt}"
    result = cli("export", runs[name], "--format", fmt, "--out", out, "--dynamic-batch")
    assert result.code == 0, result.err
    assert "top-1 agreement 100%" in result.out
    meta = json.loads((tmp_path / f"model.{fmt}.json").read_text())
    assert meta["parity"]["max_abs_diff"] <= TOLERANCE and meta["dynamic_batch"] and meta["format"] == fmt
    assert meta["checkpoint_sha256"] == hashlib.sha256(runs[name].read_bytes()).hexdigest()
    assert meta["classes"] == ["apple", "boat", "cloud"] and meta["input_size"] == 16
    run, reference = load_exported(fmt, out), checkpoint_model(runs[name])
    for n in (1, 7):
        x = sample_images(n, 16, seed=n)
        got, want = run(x), reference(x).detach()
        assert got.shape == (n, 3) and got.dtype == torch.float32
        assert (got - want).abs().max().item() <= TOLERANCE


def test_default_out_is_beside_the_checkpoint_and_the_batch_is_1(cli, runs):
    folder = runs["resnet8"].parent
    result = cli("export", runs["resnet8"], "--format", "onnx")
    assert result.code == 0, result.err
    meta = json.loads((folder / "best.onnx.json").read_text())
    assert meta["input"]["shape"] == [1, 3, 16, 16] and meta["output"]["shape"] == [1, 3] and meta["opset"] == 18
    session = ort.InferenceSession(str(folder / "best.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [1, 3, 16, 16]
    with pytest.raises(Exception, match="(?i)dimension"):
        session.run(None, {"images": sample_images(7, 16).numpy()})
    assert cli("export", runs["resnet8"], "--format", "pt2").code == 0
    assert (folder / "best.pt2").is_file() and (folder / "best.pt2.json").is_file()


def readme_deploy_blocks(language: str) -> list[str]:
    """The code blocks of the README's "Deploy the student" section in `language`, as a user copies them."""
    text = (REPO / "README.md").read_text()
    start = text.index("## Deploy the student")
    section = text[start:text.index("\n## ", start)]
    return re.findall(rf"```{language}\n(.*?)```", section, re.S)


def readme_export_command() -> list[str]:
    """The README's `distill export` line without its optional [...] parts: the arguments after `distill`."""
    line = next(line for line in readme_deploy_blocks("bash")[0].splitlines() if line.startswith("distill export "))
    return shlex.split(re.sub(r"\s*\[[^]]*\]", "", line))[1:]


def test_readme_export_and_onnxruntime_example_run_as_written(cli, runs, tmp_path, monkeypatch, capsys):
    """The README's export command and then its Python code, run as written (in a folder holding the checkpoint
    at the README's path and a photo.jpg), with the checkpoint gone by then: its answer is predict's."""
    monkeypatch.chdir(tmp_path)
    args = readme_export_command()
    checkpoint = Path(args[1])
    checkpoint.parent.mkdir(parents=True)
    shutil.copy(runs["resnet14"], checkpoint)
    assert cli(*args).code == 0
    Image.open(runs["resnet14"].parents[1] / "data" / "test" / "cloud" / "0002.png").save("photo.jpg")
    top = json.loads(cli("predict", checkpoint, "photo.jpg", "--json", "--device", "cpu").out)["top"][0]
    checkpoint.unlink()  # the model file and its sidecar are all the example needs
    (code,) = readme_deploy_blocks("python")
    capsys.readouterr()
    exec(compile(code, "README.md", "exec"), {})
    name, shown = capsys.readouterr().out.split()
    assert name == top["class"] and abs(float(shown.rstrip("%")) - 100 * top["probability"]) <= 0.05 + 1e-3


def test_a_failed_parity_check_writes_nothing_and_exits_2(cli, runs, tmp_path, monkeypatch):
    import distill.deploy.export as export

    real = export.load_runner
    monkeypatch.setattr(export, "load_runner", lambda fmt, data: (lambda x: real(fmt, data)(x) + 0.01))
    before = folder_state(tmp_path)
    result = cli("export", runs["resnet8"], "--format", "torchscript", "--out", tmp_path / "m.pt")
    assert result.code == 2 and result.out == "" and result.err.count("\n") == 1, result.err
    assert "does not match" in result.err and "1.00e-02" in result.err
    assert folder_state(tmp_path) == before


def test_onnx_without_the_extra_names_it(cli, runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # an import of it now raises ImportError
    before = folder_state(tmp_path)
    result = cli("export", runs["resnet8"], "--format", "onnx", "--out", tmp_path / "m.onnx")
    assert result.code == 2 and result.err == EXTRA_LINE
    assert folder_state(tmp_path) == before


def test_hostile_or_foreign_checkpoints_are_refused_and_nothing_is_written(cli, runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for path, needle in hostile_checkpoints(tmp_path / "bad", runs["resnet8"].parent):
        before = folder_state(tmp_path / "bad")
        result = cli("export", path, "--format", "torchscript")
        assert result.code == 2 and result.out == "" and result.err.count("\n") == 1 and needle in result.err
        assert folder_state(tmp_path / "bad") == before
    assert not (tmp_path / "pwned.txt").exists()


@pytest.mark.parametrize("args, needle", [
    (["--format", "tflite"], "choose one of onnx, torchscript, pt2"),
    (["--format", "onnx", "--opset", "12"], "--opset must be in [18, 23]"),
    (["--format", "pt2", "--opset", "18"], "--opset applies to --format onnx only"),
    (["--format", "onnx", "--out", "no/such/folder/m.onnx"], "no/such/folder"),
])
def test_bad_options_answer_before_torch_is_imported(runs, args, needle):
    proc = spawn(["export", runs["resnet8"], *args], launcher=[sys.executable, "-X", "importtime"])
    _, err = proc.communicate(timeout=60)
    lines = [line for line in err.splitlines() if not line.startswith("import time:")]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert not imports_torch(err)


def test_out_may_not_be_the_checkpoint(cli, runs):
    result = cli("export", runs["resnet8"], "--format", "torchscript", "--out", runs["resnet8"])
    assert result.code == 2 and "is the checkpoint itself" in result.err


def export_pair(folder: Path) -> dict[str, bytes]:
    """Every file in `folder` (hidden temporaries included) and its bytes; a folder as None."""
    return {p.name: None if p.is_dir() else p.read_bytes() for p in sorted(folder.iterdir())}


def previous_export(cli, runs, folder: Path) -> Path:
    """m.ts.pt and its sidecar from resnet8, for a later export of resnet14 to replace."""
    folder.mkdir()
    assert cli("export", runs["resnet8"], "--format", "torchscript", "--out", folder / "m.ts.pt").code == 0
    return folder / "m.ts.pt"


def test_a_folder_where_the_sidecar_goes_is_refused_before_anything_is_written(cli, runs, tmp_path):
    out = previous_export(cli, runs, tmp_path / "out")
    (tmp_path / "out" / "m.ts.pt.json").unlink()
    (tmp_path / "out" / "m.ts.pt.json").mkdir()
    before = export_pair(out.parent)
    result = cli("export", runs["resnet14"], "--format", "torchscript", "--out", out)
    assert export_pair(out.parent) == before
    assert result.code == 2 and result.err.count("\n") == 1 and "m.ts.pt.json is a folder" in result.err, result.err


def test_a_failed_rename_of_the_sidecar_puts_the_previous_model_back(cli, runs, tmp_path):
    """Past the command line's check (a folder appearing meanwhile): the model was already replaced, and is
    restored; no temporary is left."""
    from distill.errors import UserError
    from distill.deploy.export import export_checkpoint

    out = previous_export(cli, runs, tmp_path / "out")
    (tmp_path / "out" / "m.ts.pt.json").unlink()
    (tmp_path / "out" / "m.ts.pt.json").mkdir()
    before = export_pair(out.parent)
    with pytest.raises(UserError) as failure:
        export_checkpoint(runs["resnet14"], "torchscript", out, False)
    assert export_pair(out.parent) == before
    assert "the previous m.ts.pt and m.ts.pt.json, if any, are untouched" in str(failure.value)


def test_a_disk_full_at_the_second_write_keeps_the_previous_model_and_sidecar(cli, runs, tmp_path, monkeypatch):
    import errno

    import distill.atomic as atomic

    out = previous_export(cli, runs, tmp_path / "out")
    before = export_pair(out.parent)
    opened = []

    class FillsUp:
        """A file of the second write: the disk is full by then."""

        def __init__(self, fh):
            self.fh = fh

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    def open_filling(path, mode="r", *args, **kwargs):
        fh = open(path, mode, *args, **kwargs)
        opened.append(path)
        return FillsUp(fh) if len(opened) == 2 else fh

    monkeypatch.setattr(atomic, "open", open_filling, raising=False)  # the name atomic's writes look up first
    result = cli("export", runs["resnet14"], "--format", "torchscript", "--out", out)
    assert export_pair(out.parent) == before  # byte for byte, and no temporary left
    assert len(opened) == 2 and result.code == 2 and result.err.count("\n") == 1, result.err
    assert "No space left on device" in result.err and "are untouched" in result.err
    monkeypatch.undo()
    assert cli("export", runs["resnet14"], "--format", "torchscript", "--out", out).code == 0
    assert sorted(export_pair(out.parent)) == ["m.ts.pt", "m.ts.pt.json"]
    assert json.loads((out.parent / "m.ts.pt.json").read_text())["checkpoint"] == str(runs["resnet14"].resolve())
