"""A tiny learnable image-folder tree written on the spot: for the test suite, the device preflight and smoke
runs that must not depend on a real data set. Each class has its own colour plus noise, saved as lossless PNG."""

from __future__ import annotations

from pathlib import Path

CLASSES = ("apple", "boat", "cloud")


def write_image_tree(root: Path, train_per_class: int = 16, test_per_class: int = 4, size: int = 16,
                     classes=CLASSES, seed: int = 0) -> Path:
    """train/<class>/NNNN.png and test/<class>/NNNN.png under `root`; returns `root`."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for k, name in enumerate(classes):
            folder = Path(root) / split / name
            folder.mkdir(parents=True, exist_ok=True)
            base = np.zeros(3)
            base[k % 3] = 200
            for i in range(count):
                pixels = np.clip(base + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return Path(root)
