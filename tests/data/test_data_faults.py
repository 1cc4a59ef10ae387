"""distill.data when things go wrong: full or read-only caches, damaged caches and unpacked copies,
killed runs, 16-bit images, special files, one class; plus progress lines and the resolved path."""

from __future__ import annotations

import builtins
import errno
import os
import re
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_data import (  # noqa: F401  (the two fixtures apply here too)
    CLASSES,
    N_TEST,
    N_TRAIN,
    TEST,
    TRAIN,
    _isolated_cache,
    _no_hang,
    assert_expected,
    save_png,
    user_error,
    write_cifar,
    write_tar,
    write_tree,
)

import distill.data.decode as decode_mod
import distill.data.progress as progress_mod
from distill.data import load_dataset
from distill.data.files import temp_path
from distill.data.progress import Reporter
from runhelpers import Terminal, terminal_env

N_FILES = (N_TRAIN + N_TEST) * len(CLASSES)
CACHE_ADVICE = r"set \$DISTILL_CACHE / --cache-dir to a"


def decodes(monkeypatch) -> list[int]:
    """Count calls of the image decoder (each load that misses the cache decodes twice)."""
    calls: list[int] = []
    real = decode_mod.decode_images

    def counting(paths, *args, **kwargs):
        calls.append(len(paths))
        return real(paths, *args, **kwargs)

    monkeypatch.setattr(decode_mod, "decode_images", counting)
    return calls


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --- 1. unwritable places ------------------------------------------------------------------------

def deny_writes(monkeypatch, folder: Path, code: int) -> None:
    """Make every write under `folder` fail like a read-only or full file system (tests run as
    root, which chmod cannot stop)."""
    real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir

    def inside(path) -> bool:
        return os.path.abspath(os.fspath(path)).startswith(str(folder))

    def refuse(path):
        raise OSError(code, os.strerror(code), os.fspath(path))

    def fake_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and inside(file) and set(mode) & set("wxa+"):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def fake_os_open(path, flags, *args, **kwargs):
        if inside(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if inside(path):
            refuse(path)
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)


def test_full_disk_while_writing_the_decode_cache(tmp_path, monkeypatch):
    root, cache = write_tree(tmp_path / "tree"), tmp_path / "cache"

    def half_written(_obj, f):
        f.write(b"PK\x03\x04 half of it")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", half_written)
    msg = user_error(r"^no space left in .*cache/tensors while saving the decoded images \(OSError: \[Errno 28\] "
                     rf".*\); free disk space there, or {CACHE_ADVICE} folder on a disk with room$",
                     load_dataset, root, cache_dir=cache)
    assert str(cache / "tensors") in msg
    assert leftovers(cache / "tensors") == []


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS])
def test_read_only_cache_folder(tmp_path, monkeypatch, code):
    root, cache = write_tree(tmp_path / "tree"), tmp_path / "cache"
    (cache / "tensors").mkdir(parents=True)  # an existing cache that has become read-only
    deny_writes(monkeypatch, cache, code)
    user_error(rf"^cannot write to {cache / 'tensors'} while saving the decoded images \(.*\); {CACHE_ADVICE} "
               "writable folder$", load_dataset, root, cache_dir=cache)
    assert leftovers(cache / "tensors") == []


@pytest.mark.parametrize("code", [errno.EACCES, errno.ENOSPC])
def test_unpacking_into_a_read_only_or_full_cache(tmp_path, monkeypatch, code):
    archive, cache = write_tar(write_tree(tmp_path / "t"), tmp_path / "t.tar.gz", "x"), tmp_path / "cache"
    (cache / "extracted").mkdir(parents=True)
    if code == errno.EACCES:
        deny_writes(monkeypatch, cache, code)
    else:  # the disk fills up after a few files, halfway through one of them
        real, written = tarfile.TarFile.makefile, []

        def makefile(self, tarinfo, targetpath):
            if len(written) == 3:
                Path(targetpath).write_bytes(b"\x89PNG half")
                raise OSError(code, os.strerror(code))
            written.append(targetpath)
            return real(self, tarinfo, targetpath)

        monkeypatch.setattr(tarfile.TarFile, "makefile", makefile)
    start = "no space left in" if code == errno.ENOSPC else "cannot write to"
    user_error(rf"^{start} {cache / 'extracted'} while unpacking t\.tar\.gz \(.*\); .*{CACHE_ADVICE}",
               load_dataset, archive, cache_dir=cache)
    assert leftovers(cache / "extracted") == [] and leftovers(cache / "tensors") == []


# --- 2. verified caches, complete unpacked copies, no stale temporaries, shared modes -------------

def _flip_first_label_byte(pt: Path) -> None:
    data = bytearray(pt.read_bytes())
    labels = np.asarray(TRAIN[1], dtype=np.int64).tobytes()
    at = data.find(labels)  # train_y's raw storage inside the (uncompressed) zip
    assert at >= 0
    data[at] ^= 1
    pt.write_bytes(bytes(data))


def _rewrite(pt: Path, change) -> None:
    obj = torch.load(pt, weights_only=True)
    change(obj)
    torch.save(obj, pt)


DAMAGE = {
    "flipped label byte": (_flip_first_label_byte, "checksum mismatch"),
    "truncated": (lambda pt: pt.write_bytes(pt.read_bytes()[: pt.stat().st_size // 2]), "unreadable"),
    "edited tensor": (lambda pt: _rewrite(pt, lambda o: o["test_x"][0].zero_()), "checksum mismatch"),
    "wrong counts": (lambda pt: _rewrite(pt, lambda o: o["counts"].update(files=7)), "counts .* do not match"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_decode_cache_is_said_and_rebuilt(tmp_path, monkeypatch, capsys, damage):
    root, cache = write_tree(tmp_path / "tree"), tmp_path / "cache"
    load_dataset(root, cache_dir=cache)
    (pt,) = (cache / "tensors").iterdir()
    DAMAGE[damage][0](pt)
    calls = decodes(monkeypatch)
    capsys.readouterr()
    assert_expected(load_dataset(root, cache_dir=cache, quiet=True))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and calls  # said even when quiet, and really decoded again
    assert lines[0].startswith(f"cache {pt} is damaged (") and lines[0].endswith("): rebuilding")
    assert re.search(DAMAGE[damage][1], lines[0])
    calls.clear()
    assert_expected(load_dataset(root, cache_dir=cache))
    assert calls == []  # the rebuilt file is trusted again


def test_unpacked_copy_that_lost_files_is_unpacked_again(tmp_path, capsys):
    archive, cache = write_tar(write_tree(tmp_path / "t"), tmp_path / "t.tar.gz", "x"), tmp_path / "cache"
    load_dataset(archive, 32, cache_dir=cache)
    (unpacked,) = (cache / "extracted").iterdir()
    (unpacked / "x" / "test" / "cat" / "000.png").unlink()
    capsys.readouterr()
    ds = load_dataset(archive, 16, cache_dir=cache)  # a new size: decoded from the unpacked copy
    assert len(ds.test_y) == N_TEST * len(CLASSES)  # not one image short
    assert (f"unpacked copy {unpacked} of t.tar.gz is incomplete (1 of {N_FILES} files missing or changed): "
            "unpacking it again") in capsys.readouterr().err
    assert leftovers(cache / "extracted") == [unpacked.name]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temporaries_of_dead_runs_are_removed_live_ones_kept(tmp_path):
    archive, cache = write_tar(write_tree(tmp_path / "t"), tmp_path / "t.tar.gz", "x"), tmp_path / "cache"
    extracted, tensors = cache / "extracted", cache / "tensors"
    extracted.mkdir(parents=True)
    tensors.mkdir()
    live, dead = temp_path(extracted / "abc"), temp_path(extracted / "abc")
    dead = dead.with_name(dead.name.replace(f"~{os.getpid()}~", f"~{_dead_pid()}~"))
    old_style, dead_file = extracted / ".abc.k2j3l4.tmp", tensors / dead.name.replace(".abc", ".k.pt")
    for folder in (live, dead, old_style):
        (folder / "x" / "train").mkdir(parents=True)
        (folder / "x" / "train" / "big.bin").write_bytes(b"0" * 1000)
    dead_file.write_bytes(b"half a cache file")
    day_ago = time.time() - 25 * 3600
    os.utime(old_style, (day_ago, day_ago))
    assert_expected(load_dataset(archive, cache_dir=cache))
    assert live.exists() and not dead.exists() and not old_style.exists() and not dead_file.exists()


KILLED_UNPACK = """
import sys, tarfile, time
real = tarfile.TarFile.makefile
def slow(self, tarinfo, targetpath):
    real(self, tarinfo, targetpath)
    print("unpacking", flush=True)
    time.sleep(60)
tarfile.TarFile.makefile = slow
from distill.data import load_dataset
load_dataset(sys.argv[1], cache_dir=sys.argv[2], quiet=True)
"""


def test_unpack_killed_midway_leaves_no_temporary_for_long(tmp_path):
    archive, cache = write_tar(write_tree(tmp_path / "t"), tmp_path / "t.tar.gz", "x"), tmp_path / "cache"
    child = subprocess.Popen([sys.executable, "-c", KILLED_UNPACK, str(archive), str(cache)],
                             stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2])
    assert child.stdout.readline() == "unpacking\n"
    (temp,) = (cache / "extracted").iterdir()
    assert temp.name.startswith(".") and temp.name.endswith(".tmp")
    child.kill()
    child.wait()
    assert_expected(load_dataset(archive, cache_dir=cache))
    assert [p.name.startswith(".") for p in (cache / "extracted").iterdir()] == [False]


def test_cache_files_and_unpacked_folders_are_readable_by_all(tmp_path):
    archive, cache = write_tar(write_tree(tmp_path / "t"), tmp_path / "t.tar.gz", "x"), tmp_path / "cache"
    old = os.umask(0o077)  # even a private umask must not hide a shared cache from its other users
    try:
        load_dataset(archive, cache_dir=cache)
    finally:
        os.umask(old)
    (pt,) = (cache / "tensors").iterdir()
    (unpacked,) = (cache / "extracted").iterdir()
    assert pt.stat().st_mode & 0o777 == 0o644
    assert unpacked.stat().st_mode & 0o777 == 0o755
    assert (unpacked / "x" / "train" / "cat").stat().st_mode & 0o777 == 0o755
    assert (unpacked / "x" / "train" / "cat" / "000.png").stat().st_mode & 0o777 == 0o644


# --- 3. 16-bit images ----------------------------------------------------------------------------

GRADIENT = np.arange(16, dtype=np.uint16) * (65535 // 15)  # 65535 * k / 15, exactly


def _sixteen_bit_tree(root: Path) -> Path:
    for split in ("train", "test"):
        (root / split / "gray16").mkdir(parents=True)
        Image.fromarray(np.tile(GRADIENT, (16, 1))).save(root / split / "gray16" / "g.png")
        save_png(root / split / "rgb8" / "0.png", TRAIN[0][0][:, :16, :16])
    return root


def test_sixteen_bit_png_keeps_its_gradient(tmp_path):
    root = _sixteen_bit_tree(tmp_path / "tree")
    with Image.open(root / "train" / "gray16" / "g.png") as im:
        assert im.mode in ("I;16", "I")  # really stored and read as 16-bit
    ds = load_dataset(root, 16, cache_dir=tmp_path / "cache")
    want = torch.arange(16, dtype=torch.uint8) * 17  # 255 * k / 15
    for x in (ds.train_x[0], ds.test_x[0]):
        assert torch.equal(x, want.expand(3, 16, 16))


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_every_sixteen_bit_mode_scales_by_257(mode):
    values = np.array([0, 128, 129, 257 * 100, 65535, 70000][: 6 if mode == "I" else 5])
    if mode == "I":
        im = Image.fromarray(values.astype(np.int32).reshape(1, -1))
    else:
        im = Image.frombytes(mode, (len(values), 1), values.astype(">u2" if mode == "I;16B" else "<u2").tobytes())
    assert im.mode == mode
    got = decode_mod._to_rgb_array(im, len(values))  # resampling a 1-pixel-high row keeps each column
    assert got[0, :, 0].tolist() == [0, 0, 1, 100, 255, 255][: len(values)]


# --- 4. one class --------------------------------------------------------------------------------

def test_one_class_is_refused(tmp_path):
    root = tmp_path / "tree"
    for split, (x, _) in (("train", TRAIN), ("test", TEST)):
        save_png(root / split / "cat" / "0.png", x[0])
    user_error(rf"^found 1 class \(cat\) in {root}: a classifier needs at least 2$", load_dataset, root,
               cache_dir=tmp_path / "cache")
    archive = write_tar(root, tmp_path / "one.tar", "one")
    user_error(rf"^found 1 class \(cat\) in {archive}: a classifier", load_dataset, archive, cache_dir=tmp_path / "c")


# --- 5. special files ----------------------------------------------------------------------------

def _socket(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))


SPECIAL = {
    "fifo": (os.mkfifo, r"a named pipe \(FIFO\)"),
    "socket": (_socket, "a socket"),
    "device": (lambda p: p.symlink_to("/dev/zero"), "a device file"),  # read forever if opened
}


@pytest.mark.parametrize("kind", list(SPECIAL))
def test_special_files_named_like_images_are_refused_not_opened(tmp_path, kind):
    make, what = SPECIAL[kind]
    root = write_tree(tmp_path / "tree")
    make(root / "train" / "cat" / "x.png")
    user_error(rf"^{root / 'train' / 'cat' / 'x.png'} is {what}, not a regular file; remove it", load_dataset,
               root, cache_dir=tmp_path / "cache")


def test_special_files_as_data_or_cifar_batch_are_refused(tmp_path):
    os.mkfifo(tmp_path / "data.tar.gz")
    user_error(r"data\.tar\.gz is a named pipe \(FIFO\)", load_dataset, tmp_path / "data.tar.gz",
               cache_dir=tmp_path / "cache")
    root = write_cifar(tmp_path / "cifar-10-batches-py")
    (root / "data_batch_1").unlink()
    os.mkfifo(root / "data_batch_1")
    user_error(r"data_batch_1 is a named pipe \(FIFO\)", load_dataset, root, cache_dir=tmp_path / "cache")


# --- 7. what is being loaded, and progress, on stderr -----------------------------------------------

def test_first_line_says_what_is_loaded_and_quiet_silences_it(tmp_path, capsys):
    archive, cache = write_tar(write_tree(tmp_path / "t"), tmp_path / "t.tar.gz", "x"), tmp_path / "cache"
    load_dataset(archive, cache_dir=cache)
    out, err = capsys.readouterr()
    (unpacked,) = (cache / "extracted").iterdir()
    assert out == ""  # stdout stays clean for --json
    size = f"{archive.stat().st_size / 1e3:.0f} kB"
    assert err.splitlines() == [f"loading {archive}: unpacking {size} into {unpacked}",
                                f"loading {archive}: decoding {N_FILES} images at 32x32 (cached for next time)"]
    load_dataset(archive, cache_dir=cache)
    err = capsys.readouterr().err
    assert err.startswith(f"loading {archive}: using the cached decode of {N_FILES} images at 32x32 (")
    assert err.endswith(" s)\n") and err.count("\n") == 1
    load_dataset(archive, 16, cache_dir=tmp_path / "other", quiet=True)
    assert capsys.readouterr() == ("", "")


def test_long_steps_show_progress(tmp_path, monkeypatch, capsys):
    terminal_env(monkeypatch, "xterm-256color")  # stderr is captured: not a terminal whatever TERM says
    monkeypatch.setattr(progress_mod, "PROGRESS_MIN", 1)  # tiny data counts as "long" here
    monkeypatch.setattr(progress_mod, "PROGRESS_MIN_BYTES", 1)
    archive = write_tar(write_tree(tmp_path / "t"), tmp_path / "t.tar.gz", "x")
    load_dataset(archive, cache_dir=tmp_path / "cache")
    lines = capsys.readouterr().err.splitlines()
    assert f"  decoding: {N_FILES} of {N_FILES} (100%)" in lines
    assert any(line.startswith("  unpacking: ") and line.endswith("(100%)") for line in lines)
    assert 3 <= len(lines) <= 25  # a few lines, not one per file
    load_dataset(write_cifar(tmp_path / "cifar-10-batches-py"), 16, cache_dir=tmp_path / "cache")
    assert f"  resizing: {N_FILES} of {N_FILES} (100%)" in capsys.readouterr().err.splitlines()


def test_progress_on_a_terminal_is_a_bar(monkeypatch):
    terminal_env(monkeypatch, "xterm-256color")
    term = Terminal()
    with Reporter(stream=term).steps("decoding", 5000) as advance:
        for _ in range(5):
            advance(1000)
    assert "decoding" in term.getvalue() and "5000/5000" in term.getvalue()
    with Reporter(quiet=True, stream=term).steps("decoding", 5000) as advance:
        advance(5000)


def test_progress_on_a_dumb_terminal_is_plain_lines(monkeypatch):
    """TERM=dumb (Emacs shells, CI runners with a pty): rich draws no live bar there, so plain lines instead."""
    terminal_env(monkeypatch, "dumb")
    term = Terminal()
    with Reporter(stream=term).steps("decoding", 5000) as advance:
        for _ in range(5):
            advance(1000)
    assert term.getvalue().splitlines() == [f"  decoding: {n:,} of 5,000 ({n // 50}%)" for n in range(1000, 5001, 1000)]


# --- 8. the resolved path ------------------------------------------------------------------------

def test_dataset_path_is_absolute_whatever_the_working_directory(tmp_path, monkeypatch):
    write_tree(tmp_path / "work" / "tree")
    (tmp_path / "link").symlink_to(tmp_path / "work")
    monkeypatch.chdir(tmp_path / "link")
    ds = load_dataset("tree", cache_dir=tmp_path / "cache")
    assert ds.path == str((tmp_path / "work" / "tree").resolve())
    monkeypatch.chdir(tmp_path)
    assert_expected(load_dataset(ds.path, cache_dir=tmp_path / "cache"))
