"""CIFAR-100 (--dataset cifar100, --coarse-labels) on tiny files in the official python format, written here."""

from __future__ import annotations

import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import distill.data.load as load_mod
from distill.data import load_dataset
from distill.data.cache import cache_key
from distill.data.cifar import OFFICIAL
from distill.errors import UserError
from distill.front.names import DATASETS

FINE = [f"fine{i:02d}" for i in range(100)]  # the official meta's fine_label_names: 100 names
COARSE = [f"super{i:02d}" for i in range(20)]  # coarse_label_names: 20 superclasses
TRAIN_PER_CLASS, TEST_PER_CLASS = 3, 1


def superclass(fine: np.ndarray) -> np.ndarray:
    """Not fine // 5: a loader that took the wrong list of labels would not match by chance."""
    return (fine * 7) % 20


def split(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, 3072) rows (R, G, B planes, row-major) and fine labels, classes interleaved as in the originals."""
    rng = np.random.default_rng(seed)
    fine = np.tile(np.arange(100), per_class)
    return rng.integers(0, 256, (len(fine), 3072), dtype=np.uint8), fine


TRAIN, TEST = split(TRAIN_PER_CLASS, 1), split(TEST_PER_CLASS, 2)


def write_cifar100(root: Path) -> Path:
    """cifar-100-python/: train with bytes keys and protocol 2 (as Python 2's cPickle wrote the originals, read back
    as bytes), test and meta with str keys (how they read with encoding='latin1')."""
    root.mkdir(parents=True)
    for name, (data, fine), key in (("train", TRAIN, lambda k: k.encode()), ("test", TEST, str)):
        batch = {key("filenames"): [f"{i}.png".encode() for i in range(len(fine))], key("batch_label"): name.encode(),
                 key("fine_labels"): fine.tolist(), key("coarse_labels"): superclass(fine).tolist(), key("data"): data}
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {"fine_label_names": FINE, "coarse_label_names": COARSE}
    (root / "meta").write_bytes(pickle.dumps(meta))
    return root


def write_cifar10(root: Path) -> Path:
    """A complete, tiny cifar-10-batches-py/ (3 classes)."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for name in OFFICIAL["cifar10"].train + (OFFICIAL["cifar10"].test,):
        batch = {b"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8), b"labels": [0, 1, 2]}
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))
    (root / "batches.meta").write_bytes(pickle.dumps({"label_names": ["cat", "dog", "frog"]}))
    return root


def write_tar(src: Path, archive: Path, arcname: str) -> Path:
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname=arcname)
    return archive


def official_archive(tmp_path: Path) -> Path:
    return write_tar(write_cifar100(tmp_path / "src"), tmp_path / "dl" / "cifar-100-python.tar.gz", "cifar-100-python")


LAYOUTS = {
    "extracted folder": lambda t: write_cifar100(t / "cifar-100-python"),
    "folder holding the extracted folder": lambda t: write_cifar100(t / "data" / "cifar-100-python").parent,
    "archive": official_archive,
    "folder holding the archive": lambda t: official_archive(t).parent,
}


def user_error(match: str, fn, *args, **kwargs) -> str:
    with pytest.raises(UserError, match=match) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def assert_cifar100(ds, coarse: bool) -> None:
    labels = superclass if coarse else (lambda fine: fine)
    assert ds.classes == (COARSE if coarse else FINE)
    for x, y, (data, fine) in ((ds.train_x, ds.train_y, TRAIN), (ds.test_x, ds.test_y, TEST)):
        assert torch.equal(x, torch.from_numpy(data.reshape(-1, 3, 32, 32)))
        assert torch.equal(y, torch.from_numpy(labels(fine)).long())


@pytest.fixture(autouse=True)
def _no_default_data(tmp_path, monkeypatch):
    monkeypatch.delenv("DISTILL_DATA", raising=False)


def test_every_dataset_name_has_its_official_files():
    assert tuple(OFFICIAL) == DATASETS


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_fine_and_coarse_labels_with_their_class_names_from_every_layout(tmp_path, layout):
    data, cache = LAYOUTS[layout](tmp_path), tmp_path / "cache"
    fine = load_dataset(data, cache_dir=cache, dataset="cifar100", quiet=True)
    assert_cifar100(fine, coarse=False)
    assert "CIFAR-100 python batches" in fine.source
    coarse = load_dataset(data, cache_dir=cache, dataset="cifar100", coarse_labels=True, quiet=True)
    assert_cifar100(coarse, coarse=True)
    assert coarse.source.endswith("(CIFAR-100 python batches, superclasses)")


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))  # unpickling this would create the file


@pytest.mark.parametrize("name", ["train", "test", "meta"])
def test_a_pickle_that_would_run_code_is_refused_without_running(tmp_path, name):
    root, marker = write_cifar100(tmp_path / "cifar-100-python"), tmp_path / "pwned"
    (root / name).write_bytes(pickle.dumps({"data": _Evil(marker), "fine_label_names": _Evil(marker)}))
    user_error(rf"refusing to unpickle .*{name}: it references (builtins|io)\.open, which a CIFAR-100 batch never "
               r"needs \(the file may be malicious\); re-extract the official cifar-100-python\.tar\.gz$",
               load_dataset, root, cache_dir=tmp_path / "cache", dataset="cifar100")
    assert not marker.exists()


def test_damaged_files_are_one_line_naming_the_file_and_the_fix(tmp_path):
    root, cache = write_cifar100(tmp_path / "cifar-100-python"), tmp_path / "cache"
    train = pickle.loads((root / "train").read_bytes())
    del train[b"coarse_labels"]
    (root / "train").write_bytes(pickle.dumps(train))
    assert_cifar100(load_dataset(root, cache_dir=cache, dataset="cifar100"), coarse=False)  # fine labels need none
    user_error(r"CIFAR-100 batch .*train has no 'coarse_labels' entry; re-extract the official cifar-100-python",
               load_dataset, root, cache_dir=cache, dataset="cifar100", coarse_labels=True)
    (root / "meta").unlink()
    user_error(r"CIFAR-100 folder .*cifar-100-python lacks meta", load_dataset, root, cache_dir=cache,
               dataset="cifar100")


@pytest.mark.parametrize("make, dataset, found, fix", [
    (lambda t: write_cifar10(t / "cifar-10-batches-py"), "cifar100", "CIFAR-10", "--dataset cifar10"),
    (lambda t: write_tar(write_cifar10(t / "c"), t / "cifar-10-python.tar.gz", "cifar-10-batches-py"),
     "cifar100", "CIFAR-10", "--dataset cifar10"),
    (lambda t: write_tar(write_cifar10(t / "c"), t / "renamed.tar.gz", "cifar-10-batches-py"),
     "cifar100", "CIFAR-10", "--dataset cifar10"),
    (lambda t: write_cifar100(t / "cifar-100-python"), "cifar10", "CIFAR-100", "--dataset cifar100"),
    (official_archive, "cifar10", "CIFAR-100", "--dataset cifar100"),
    (lambda t: official_archive(t).parent, "cifar10", "CIFAR-100", "--dataset cifar100"),
])
def test_one_set_is_never_read_as_the_other(tmp_path, make, dataset, found, fix):
    data, cache = make(tmp_path), tmp_path / "cache"
    want = OFFICIAL[dataset]
    msg = user_error(rf"\(--data\) holds {found} python batches, not {want.title} \(--dataset {dataset}\): pass {fix} "
                     rf"to use them, or point --data at {want.title} \({want.archive} or {want.folder}/\)$",
                     load_dataset, data, cache_dir=cache, dataset=dataset)
    assert not list(cache.glob("tensors/*.pt")), msg  # nothing decoded and cached under the wrong labels
    if data.name in (o.archive for o in OFFICIAL.values()):  # an official archive is refused by its name
        assert not (cache / "extracted").exists()


def test_a_folder_holding_both_sets_gives_each_its_own(tmp_path):
    both = tmp_path / "both"
    write_cifar10(both / "cifar-10-batches-py")
    write_tar(write_cifar100(tmp_path / "src"), both / "cifar-100-python.tar.gz", "cifar-100-python")
    assert load_dataset(both, cache_dir=tmp_path / "cache", quiet=True).classes == ["cat", "dog", "frog"]
    assert_cifar100(load_dataset(both, cache_dir=tmp_path / "cache", dataset="cifar100", quiet=True), coarse=False)


def fake_downloads(monkeypatch) -> list[tuple[str, Path]]:
    """torchvision's CIFAR10 and CIFAR100(download=True) replaced by writing tiny files; returns what was asked."""
    import torchvision.datasets

    calls: list[tuple[str, Path]] = []

    for name, write in (("CIFAR10", write_cifar10), ("CIFAR100", write_cifar100)):
        def download(root, name=name, write=write, **_kwargs):
            calls.append((name, Path(root)))
            write(Path(root) / OFFICIAL[name.lower()].folder)

        monkeypatch.setattr(torchvision.datasets, name, download)
    return calls


def test_default_downloads_each_set_once_into_its_own_folder_beside_the_other(tmp_path, monkeypatch):
    calls, cache = fake_downloads(monkeypatch), tmp_path / "cache"
    ten = load_dataset(None, cache_dir=cache, quiet=True)
    hundred = load_dataset(None, cache_dir=cache, dataset="cifar100", quiet=True)
    assert calls == [("CIFAR10", cache / "data"), ("CIFAR100", cache / "data")]  # the CIFAR-10 download is no obstacle
    assert ten.classes == ["cat", "dog", "frog"] and ten.path == str((cache / "data" / "cifar-10-batches-py").resolve())
    assert_cifar100(hundred, coarse=False)
    assert hundred.path == str((cache / "data" / "cifar-100-python").resolve())
    assert_cifar100(load_dataset(None, cache_dir=cache, dataset="cifar100", coarse_labels=True), coarse=True)
    assert load_dataset(None, cache_dir=cache).classes == ["cat", "dog", "frog"]
    assert len(calls) == 2  # offline from now on: each set found in its own folder


def test_default_offline_and_distill_data_naming_the_other_set(tmp_path, monkeypatch):
    import torchvision.datasets

    def fail(**_kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", fail)
    user_error(r"^CIFAR-100 is not downloaded and the download failed \(OSError: <urlopen error .*\): pass --data "
               r"PATH or set \$DISTILL_DATA to any of: train/<class>/ and test/<class>/ image folders, CIFAR-100 "
               r"python batches \(cifar-100-python/ or cifar-100-python\.tar\.gz\), or a \.tar/\.tar\.gz/\.tgz of "
               r"either$", load_dataset, None, cache_dir=tmp_path / "cache", dataset="cifar100")
    monkeypatch.setenv("DISTILL_DATA", str(write_cifar10(tmp_path / "batches")))  # CIFAR-10's batches themselves
    user_error(r"batches \(\$DISTILL_DATA\) holds CIFAR-10 python batches, not CIFAR-100 \(--dataset cifar100\): "
               r"pass --dataset cifar10 to use them, or point \$DISTILL_DATA at CIFAR-100 ",
               load_dataset, None, cache_dir=tmp_path / "cache", dataset="cifar100")


def test_the_cache_keeps_the_sets_and_the_label_granularities_apart(tmp_path, monkeypatch):
    archive, cache = official_archive(tmp_path), tmp_path / "cache"
    fine = load_dataset(archive, cache_dir=cache, dataset="cifar100", quiet=True)
    coarse = load_dataset(archive, cache_dir=cache, dataset="cifar100", coarse_labels=True, quiet=True)
    assert len(list((cache / "tensors").glob("*.pt"))) == 2
    with monkeypatch.context() as m:  # now both come from the cache: no unpacking, no unpickling
        m.setattr(load_mod, "extract_archive", lambda *_: pytest.fail("unpacked again"))
        m.setattr(load_mod, "read_cifar", lambda *_: pytest.fail("read again"))
        assert load_dataset(archive, cache_dir=cache, dataset="cifar100", coarse_labels=True).classes == COARSE
        assert load_dataset(archive, cache_dir=cache, dataset="cifar100").classes == FINE
    assert torch.equal(fine.train_x, coarse.train_x) and not torch.equal(fine.train_y, coarse.train_y)
    files = [("x", 1, 2)]
    keys = {cache_key(archive, 32, files, labels) for labels in ("", "cifar100", "cifar100-coarse")}
    assert len(keys) == 3


def test_coarse_labels_need_cifar100_batches(tmp_path):
    tree = tmp_path / "tree"
    for split_name in ("train", "test"):
        for name in ("a", "b"):
            (tree / split_name / name).mkdir(parents=True)
            (tree / split_name / name / "0.png").write_bytes(b"")  # refused before anything is decoded
    user_error(r"--coarse-labels takes CIFAR-100's superclasses from its python batches, but .*tree \(--data\) holds "
               r"image folders, whose classes are their folder names: drop --coarse-labels$",
               load_dataset, tree, cache_dir=tmp_path / "cache", dataset="cifar100", coarse_labels=True)
    user_error(r"CIFAR-10 has no superclasses", load_dataset, tree, cache_dir=tmp_path / "cache", coarse_labels=True)
    user_error(r"unknown --dataset 'imagenet'", load_dataset, tree, cache_dir=tmp_path / "cache", dataset="imagenet")


# --- the command line, the pipeline and a run ----------------------------------------------------

def assert_one_line(result, *needles: str) -> None:
    assert result.code == 2 and "Traceback" not in result.err, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_the_command_line_refuses_in_one_line(cli, tmp_path):
    missing = tmp_path / "never-read"
    assert_one_line(cli("teach", "--coarse-labels", "--data", missing), "--coarse-labels needs --dataset cifar100 "
                    "(cifar10 has no superclasses): add --dataset cifar100, or drop --coarse-labels")
    assert_one_line(cli("student", "--no-teacher", "--dataset", "cifar-100", "--data", missing),
                    "unknown --dataset 'cifar-100': choose one of cifar10, cifar100")
    toml = tmp_path / "p.toml"
    toml.write_text('[common]\ncoarse_labels = true\n[teacher]\narch = "resnet8"\n')
    assert_one_line(cli("pipeline", "--config", toml, "--out", tmp_path / "p"),
                    "--coarse-labels needs --dataset cifar100")
    cifar10 = write_cifar10(tmp_path / "cifar-10-batches-py")  # found only once loaded: still one line, nothing written
    assert_one_line(cli("teach", "--data", cifar10, "--dataset", "cifar100", "--out", tmp_path / "run", "--device", "cpu"),
                    "holds CIFAR-10 python batches, not CIFAR-100 (--dataset cifar100): pass --dataset cifar10")
    assert not (tmp_path / "run").exists()


def test_the_pipeline_takes_the_dataset_in_common(tmp_path):
    from distill.experiments.plan import load_pipeline

    toml = tmp_path / "p.toml"
    toml.write_text('[common]\ndataset = "cifar100"\ncoarse_labels = true\n[teacher]\narch = "resnet8"\n'
                    '[[students]]\narch = "resnet8"\nmethod = "kd"\n')
    pipe = load_pipeline(toml, {}, out=str(tmp_path / "out"))
    configs = [stage.config(pipe.out) for stage in pipe.stages]
    assert [(c.dataset, c.coarse_labels) for c in configs] == [("cifar100", True)] * 3


def test_default_run_folders_are_per_dataset():
    from distill.engine.folder import default_out
    from distill.front import config as C

    assert default_out(C.TeachConfig()) == Path("runs/cifar10/teacher-resnet50")
    assert default_out(C.TeachConfig(dataset="cifar100", coarse_labels=True)) == Path(
        "runs/cifar100-coarse/teacher-resnet50")


def test_a_run_on_cifar100_has_100_outputs_records_the_set_and_resumes_only_on_it(cli, tmp_path):
    archive, out = official_archive(tmp_path), tmp_path / "run"
    args = ["student", "--no-teacher", "--arch", "resnet8", "--data", archive, "--out", out, "--image-size", "16",
            "--val-size", "100", "--batch-size", "50", "--epochs", "1", "--device", "cpu", "--quiet",
            "--dataset", "cifar100"]
    result = cli(*args)
    assert result.code == 0, result.err
    best = torch.load(out / "best.pt", map_location="cpu", weights_only=True)
    heads = [t for k, t in best["model"].items() if k.endswith("weight") and t.ndim == 2]
    assert [tuple(t.shape[:1]) for t in heads] == [(100,)] and best["classes"] == FINE
    assert best["config"]["dataset"] == "cifar100" and best["config"]["coarse_labels"] is False
    assert json.loads((out / "config.json").read_text())["dataset"] == "cifar100"
    evaluated = cli("evaluate", out / "best.pt", "--json", "--limit-test", "100")  # reads it as what it was trained on
    assert evaluated.code == 0 and len(json.loads(evaluated.out)["per_class"]) == 100, evaluated.err
    for changed, says in ((["--coarse-labels"], "coarse_labels: False -> True"),
                          (["--dataset", "cifar10"], "dataset: 'cifar100' -> 'cifar10'")):
        assert_one_line(cli(*args, "--epochs", "2", "--resume", *changed), f"cannot resume {out} with changed "
                        f"settings ({says}): restore them")
