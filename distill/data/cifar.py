"""Official CIFAR-10 "python version" batches, unpickled without ever running code."""

from __future__ import annotations

import importlib
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.errors import UserError

from .dataset import one_line, readable
from .files import require_regular

TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR_FILES = [*TRAIN_BATCHES, "test_batch", "batches.meta"]
FIX = "re-extract the official cifar-10-python.tar.gz"

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
    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file, encoding="latin1")  # latin1: the official files come from Python 2
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise UserError(
                f"refusing to unpickle {self.path}: it references {module}.{name}, which a CIFAR-10 "
                f"batch never needs (the file may be malicious); {FIX}"
            )
        if module.startswith("numpy.core."):
            # numpy 2 renamed numpy.core to numpy._core; prefer the new name to skip its warning.
            try:
                return getattr(importlib.import_module("numpy._core." + module[11:]), name)
            except (ImportError, AttributeError):
                pass
        return getattr(importlib.import_module(module), name)


def _unpickle(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, path).load()
    except UserError:
        raise
    except Exception as err:  # truncated or not a pickle at all
        raise UserError(f"cannot read CIFAR-10 batch {path} ({one_line(err)}); {FIX}") from None
    if not isinstance(obj, dict):
        raise UserError(f"CIFAR-10 batch {path} is a {type(obj).__name__}, not a dict; {FIX}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _field(obj: dict[str, Any], key: str, path: Path) -> Any:
    if key not in obj:
        raise UserError(f"CIFAR-10 batch {path} has no '{key}' entry; {FIX}")
    return obj[key]


def _read_batch(path: Path, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    obj = _unpickle(path)
    data, labels = _field(obj, "data", path), _field(obj, "labels", path)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3 * 32 * 32):
        shape = getattr(data, "shape", type(data).__name__)
        raise UserError(f"CIFAR-10 batch {path} has data {shape}, expected uint8 (N, 3072); {FIX}")
    try:
        y = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise UserError(f"CIFAR-10 batch {path} has labels that are not integers; {FIX}") from None
    if len(y) != len(data) or (len(y) and (y.min() < 0 or y.max() >= num_classes)):
        raise UserError(f"CIFAR-10 batch {path} has {len(y)} labels for {len(data)} images "
                        f"or labels outside 0..{num_classes - 1}; {FIX}")
    # Rows are three 32x32 planes (R, G, B), row-major: exactly (N, 3, 32, 32).
    x = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32))
    return x, torch.from_numpy(y)


def _read_classes(path: Path) -> list[str]:
    names = _field(_unpickle(path), "label_names", path)
    if not isinstance(names, (list, tuple)) or not names:
        raise UserError(f"CIFAR-10 meta file {path} has no list of label_names; {FIX}")
    return [readable(os.fsdecode(n)) if isinstance(n, bytes) else str(n) for n in names]  # UTF-8, or \xNN


def cifar_files(root: Path) -> list[Path]:
    """The seven files of the python version, refusing a folder that lacks any."""
    for name in CIFAR_FILES:
        if not (root / name).exists():
            raise UserError(f"CIFAR-10 folder {root} lacks {name}; {FIX} into it")
        require_regular(root / name, (root / name).stat())
    return [root / name for name in CIFAR_FILES]


def read_cifar(root: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """train_x, train_y, test_x, test_y (32x32 uint8 / int64) and class names."""
    files = cifar_files(root)
    classes = _read_classes(files[-1])
    train = [_read_batch(p, len(classes)) for p in files[:5]]
    test_x, test_y = _read_batch(files[5], len(classes))
    train_x = torch.cat([x for x, _ in train])
    train_y = torch.cat([y for _, y in train])
    return train_x, train_y, test_x, test_y, classes
