"""Official CIFAR-10 and CIFAR-100 "python version" files, unpickled without ever running code."""

from __future__ import annotations

import importlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.errors import UserError

from .dataset import one_line, readable
from .files import require_regular


@dataclass(frozen=True)
class Official:
    """One official data set: the files of its python version, the keys inside them, and its torchvision class."""

    name: str  # as --dataset names it
    title: str
    folder: str  # what its archive unpacks to
    archive: str
    train: tuple[str, ...]
    test: str
    meta: str
    labels: tuple[str, str]  # (labels key in train/test, class-names key in meta)
    coarse: tuple[str, str] | None  # the same for superclasses, where the set has them
    torchvision: str  # the class in torchvision.datasets that downloads it

    @property
    def files(self) -> list[str]:
        return [*self.train, self.test, self.meta]

    @property
    def fix(self) -> str:
        return f"re-extract the official {self.archive}"

    def keys(self, coarse: bool) -> tuple[str, str]:
        """(labels key, class-names key) of the fine labels or, with coarse, of the superclasses."""
        if not coarse:
            return self.labels
        if self.coarse is None:
            raise UserError(f"--coarse-labels needs --dataset cifar100: {self.title} has no superclasses; "
                            "drop --coarse-labels")
        return self.coarse


# Keyed by the --dataset names (distill/front/names.py DATASETS; tests/data/test_cifar100.py holds them equal).
OFFICIAL = {o.name: o for o in (
    Official("cifar10", "CIFAR-10", "cifar-10-batches-py", "cifar-10-python.tar.gz",
             tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta",
             ("labels", "label_names"), None, "CIFAR10"),
    Official("cifar100", "CIFAR-100", "cifar-100-python", "cifar-100-python.tar.gz", ("train",), "test", "meta",
             ("fine_labels", "fine_label_names"), ("coarse_labels", "coarse_label_names"), "CIFAR100"),
)}

# Everything a pickled numpy array (any protocol, numpy 1 or 2) needs, and nothing else:
# a pickle naming any other global could run code, so it is refused before it resolves.
_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # protocol <= 2 pickles written by Python 3 store bytes this way
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, path: Path, official: Official) -> None:
        super().__init__(file, encoding="latin1")  # latin1: the official files come from Python 2
        self.path, self.official = path, official

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise UserError(
                f"refusing to unpickle {self.path}: it references {module}.{name}, which a {self.official.title} "
                f"batch never needs (the file may be malicious); {self.official.fix}"
            )
        if module.startswith("numpy.core."):
            # numpy 2 renamed numpy.core to numpy._core; prefer the new name to skip its warning.
            try:
                return getattr(importlib.import_module("numpy._core." + module[11:]), name)
            except (ImportError, AttributeError):
                pass
        return getattr(importlib.import_module(module), name)


def _unpickle(path: Path, official: Official) -> dict[str, Any]:
    what = f"{official.title} batch {path}"
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, path, official).load()
    except UserError:
        raise
    except Exception as err:  # truncated or not a pickle at all
        raise UserError(f"cannot read {what} ({one_line(err)}); {official.fix}") from None
    if not isinstance(obj, dict):
        raise UserError(f"{what} is a {type(obj).__name__}, not a dict; {official.fix}")
    # Keys are str or bytes, as the pickle's Python wrote them: both read as str.
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _field(obj: dict[str, Any], key: str, path: Path, official: Official) -> Any:
    if key not in obj:
        raise UserError(f"{official.title} batch {path} has no '{key}' entry; {official.fix}")
    return obj[key]


def _read_batch(path: Path, official: Official, key: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    obj = _unpickle(path, official)
    data, labels = _field(obj, "data", path, official), _field(obj, key, path, official)
    what, fix = f"{official.title} batch {path}", official.fix
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3 * 32 * 32):
        shape = getattr(data, "shape", type(data).__name__)
        raise UserError(f"{what} has data {shape}, expected uint8 (N, 3072); {fix}")
    try:
        y = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise UserError(f"{what} has labels that are not integers; {fix}") from None
    if len(y) != len(data) or (len(y) and (y.min() < 0 or y.max() >= num_classes)):
        raise UserError(f"{what} has {len(y)} labels for {len(data)} images "
                        f"or labels outside 0..{num_classes - 1}; {fix}")
    # Rows are three 32x32 planes (R, G, B), row-major: exactly (N, 3, 32, 32).
    x = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32))
    return x, torch.from_numpy(y)


def _read_classes(path: Path, official: Official, key: str) -> list[str]:
    names = _field(_unpickle(path, official), key, path, official)
    if not isinstance(names, (list, tuple)) or not names:
        raise UserError(f"{official.title} meta file {path} has no list of {key}; {official.fix}")
    return [readable(os.fsdecode(n)) if isinstance(n, bytes) else str(n) for n in names]  # UTF-8, or \xNN


def holds_batches(root: Path, official: Official) -> bool:
    """Whether root holds any of the set's image files (its meta alone could be anything's)."""
    return any((root / name).is_file() for name in (*official.train, official.test))


def is_complete(root: Path, official: Official) -> bool:
    return all((root / name).is_file() for name in official.files)


def cifar_files(root: Path, official: Official) -> list[Path]:
    """Every file of the python version, refusing a folder that lacks any."""
    for name in official.files:
        if not (root / name).exists():
            raise UserError(f"{official.title} folder {root} lacks {name}; {official.fix} into it")
        require_regular(root / name, (root / name).stat())
    return [root / name for name in official.files]


def read_cifar(root: Path, official: Official, coarse: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """train_x, train_y, test_x, test_y (32x32 uint8 / int64) and class names (the superclasses with coarse)."""
    labels_key, names_key = official.keys(coarse)
    *train_files, test_file, meta = cifar_files(root, official)
    classes = _read_classes(meta, official, names_key)
    train = [_read_batch(p, official, labels_key, len(classes)) for p in train_files]
    test_x, test_y = _read_batch(test_file, official, labels_key, len(classes))
    train_x = torch.cat([x for x, _ in train])
    train_y = torch.cat([y for _, y in train])
    return train_x, train_y, test_x, test_y, classes
