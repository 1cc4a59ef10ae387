"""distill.data on tiny synthetic data written into tmp_path (CPU, a few seconds)."""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import distill.data.decode as decode_mod
import distill.data.load as load_mod
from distill.data import Dataset, balanced_subset, channel_stats, default_cache_dir, load_dataset, make_splits
from distill.errors import UserError

CLASSES = ["cat", "dog", "frog"]
N_TRAIN, N_TEST = 4, 2  # per class


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "default-cache"))
    monkeypatch.delenv("DISTILL_DATA", raising=False)


@pytest.fixture(autouse=True)
def _no_hang():
    """A symlink loop must raise, not recurse forever: fail the test instead of hanging."""
    def _fail(*_):
        raise TimeoutError("test took over 30 s")
    old = signal.signal(signal.SIGALRM, _fail)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def pixels(per_class: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 (N, 3, size, size) images grouped by class, and their labels."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (per_class * len(CLASSES), 3, size, size), dtype=np.uint8)
    return x, np.repeat(np.arange(len(CLASSES)), per_class)


TRAIN, TEST = pixels(N_TRAIN, seed=1), pixels(N_TEST, seed=2)


def save_png(path: Path, chw: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(chw.transpose(1, 2, 0))).save(path)


def write_tree(root: Path) -> Path:
    for split, (x, y) in (("train", TRAIN), ("test", TEST)):
        for i, (img, label) in enumerate(zip(x, y)):
            save_png(root / split / CLASSES[label] / f"{i:03d}.png", img)
    return root


def write_cifar(root: Path) -> Path:
    """The python-version layout; bytes keys and protocol 2, as Python 2 wrote the originals."""
    root.mkdir(parents=True)
    x, y = TRAIN
    for i, part in enumerate(np.array_split(np.arange(len(y)), 5), start=1):
        batch = {b"data": x[part].reshape(len(part), -1), b"labels": y[part].tolist()}
        (root / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
    test = {"data": TEST[0].reshape(len(TEST[1]), -1), "labels": TEST[1].tolist()}
    (root / "test_batch").write_bytes(pickle.dumps(test))
    (root / "batches.meta").write_bytes(pickle.dumps({"label_names": CLASSES}))
    return root


def write_tar(src: Path, archive: Path, arcname: str) -> Path:
    mode = "w:gz" if archive.name.endswith(("gz", "tgz")) else "w"
    with tarfile.open(archive, mode) as tar:
        tar.add(src, arcname=arcname)
    return archive


def user_error(match: str, fn, *args, **kwargs) -> str:
    with pytest.raises(UserError, match=match) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def assert_expected(ds: Dataset) -> None:
    assert ds.classes == CLASSES
    for got, want in ((ds.train_x, TRAIN[0]), (ds.test_x, TEST[0])):
        assert got.dtype == torch.uint8 and got.is_contiguous()
        assert torch.equal(got, torch.from_numpy(want))
    assert torch.equal(ds.train_y, torch.from_numpy(TRAIN[1]).long())
    assert torch.equal(ds.test_y, torch.from_numpy(TEST[1]).long())


# --- layouts -------------------------------------------------------------------------------------

LAYOUTS = {
    "tree": lambda t: write_tree(t / "tree"),
    "cifar": lambda t: write_cifar(t / "cifar-10-batches-py"),
    "wrapped tree": lambda t: (write_tree(t / "outer" / "cifar10-jpeg"), t / "outer")[1],
    "tree.tar": lambda t: write_tar(write_tree(t / "tree"), t / "tree.tar", "cifar10-jpeg"),
    "tree.tgz": lambda t: write_tar(write_tree(t / "tree"), t / "tree.tgz", "."),
    "cifar.tar.gz": lambda t: write_tar(write_cifar(t / "c"), t / "c.tar.gz", "cifar-10-batches-py"),
    "folder with cifar-10-python.tar.gz": lambda t: write_tar(
        write_cifar(t / "c"), (t / "dl").mkdir() or t / "dl" / "cifar-10-python.tar.gz", "cifar-10-batches-py"
    ).parent,
    # A shared data folder as the README's: the JPEG copy of CIFAR-10 packed as an image-folder tree.
    "folder with tree.tar.gz": lambda t: write_tar(
        write_tree(t / "tree"), (t / "shared").mkdir() or t / "shared" / "cifar10-jpeg.tar.gz", "cifar10-jpeg"
    ).parent,
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_layout_decodes_to_the_same_tensors(tmp_path, layout):
    ds = load_dataset(LAYOUTS[layout](tmp_path), 32, cache_dir=tmp_path / "cache")
    assert_expected(ds)
    assert ds.source


def test_cifar_and_tree_resize_alike(tmp_path):
    a = load_dataset(write_tree(tmp_path / "tree"), 16, cache_dir=tmp_path / "cache")
    b = load_dataset(write_cifar(tmp_path / "cifar"), 16, cache_dir=tmp_path / "cache")
    assert a.train_x.shape == (12, 3, 16, 16)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_x, b.test_x)


def test_modes_and_sizes_become_rgb_at_image_size(tmp_path):
    root = tmp_path / "mixed"
    rgb = np.random.default_rng(3).integers(0, 256, (20, 12, 3), dtype=np.uint8)
    images = {"gray.png": Image.new("L", (8, 8), 77), "rgba.png": Image.new("RGBA", (5, 9), (1, 2, 3, 4)),
              "pal.bmp": Image.new("P", (8, 8), 0), "odd.jpg": Image.fromarray(rgb)}
    for split in ("train", "test"):
        for name, im in images.items():
            (root / split / "a").mkdir(parents=True, exist_ok=True)
            im.save(root / split / "a" / name)
        save_png(root / split / "b" / "0.png", TRAIN[0][0])  # a classifier needs two classes
    ds = load_dataset(root, 8, cache_dir=tmp_path / "cache")
    assert ds.train_x.shape == (5, 3, 8, 8)
    by_name = dict(zip(sorted(images), ds.train_x[:4]))
    assert (by_name["gray.png"] == 77).all()
    assert by_name["rgba.png"][:, 0, 0].tolist() == [1, 2, 3]
    with Image.open(root / "train" / "a" / "odd.jpg") as im:
        want = np.asarray(im.convert("RGB").resize((8, 8), Image.Resampling.BICUBIC)).transpose(2, 0, 1)
    assert torch.equal(by_name["odd.jpg"], torch.from_numpy(want.copy()))


def test_process_pool_matches_serial_decode(tmp_path, monkeypatch):
    root = write_tree(tmp_path / "tree")
    serial = load_dataset(root, 32, cache_dir=tmp_path / "c1")
    monkeypatch.setattr(decode_mod, "SERIAL_BELOW", 0)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert torch.equal(load_dataset(root, 32, cache_dir=tmp_path / "c2").train_x, serial.train_x)
    (root / "test" / "dog" / "zzz.png").write_bytes(b"not an image")
    user_error(r"cannot decode image .*zzz\.png", load_dataset, root, 32, cache_dir=tmp_path / "c3")


# --- cache ---------------------------------------------------------------------------------------

def _refuse(*_args, **_kwargs):
    raise AssertionError("decoded or unpacked although the cache should have been used")


def test_cache_is_reused_then_invalidated_by_an_edit(tmp_path, monkeypatch):
    root, cache = write_tree(tmp_path / "tree"), tmp_path / "cache"
    first = load_dataset(root, 32, cache_dir=cache)
    files = list((cache / "tensors").iterdir())
    assert len(files) == 1 and files[0].suffix == ".pt"  # no temp file left behind
    with monkeypatch.context() as m:
        m.setattr(decode_mod, "decode_images", _refuse)
        assert torch.equal(load_dataset(root, 32, cache_dir=cache).train_x, first.train_x)
    edited = root / "train" / "dog" / "004.png"
    save_png(edited, np.zeros((3, 32, 32), np.uint8))
    os.utime(edited, ns=(1_000_000_000, 1_000_000_000))  # a new mtime even on coarse clocks
    again = load_dataset(root, 32, cache_dir=cache)
    assert again.train_x[4].sum() == 0 and not torch.equal(again.train_x, first.train_x)
    assert len(list((cache / "tensors").iterdir())) == 2


def test_archive_cache_hit_needs_no_unpack_and_survives_corruption(tmp_path, monkeypatch):
    archive, cache = write_tar(write_tree(tmp_path / "t"), tmp_path / "t.tar.gz", "x"), tmp_path / "cache"
    load_dataset(archive, 32, cache_dir=cache)
    assert [p.name.startswith(".") for p in (cache / "extracted").iterdir()] == [False]
    with monkeypatch.context() as m:
        m.setattr(load_mod, "extract_archive", _refuse)
        assert_expected(load_dataset(archive, 32, cache_dir=cache))
    (pt,) = (cache / "tensors").iterdir()
    pt.write_bytes(pt.read_bytes()[:100])  # a truncated cache file is rebuilt, not an error
    assert_expected(load_dataset(archive, 32, cache_dir=cache))


def beside(path: Path, name: bytes) -> Path:
    """path's sibling with a name that is not UTF-8 (os.listdir returns such names with lone surrogates)."""
    return Path(os.fsdecode(os.fsencode(path.parent) + b"/" + name))


def test_names_that_are_not_utf8_load_and_key_the_cache_by_their_bytes(tmp_path, monkeypatch):
    root, cache = write_tree(tmp_path / "tree"), tmp_path / "cache"
    for split in ("train", "test"):
        (root / split / "dog").rename(beside(root / split / "dog", b"d\xf6g"))  # Latin-1 "dög"
    image = root / "train" / "cat" / "000.png"
    image.rename(beside(image, b"000\xff.png"))  # still sorted first in its class
    archive = write_tar(root, beside(tmp_path / "x", b"tr\xe9e.tar"), "tree")
    for source in (root, archive):
        ds = load_dataset(source, 32, cache_dir=cache)
        assert ds.classes == ["cat", "d\\xf6g", "frog"] and json.dumps(ds.classes).isascii()  # \xNN, printable
        assert ds.source.isprintable() and torch.equal(ds.train_x, torch.from_numpy(TRAIN[0]))
        assert torch.equal(ds.test_x, torch.from_numpy(TEST[0])) and torch.equal(ds.train_y, torch.from_numpy(TRAIN[1]))
    with monkeypatch.context() as m:  # stable: the same names find the same cache
        m.setattr(decode_mod, "decode_images", _refuse)
        m.setattr(load_mod, "extract_archive", _refuse)
        load_dataset(root, 32, cache_dir=cache)
        load_dataset(archive, 32, cache_dir=cache)
    # unique: another undecodable byte (same size, same mtime) is another key, not a lookalike of the first
    odd = beside(image, b"000\xff.png")
    odd.rename(beside(image, b"000\xfe.png"))
    load_dataset(root, 32, cache_dir=cache)
    assert len(list((cache / "tensors").iterdir())) == 3
    save_png(root / "train" / "d\\xf6g" / "0.png", TRAIN[0][0])  # a folder literally named like that rendering
    user_error(r"class folders .* and .* would both be class 'd\\xf6g'; rename one", load_dataset, root,
               cache_dir=cache)
    meta = write_cifar(tmp_path / "cifar") / "batches.meta"
    meta.write_bytes(pickle.dumps({"label_names": [b"c\xe4t", b"dog", b"frog"]}))  # Latin-1 bytes, not UTF-8
    assert load_dataset(meta.parent, 32, cache_dir=cache).classes == ["c\\xe4t", "dog", "frog"]


def test_default_cache_dir(monkeypatch, tmp_path):
    assert default_cache_dir() == tmp_path / "default-cache"
    monkeypatch.delenv("DISTILL_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "distill"


# --- download ------------------------------------------------------------------------------------

def fake_download(monkeypatch) -> list[Path]:
    """torchvision's CIFAR10(download=True) replaced by writing tiny batches; returns the roots asked for."""
    import torchvision.datasets

    calls: list[Path] = []

    def download(root, **_kwargs):
        calls.append(Path(root))
        print("Files already downloaded and verified")  # torchvision prints such lines on stdout
        write_cifar(Path(root) / "cifar-10-batches-py")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", download)
    return calls


def offline(monkeypatch) -> None:
    import torchvision.datasets

    def fail(**_kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure\nin name resolution>")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fail)


def test_download_offline_is_one_user_error(tmp_path, monkeypatch):
    offline(monkeypatch)
    # Every layout --data and $DISTILL_DATA take, the .tar.gz of an image-folder tree included.
    msg = user_error(r"^CIFAR-10 is not downloaded and the download failed \(OSError: <urlopen error .*resolution>\): "
                     r"pass --data PATH or set \$DISTILL_DATA to any of: train/<class>/ and test/<class>/ image "
                     r"folders, CIFAR-10 python batches \(cifar-10-batches-py/ or cifar-10-python\.tar\.gz\), "
                     r"or a \.tar/\.tar\.gz/\.tgz of either$", load_dataset, None, cache_dir=tmp_path)
    assert msg == user_error("download failed", load_dataset, None, cache_dir=tmp_path, download=True)
    user_error("download failed", load_dataset, tmp_path / "empty", cache_dir=tmp_path, download=True)


def test_default_is_cifar10_downloaded_once_into_the_cache(tmp_path, monkeypatch, capsys):
    calls = fake_download(monkeypatch)
    first = load_dataset(None, cache_dir=tmp_path)  # no --data and no --download needed
    assert_expected(first)
    assert calls == [tmp_path / "data"] and first.path == str((tmp_path / "data" / "cifar-10-batches-py").resolve())
    out, err = capsys.readouterr()
    assert out == "" and "downloading it once" in err and "Files already downloaded" in err  # --json stays clean
    assert_expected(load_dataset(None, cache_dir=tmp_path, download=True))
    assert calls == [tmp_path / "data"]  # the second run uses the downloaded folder, offline
    monkeypatch.delenv("DISTILL_CACHE")
    monkeypatch.setattr(Path, "home", lambda: tmp_path / "home")
    assert_expected(load_dataset(None))
    assert calls[-1] == tmp_path / "home" / ".cache" / "distill" / "data"
    capsys.readouterr()
    assert_expected(load_dataset(None, cache_dir=tmp_path / "quiet", quiet=True))
    assert capsys.readouterr() == ("", "")


def test_default_honours_distill_data_and_reuses_without_network(tmp_path, monkeypatch):
    calls = fake_download(monkeypatch)
    monkeypatch.setenv("DISTILL_DATA", str(tmp_path / "shared-data"))
    assert_expected(load_dataset(None, cache_dir=tmp_path / "cache"))
    assert calls == [tmp_path / "shared-data"]
    offline(monkeypatch)
    for name in ("ready", "legacy", "batches-itself", "archive"):
        cache, data = tmp_path / f"cache-{name}", tmp_path / f"data-{name}"
        monkeypatch.setenv("DISTILL_DATA", str(data))
        expected = {"ready": data / "cifar-10-batches-py", "legacy": cache / "download" / "cifar-10-batches-py",
                    "batches-itself": data, "archive": data / "cifar-10-python.tar.gz"}[name]
        if name == "archive":
            data.mkdir()
            write_tar(write_cifar(tmp_path / "c"), expected, "cifar-10-batches-py")
        else:
            write_cifar(expected)
        ds = load_dataset(None, cache_dir=cache)
        assert_expected(ds)
        assert ds.path == str(expected.resolve())


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_distill_data_takes_every_layout_data_takes_without_network(tmp_path, monkeypatch, layout):
    """A JPEG archive, a folder holding an image-folder .tar.gz, a tree: $DISTILL_DATA is --data without the flag,
    never a folder to download into (the fake download would give the same images: only its calls tell)."""
    calls = fake_download(monkeypatch)
    data = LAYOUTS[layout](tmp_path)
    before = sorted(data.rglob("*"))
    monkeypatch.setenv("DISTILL_DATA", str(data))
    ds = load_dataset(None, cache_dir=tmp_path / "cache")
    assert_expected(ds)
    assert Path(ds.path).is_relative_to(data.resolve())  # what a run records, to load the same data again
    assert calls == [] and sorted(data.rglob("*")) == before  # nothing downloaded, nothing written there


def test_distill_data_holding_something_else_is_refused_never_downloaded_into(tmp_path, monkeypatch):
    calls = fake_download(monkeypatch)
    run = tmp_path / "runs" / "teacher-resnet50"
    (run / "tensorboard").mkdir(parents=True)
    for name in ("best.pt", "config.json", "last.pt", "metrics.json", "train.log"):
        (run / name).write_text("x")
    monkeypatch.setenv("DISTILL_DATA", str(run))
    before = sorted(p.name for p in run.iterdir())
    msg = user_error(r"teacher-resnet50 \(\$DISTILL_DATA\) holds no dataset; expected train/<class>/.*; found "
                     r"best\.pt, config\.json, last\.pt, metrics\.json and 2 more: point \$DISTILL_DATA at one$",
                     load_dataset, None, cache_dir=tmp_path / "cache")
    assert calls == [] and sorted(p.name for p in run.iterdir()) == before, msg
    (tmp_path / "notes.txt").write_text("hi")
    monkeypatch.setenv("DISTILL_DATA", str(tmp_path / "notes.txt"))
    user_error(r"notes\.txt \(\$DISTILL_DATA\) is not a \.tar/\.tar\.gz/\.tgz archive; point \$DISTILL_DATA at ",
               load_dataset, None, cache_dir=tmp_path / "cache")
    # --data DIR --download where DIR cannot be made falls back to $DISTILL_DATA: not into someone's folder either.
    monkeypatch.setenv("DISTILL_DATA", str(run))
    user_error(r"not downloading CIFAR-10 into .*teacher-resnet50: it holds best\.pt, .* and 2 more; point "
               r"\$DISTILL_DATA \(or --data with --download\) at an empty or new folder$",
               load_dataset, tmp_path / "notes.txt" / "sub", cache_dir=tmp_path / "cache", download=True)
    assert calls == [] and sorted(p.name for p in run.iterdir()) == before


def test_download_fills_an_empty_data_folder(tmp_path, monkeypatch):
    calls = fake_download(monkeypatch)
    assert_expected(load_dataset(tmp_path / "mine", cache_dir=tmp_path / "cache", download=True))
    assert calls == [tmp_path / "mine"]


# --- user errors ---------------------------------------------------------------------------------

def test_path_and_layout_errors(tmp_path):
    cache = tmp_path / "cache"
    user_error("does not exist", load_dataset, tmp_path / "nope", cache_dir=cache)
    (tmp_path / "junk" / "a").mkdir(parents=True)
    (tmp_path / "junk" / "b").mkdir()
    user_error(r"holds no dataset; expected train/<class>/", load_dataset, tmp_path / "junk", cache_dir=cache)
    (tmp_path / "notes.txt").write_text("hi")
    user_error("not a .tar", load_dataset, tmp_path / "notes.txt", cache_dir=cache)
    save_png(tmp_path / "half" / "train" / "a" / "0.png", TRAIN[0][0])
    user_error("needs both train/ and test/", load_dataset, tmp_path / "half", cache_dir=cache)
    user_error("image size", load_dataset, write_tree(tmp_path / "t"), 0, cache_dir=cache)


def test_tree_content_errors(tmp_path):
    root, cache = write_tree(tmp_path / "tree"), tmp_path / "cache"
    (root / "test" / "emu").mkdir()
    user_error(r"only in train: none; only in test: \['emu'\]", load_dataset, root, cache_dir=cache)
    (root / "train" / "emu").mkdir()
    (root / "train" / "emu" / "readme.txt").write_text("no images here")
    user_error(r"class folder .*emu holds no images", load_dataset, root, cache_dir=cache)
    save_png(root / "train" / "emu" / "0.png", TRAIN[0][0])
    save_png(root / "test" / "emu" / "0.png", TRAIN[0][0])
    (root / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    user_error(r"cannot decode image .*broken\.jpg", load_dataset, root, cache_dir=cache)


@pytest.mark.parametrize("link", ["parent loop", "self loop"])
def test_symlink_loop_is_refused_not_followed_forever(tmp_path, link):
    root = write_tree(tmp_path / "tree")
    where = root / "train" / "cat" / "sub"
    if link == "parent loop":
        where.symlink_to("..")
        user_error("reached twice through a symlink", load_dataset, root, cache_dir=tmp_path / "c")
    else:
        where.symlink_to(where)
        user_error(r"cannot follow .*sub", load_dataset, root, cache_dir=tmp_path / "c")


def test_cifar_errors(tmp_path):
    cache = tmp_path / "cache"
    root = write_cifar(tmp_path / "c1")
    (root / "data_batch_2").write_bytes(pickle.dumps({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}))
    user_error(r"data_batch_2 has data \(2, 100\), expected uint8", load_dataset, root, cache_dir=cache)
    (root / "data_batch_2").write_bytes(pickle.dumps({"labels": [0]}))
    user_error(r"data_batch_2 has no 'data' entry", load_dataset, root, cache_dir=cache)
    (root / "data_batch_2").write_bytes(b"\x80\x04garbage")
    user_error("cannot read CIFAR-10 batch .*data_batch_2", load_dataset, root, cache_dir=cache)
    (root / "data_batch_2").unlink()
    user_error("lacks data_batch_2", load_dataset, root, cache_dir=cache)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))  # unpickling this would create the file


def test_malicious_pickle_is_refused_without_running(tmp_path):
    root, marker = write_cifar(tmp_path / "c"), tmp_path / "pwned"
    (root / "data_batch_3").write_bytes(pickle.dumps({"data": _Evil(marker), "labels": []}))
    user_error(r"refusing to unpickle .*data_batch_3: it references (builtins|io)\.open", load_dataset, root,
               cache_dir=tmp_path / "cache")
    assert not marker.exists()


def _evil_tar(path: Path, member: tarfile.TarInfo, data: bytes = b"evil") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        good = tarfile.TarInfo("d/train/a/0.txt")
        good.size = 2
        tar.addfile(good, io.BytesIO(b"ok"))
        member.size = len(data) if member.isfile() else 0
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return path


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize("case", ["dotdot", "absolute", "symlink out", "hardlink out"])
def test_unsafe_archive_is_refused_and_writes_nothing_outside(tmp_path, case):
    outside = tmp_path / "outside.txt"
    member = {
        "dotdot": tarfile.TarInfo("../../outside.txt"),
        "absolute": tarfile.TarInfo(str(outside)),
        "symlink out": _link("d/link", "../../..", tarfile.SYMTYPE),
        "hardlink out": _link("d/hard", "../outside.txt", tarfile.LNKTYPE),
    }[case]
    archive = _evil_tar(tmp_path / "evil.tar.gz", member)
    with tarfile.open(archive) as tar:  # the entry really is stored unsanitised
        assert tar.getmembers()[-1].name == member.name
    cache = tmp_path / "deep" / "cache"
    user_error(r"archive .*evil\.tar\.gz has an unsafe entry", load_dataset, archive, cache_dir=cache)
    assert not outside.exists() and not (tmp_path / "deep" / "outside.txt").exists()
    assert list((cache / "extracted").iterdir()) == []  # no half-unpacked folder left


# --- splits --------------------------------------------------------------------------------------

def toy_dataset(per_class: tuple[int, ...] = (40, 40, 40, 40, 40), n_test: int = 50) -> Dataset:
    """Images whose first byte is their index, so subsets can be checked for overlap."""
    y = torch.repeat_interleave(torch.arange(len(per_class)), torch.tensor(per_class))
    x = torch.zeros(len(y), 3, 2, 2, dtype=torch.uint8)
    x[:, 0, 0, 0] = torch.arange(len(y), dtype=torch.uint8)
    test_y = torch.arange(n_test) % len(per_class)
    return Dataset(x, y, x[:n_test].clone(), test_y, [str(i) for i in range(len(per_class))], "toy")


def ids(x: torch.Tensor) -> set[int]:
    return set(x[:, 0, 0, 0].tolist())


def test_split_is_disjoint_complete_balanced_and_seeded():
    ds = toy_dataset()
    s = make_splits(ds, 50, None, None, seed=0)
    assert len(s.val_y) == 50 and len(s.train_y) == 150
    assert ids(s.val_x).isdisjoint(ids(s.train_x)) and ids(s.val_x) | ids(s.train_x) == set(range(200))
    assert torch.bincount(s.val_y).tolist() == [10] * 5
    assert torch.equal(s.val_y, ds.train_y[list(sorted(ids(s.val_x)))])  # labels travel with images
    again, other = make_splits(ds, 50, None, None, seed=0), make_splits(ds, 50, None, None, seed=1)
    assert torch.equal(again.val_x, s.val_x) and not torch.equal(other.val_x, s.val_x)
    assert torch.equal(s.test_x, ds.test_x)


def test_split_limits_and_empty_validation():
    ds = toy_dataset()
    s = make_splits(ds, 0, 23, 12, seed=4)
    assert s.val_x.shape == (0, 3, 2, 2) and s.val_y.shape == (0,)
    assert torch.bincount(s.train_y).tolist() == [5, 5, 5, 4, 4]
    assert torch.bincount(s.test_y, minlength=5).tolist() == [3, 3, 2, 2, 2]
    limited = make_splits(ds, 50, 100, None, seed=4)
    assert ids(limited.train_x).isdisjoint(ids(limited.val_x)) and len(limited.train_y) == 100
    user_error("limit 151 is larger than the 150 images available", make_splits, ds, 50, 151, None, 0)
    user_error("limit 51 is larger than the 50 images available", make_splits, ds, 0, None, 51, 0)
    user_error("validation size 200 must be from 0 to 199", make_splits, ds, 200, None, None, 0)


def test_balanced_subset_spreads_and_fills_short_classes():
    ds = toy_dataset((2, 30, 30))
    x, y = balanced_subset(ds.train_x, ds.train_y, 31, seed=0)
    assert torch.bincount(y).tolist() == [2, 15, 14]  # class 0 is short: the others take its share
    assert torch.equal(x[:, 0, 0, 0].long(), torch.tensor(sorted(ids(x))))
    x2, _ = balanced_subset(ds.train_x, ds.train_y, 31, seed=0)
    assert torch.equal(x, x2)
    user_error("limit 63 is larger than the 62 images available", balanced_subset, ds.train_x, ds.train_y, 63, 0)


def test_channel_stats_matches_float64_reference():
    x = torch.randint(0, 256, (37, 3, 5, 4), dtype=torch.uint8)
    mean, std = channel_stats(x, chunk=7)
    ref = x.double().div(255).permute(1, 0, 2, 3).reshape(3, -1)
    assert np.allclose(mean, ref.mean(1).tolist(), atol=1e-12)
    assert np.allclose(std, ref.std(1, unbiased=False).tolist(), atol=1e-12)
