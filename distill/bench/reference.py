"""What `distill bench --reference` times beside our step, "the usual recipe": a DataLoader over PIL images with
CPU transforms, fp32, plain SGD and torch's default backend flags; the same model, batch and device."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn

from distill.bench.options import IMAGE_SIZE, NUM_CLASSES, BenchOptions
from distill.bench.timing import median_step_seconds, result_row, synthetic_images

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class PILImages(torch.utils.data.Dataset):
    """An in-memory list of PIL images with labels, transformed per item like torchvision's CIFAR10."""

    def __init__(self, images: list, labels: list[int], transform: Callable):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), self.labels[i]


def reference_images(opts: BenchOptions, count: int) -> tuple[list, list[int]]:
    """`count` PIL images: synthetic, or the first training images of --data (repeated if fewer)."""
    from PIL import Image

    if opts.data:
        from distill.data import load_dataset

        ds = load_dataset(opts.data, IMAGE_SIZE)
        reps = -(-count // len(ds.train_x))
        x, y = ds.train_x.repeat(reps, 1, 1, 1)[:count], ds.train_y.repeat(reps)[:count]
    else:
        x, y = synthetic_images(count)
    return [Image.fromarray(a) for a in x.permute(0, 2, 3, 1).numpy()], y.tolist()


def reference_loader(opts: BenchOptions) -> torch.utils.data.DataLoader:
    import torchvision.transforms as T

    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(CIFAR_MEAN, CIFAR_STD)])
    images, labels = reference_images(opts, (opts.warmup + opts.steps) * opts.batch_size)
    return torch.utils.data.DataLoader(PILImages(images, labels, transform), batch_size=opts.batch_size,
                                       shuffle=True, drop_last=True, num_workers=opts.num_workers,
                                       pin_memory=opts.device.type == "cuda")


@contextlib.contextmanager
def torch_default_backends() -> Iterator[None]:
    """The backend flags a fresh process has: our runs turn on cudnn.benchmark and TF32 (process-wide),
    the usual recipe does not."""
    saved = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32 = False, False
    torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
         torch.backends.cudnn.allow_tf32) = saved


def bench_reference(opts: BenchOptions, arch: str) -> dict:
    """The usual recipe: DataLoader + CPU transforms, fp32, contiguous, plain SGD + CrossEntropyLoss."""
    from distill.models import build_model, make_spec

    torch.manual_seed(0)
    with torch_default_backends():
        model = build_model(make_spec(arch, NUM_CLASSES, IMAGE_SIZE)).to(opts.device).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        criterion = nn.CrossEntropyLoss()
        batches = iter(reference_loader(opts))

        def step(_: int) -> None:
            x, y = next(batches)
            x, y = x.to(opts.device, non_blocking=True), y.to(opts.device, non_blocking=True)
            loss = criterion(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        timing = median_step_seconds(step, opts.device, opts.warmup, opts.steps)
        batches = None  # drops the loader now: its worker processes stop
    return result_row(opts, arch, "reference_train", timing, model, precision="fp32", channels_last=False,
                      compile=False, compile_mode=None, num_workers=opts.num_workers, data=opts.data or "synthetic")
