"""`distill predict`: the run's own test predictions, any image mode and size, archives, unreadable files
(exit 1), bad input (exit 2, checked before torch where it can be), hostile checkpoints."""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_image_tree
from distill.front.cli import main
from runhelpers import run_args, spawn


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A resnet8 baseline on conftest's tiny data (data/ beside the run folder), trained once for this module."""
    root = tmp_path_factory.mktemp("predict")
    data = write_image_tree(root / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISTILL_CACHE", str(root / "cache"))
        main(run_args("student", data, root / "run", 2, "--no-teacher"))
    return root / "run"


def data_of(run: Path) -> Path:
    return run.parent / "data"


def predict_json(cli, *args) -> tuple[int, list[dict], str]:
    result = cli("predict", *args, "--json", "--device", "cpu")
    return result.code, [json.loads(line) for line in result.out.splitlines()], result.err


def test_predict_matches_the_runs_test_predictions(cli, run):
    """The test folder, classified file by file, gives what the run itself predicted on its test split."""
    code, rows, err = predict_json(cli, run / "best.pt", data_of(run) / "test", "--top-k", "3")
    assert code == 0 and err == "", err
    saved = torch.load(run / "predictions.pt", weights_only=True)
    classes = saved["classes"]
    assert [Path(r["file"]).parent.name for r in rows] == [classes[i] for i in saved["labels"]]  # same order
    assert [r["top"][0]["class"] for r in rows] == [classes[i] for i in saved["top1"]]
    probs = torch.tensor([[next(t["probability"] for t in r["top"] if t["class"] == c) for c in classes] for r in rows])
    assert torch.allclose(probs, saved["probs"].float(), atol=2e-3)  # predictions.pt keeps float16


def test_table_shows_files_classes_and_percentages(cli, run, monkeypatch):
    image = data_of(run) / "test" / "boat" / "0001.png"
    plain_terminal(monkeypatch, 80)
    result = cli("predict", run / "best.pt", image, "--top-k", "2", "--device", "cpu")
    assert result.code == 0 and result.err == "", result.err
    assert "top 1" in result.out and "top 2" in result.out and "%" in result.out
    first_cells = [line.split("│")[1].strip() for line in result.out.splitlines() if line.startswith("│")]
    assert "".join(first_cells) == str(image)  # a long path is folded over lines, never cut


def plain_terminal(monkeypatch, columns: int) -> None:
    """The table as on a terminal `columns` wide, whatever the caller's TERM, COLUMNS and colour settings."""
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "LINES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", str(columns))


def file_cells(table: str, names: list[str]) -> list[list[str]]:
    """The lines of the file column that make up each of `names`, in order."""
    cells = [cell for line in table.splitlines() if line.startswith("│") if (cell := line.split("│")[1].strip())]
    found = []
    for name in names:
        lines: list[str] = []
        while cells and len("".join(lines)) < len(name):
            lines.append(cells.pop(0))
        found.append(lines)
    return found


LONG_NAMES = ["photos/holiday_2024_summer/day_03_walk_along_the_northern_coast/raw_exports_from_camera/"
              "IMG_20240817_183012_portrait_mode_edited_final.png",
              "photos/holiday_2024_summer/day_03_walk_along_the_northern_coast/IMG_20240817_183514.png",
              "photos/short.png"]


@pytest.mark.parametrize("columns", [80, 120])
def test_long_file_names_fold_only_after_a_path_separator(cli, run, tmp_path, monkeypatch, columns):
    monkeypatch.chdir(tmp_path)
    for name in LONG_NAMES:
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        Path(name).write_bytes((data_of(run) / "test" / "boat" / "0000.png").read_bytes())
    plain_terminal(monkeypatch, columns)
    result = cli("predict", run / "best.pt", *LONG_NAMES, "--device", "cpu")
    assert result.code == 0 and result.err == "", result.err
    assert max(map(len, result.out.splitlines())) <= columns, result.out
    for name, lines in zip(LONG_NAMES, file_cells(result.out, LONG_NAMES)):
        assert "".join(lines) == name, result.out
        assert all(line.endswith("/") for line in lines[:-1]), result.out  # never inside a folder or file name
    assert len(file_cells(result.out, LONG_NAMES)[0]) > 1  # the longest was folded, not printed past the edge


def test_a_part_wider_than_the_terminal_stays_whole(cli, run, tmp_path, monkeypatch):
    """A folder name no table of 80 columns can hold: the column is wider than the terminal, the name unbroken."""
    monkeypatch.chdir(tmp_path)
    name = "photos/" + "a_folder_name_longer_than_any_table_at_eighty_columns_can_hold_beside_classes" * 2 + "/x.png"
    Path(name).parent.mkdir(parents=True)
    Path(name).write_bytes((data_of(run) / "test" / "boat" / "0000.png").read_bytes())
    plain_terminal(monkeypatch, 80)
    result = cli("predict", run / "best.pt", name, "photos", "--device", "cpu")
    assert result.code == 0 and result.err == "", result.err
    long_part = name.split("/")[1] + "/"
    assert [line.split("│")[1].strip() for line in result.out.splitlines() if long_part in line] == [long_part] * 2
    assert file_cells(result.out, [name, name]) == [["photos/", long_part, "x.png"]] * 2


def write_modes(folder: Path) -> dict[str, Path]:
    """One image per mode, at odd sizes; the 16-bit one is the 8-bit grayscale one widened (v * 257)."""
    folder.mkdir()
    rng = np.random.default_rng(3)
    gray = rng.integers(0, 256, (23, 40), dtype=np.uint8)
    rgb = rng.integers(0, 256, (50, 31, 3), dtype=np.uint8)
    images = {"L": Image.fromarray(gray), "I;16": Image.fromarray(gray.astype(np.uint16) * 257),
              "RGBA": Image.fromarray(rgb).convert("RGBA"), "P": Image.fromarray(rgb).convert("P"),
              "RGB": Image.fromarray(rgb)}
    paths = {}
    for mode, im in images.items():
        paths[mode] = folder / f"{mode.replace(';', '_')}.png"
        im.save(paths[mode])
    assert Image.open(paths["I;16"]).mode.startswith("I")  # really stored as 16 bits
    return paths


def test_any_mode_and_size_is_decoded_like_training_data(cli, run, tmp_path):
    paths = write_modes(tmp_path / "modes")
    code, rows, err = predict_json(cli, run / "best.pt", *paths.values())
    assert code == 0 and err == "", err
    by_mode = dict(zip(paths, rows))
    assert by_mode["I;16"]["top"] == by_mode["L"]["top"]  # 16-bit scaled by 1/257, as training decodes it
    assert by_mode["P"]["top"][0]["class"] in {"apple", "boat", "cloud"}


def folder_of_test_images(run, folder, class_name: str, count: int):
    """A new folder holding copies of `count` test images of one class: (the folder, the originals copied)."""
    folder.mkdir()
    good = sorted((data_of(run) / "test" / class_name).glob("*.png"))[:count]
    for path in good:
        (folder / path.name).write_bytes(path.read_bytes())
    return folder, good


def test_unreadable_files_are_named_and_the_rest_classified(cli, run, tmp_path):
    folder, good = folder_of_test_images(run, tmp_path / "mixed", "apple", 3)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "empty.jpg").write_bytes(b"")
    code, rows, err = predict_json(cli, run / "best.pt", folder)
    assert code == 1
    lines = err.splitlines()
    assert len(lines) == 3 and all(line.startswith("error: ") for line in lines), err
    assert str(folder / "broken.png") in lines[0] and str(folder / "empty.jpg") in lines[1]
    assert "2 of 5 files could not be read" in lines[2]
    assert [Path(r["file"]).name for r in rows] == [p.name for p in good]


def test_archives_give_the_same_predictions_as_the_folder(cli, run, tmp_path):
    test_dir = data_of(run) / "test"
    with tarfile.open(tmp_path / "test.tar.gz", "w:gz") as tar:
        tar.add(test_dir, arcname="test")
    with zipfile.ZipFile(tmp_path / "test.zip", "w") as zf:
        for path in sorted(test_dir.rglob("*.png")):
            zf.write(path, f"test/{path.relative_to(test_dir)}")
        zf.writestr("../outside.png", (test_dir / "apple" / "0000.png").read_bytes())  # zipfile drops the '..'
    _, from_folder, _ = predict_json(cli, run / "best.pt", test_dir)
    for archive in ("test.tar.gz", "test.zip"):
        code, rows, err = predict_json(cli, run / "best.pt", tmp_path / archive)
        assert code == 0 and err == "", err
        rows = [r for r in rows if r["file"] != f"{tmp_path / archive}:outside.png"]
        assert [r["file"] for r in rows] == [f"{tmp_path / archive}:test/{Path(r['file']).relative_to(test_dir)}"
                                             for r in from_folder]
        assert [r["top"] for r in rows] == [r["top"] for r in from_folder]
    assert not (tmp_path.parent / "outside.png").exists()


def test_an_unsafe_tar_is_refused_and_the_other_files_classified(cli, run, tmp_path):
    good = data_of(run) / "test" / "apple" / "0000.png"
    with tarfile.open(tmp_path / "evil.tar", "w") as tar:
        info = tarfile.TarInfo("../evil.png")
        info.size = good.stat().st_size
        tar.addfile(info, io.BytesIO(good.read_bytes()))
    code, rows, err = predict_json(cli, run / "best.pt", tmp_path / "evil.tar", good)
    assert code == 1 and err.count("\n") == 2 and "evil.tar has an unsafe entry '../evil.png'" in err, err
    assert [r["file"] for r in rows] == [str(good)]
    assert not (tmp_path / "evil.png").exists()


def patched_zip(image: bytes, field: tuple[int, int], value: int) -> bytes:
    """A zip of one image with a 2-byte field set to `value` in its local and central headers (offsets of
    `field` there: APPNOTE 4.3.7 and 4.3.12), as a zip tool other than Python's would write it."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("photos/0000.png", image)
    data = bytearray(buffer.getvalue())
    for signature, offset in zip((b"PK\x03\x04", b"PK\x01\x02"), field):
        at = data.index(signature) + offset
        data[at:at + 2] = value.to_bytes(2, "little")
    return bytes(data)


FLAGS, METHOD = (6, 8), (8, 10)  # where the general-purpose flags and the compression method are


def unreadable_input(kind: str, folder: Path, image: Path) -> Path:
    """One file predict cannot read, beside good ones: archives zipfile or tarfile refuse, and special files."""
    path = folder / kind
    if kind == "encrypted.zip":
        path.write_bytes(patched_zip(image.read_bytes(), FLAGS, 0x1))
    elif kind == "deflate64.zip":  # method 9, which zipfile cannot decompress
        path.write_bytes(patched_zip(image.read_bytes(), METHOD, 9))
    elif kind == "broken.tar.gz":
        with tarfile.open(path, "w:gz") as tar:
            tar.add(image.parent, arcname="photos")
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "broken.zip":
        path.write_bytes(b"PK\x03\x04" + bytes(200))
    elif kind == "fifo.png":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    return path


UNREADABLE = {
    "encrypted.zip": "is encrypted (photos/0000.png needs a password): unpack it yourself",
    "deflate64.zip": "is compressed with deflate64 (photos/0000.png), which Python's zipfile cannot read: unpack",
    "broken.tar.gz": "cannot unpack archive",
    "broken.zip": "cannot unpack archive",
    "fifo.png": "is a named pipe (FIFO), not an image file: skipped it (predict reads regular files only)",
    "zero.png": "is a device file, not an image file: skipped it",
}


@pytest.mark.parametrize("kind", UNREADABLE)
def test_an_unreadable_input_is_named_and_the_others_classified(cli, run, tmp_path, kind):
    """The contract: that file named on stderr, the others classified, exit 1."""
    good = sorted((data_of(run) / "test" / "boat").glob("*.png"))[:2]
    bad = unreadable_input(kind, tmp_path, good[0])
    code, rows, err = predict_json(cli, run / "best.pt", good[0], bad, good[1])
    assert [r["file"] for r in rows] == [str(good[0]), str(good[1])], err
    lines = err.splitlines()
    assert code == 1 and len(lines) == 2 and lines[0].startswith("error: ") and str(bad) in lines[0], err
    assert UNREADABLE[kind] in lines[0], err
    assert lines[1] == "error: 1 of 3 files could not be read (named above); the others were classified"
    assert "data set" not in err and "--data" not in err  # predict's words, not training's


def test_a_fifo_or_device_inside_a_folder_skips_only_that_file(cli, run, tmp_path):
    folder, good = folder_of_test_images(run, tmp_path / "photos", "cloud", 2)
    fifo, zero = (unreadable_input(kind, folder, good[0]) for kind in ("fifo.png", "zero.png"))
    code, rows, err = predict_json(cli, run / "best.pt", folder)
    assert [r["file"] for r in rows] == [str(folder / p.name) for p in good], err
    lines = err.splitlines()
    assert code == 1 and len(lines) == 3, err
    assert lines[0] == f"error: {fifo} {UNREADABLE['fifo.png']}" and lines[1].startswith(f"error: {zero} is a device")
    assert lines[2] == "error: 2 of 4 files could not be read (named above); the others were classified"


def imports_torch(importtime_stderr: str) -> bool:
    """Whether `python -X importtime` lines ('import time: self | cumulative | <indent>name') name a torch module."""
    lines = [line for line in importtime_stderr.splitlines() if line.startswith("import time:")]
    names = [line.rsplit("|", 1)[1].strip() for line in lines]
    return any(name.split(".")[0] == "torch" for name in names)


@pytest.mark.parametrize("args, needle", [
    (["--top-k", "0"], "--top-k must be at least 1"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["no/such/image.png"], "no/such/image.png not found"),
])
def test_bad_options_answer_before_torch_is_imported(run, args, needle):
    """A real process, as in tests/front/test_cli.py: no torch module may be imported before the error."""
    args = ["predict", run / "best.pt", data_of(run) / "test", *args]
    proc = spawn(args, launcher=[sys.executable, "-X", "importtime"])
    _, err = proc.communicate(timeout=60)
    lines = [line for line in err.splitlines() if not line.startswith("import time:")]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert not imports_torch(err)


def test_top_k_above_the_class_count_and_no_images_exit_2(cli, run, tmp_path):
    result = cli("predict", run / "best.pt", data_of(run) / "test", "--top-k", "4", "--device", "cpu")
    assert result.code == 2 and "--top-k must be at most 3" in result.err and result.out == ""
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    result = cli("predict", run / "best.pt", tmp_path / "empty", "--device", "cpu")
    assert result.code == 2 and result.err.startswith("error: no images found in") and result.err.count("\n") == 1


class MakesFile:
    """Unpickling this object would create pwned.txt: the proof that a load ran code."""

    def __reduce__(self):
        return (open, ("pwned.txt", "w"))


# A checkpoint edited by hand, the fields predict and export read of the wrong type, and the words of each refusal.
DAMAGED = {
    "config_list": (lambda ck: {**ck, "config": list(ck["config"])}, "its config is list, not a table of settings"),
    "model_tensor": (lambda ck: {**ck, "model": torch.zeros(3)}, "its 'model' weights are Tensor, not a state_dict"),
    "ema_list": (lambda ck: {**ck, "ema": [1], "eval_weights": "ema"}, "its 'ema' weights are list"),
    "size_text": (lambda ck: {**ck, "config": {**ck["config"], "image_size": "16"}}, "image size '16' is not"),
}


def hostile_checkpoints(folder: Path, run: Path) -> list[tuple[Path, str]]:
    """A pickle that would run code, a plain state_dict, random bytes and the DAMAGED edits of the run's best.pt,
    with a word of each refusal."""
    folder.mkdir(exist_ok=True)
    torch.save({"format": "distill-checkpoint", "model": MakesFile()}, folder / "code.pt")
    ck = torch.load(run / "best.pt", weights_only=True)
    torch.save(ck["model"], folder / "plain.pt")
    (folder / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    for name, (edit, _) in DAMAGED.items():
        torch.save(edit(ck), folder / f"{name}.pt")
    return [(folder / "code.pt", "could run code"), (folder / "plain.pt", "not a distill checkpoint"),
            (folder / "random.pt", "not a PyTorch checkpoint"),
            *((folder / f"{name}.pt", f"damaged metadata ({words}") for name, (_, words) in DAMAGED.items())]


def test_hostile_or_foreign_checkpoints_are_refused_in_one_line(cli, run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for path, needle in hostile_checkpoints(tmp_path / "bad", run):
        result = cli("predict", path, data_of(run) / "test", "--device", "cpu")
        assert result.code == 2 and result.out == "", result.err
        assert result.err.count("\n") == 1 and needle in result.err, result.err
    assert not (tmp_path / "pwned.txt").exists()
