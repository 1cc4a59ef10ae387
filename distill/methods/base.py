"""What a distillation method is: its options, its loss, and the modules it trains (connectors, heads).

A method is one file in distill/methods/ with one `Method` subclass registered by `@register` (the folder
is scanned: no import line to add). It declares its options in a nested `Options` dataclass (default, help
and valid range per field, next to the loss that uses them); the command line, config files, the
pipeline's baselines, checkpoints and TensorBoard read them from there. It sees the student's and the
teacher's `Outputs` (logits, and the stage features when it sets `needs_features`) and the `Batch` (targets,
progress, the images' positions in the training set, a random stream of the step), may own modules built
once from the shapes and the `TrainingSet` (`setup`: trainable heads, memory buffers), and returns its loss
and named parts. It never sees a network. The training loop never changes for a new method.

Every loss is computed in float32 with autocast off, so bf16 logits do not degrade the softmax/KL.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

from distill.lazy import F, nn, torch

class Batch(NamedTuple):
    """What a method knows of a step besides the models' outputs."""

    targets: Any  # (B, C) probabilities: one-hot, or MixUp/CutMix-mixed
    progress: float  # the share of the run done, in [0, 1]: a weight ramped over a share scales with the run
    indices: Any = None  # (B,) positions of these images in the training set (this process's shard of the batch)
    generator: Any = None  # a random stream of this step for methods that draw (`draws`): the same in any group


class TrainingSet(NamedTuple):
    """What `setup` knows of the data: for methods that keep one entry per training image (memory banks)."""

    size: int  # images in the training set (positions in `Batch.indices` are below it)
    labels: Any  # (size,) int64 class of each image, on `device`
    device: Any
    gather: Any = None  # tensor -> the same tensor of every process, concatenated (one process: itself)
    own_rows: Any = None  # a tensor over the gathered global batch -> this process's rows (one process: itself)


class Outputs(NamedTuple):
    """A model's forward pass as methods see it: logits (B, C) and, when asked for, its features
    [stem output, stage 1 .. stage k outputs, pooled pre-logit feature] (models.forward_with_features)."""

    logits: Any
    features: list | None = None

    @property
    def stages(self) -> list:
        return self.features[1:-1]


def fp32(x):
    """Upcast bf16/fp16 to float32; float64 stays as it is."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def fp32_region(x):
    """An autocast-off context for x's device: autocast would cast our float32 math back to bf16."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def soft_cross_entropy(logits, targets, label_smoothing: float = 0.0):
    """Cross-entropy against (B, C) probability targets (one-hot or MixUp/CutMix-mixed).

    Smoothing follows F.cross_entropy: t * (1 - eps) + eps / C. Mean over the batch, in float32.
    """
    with fp32_region(logits):
        targets = fp32(targets)
        if label_smoothing > 0:
            targets = targets * (1 - label_smoothing) + label_smoothing / targets.shape[1]
        return -(targets * F.log_softmax(fp32(logits), dim=1)).sum(dim=1).mean()


def kl(log_p_teacher, log_p_student):
    """KL(teacher || student) from log-probabilities: sum over classes, mean over the batch
    (what F.kl_div calls 'batchmean'; 'mean' would also divide by the number of classes)."""
    return (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=1).mean()


@dataclasses.dataclass
class NoOptions:
    """A method without options of its own."""


class Method:
    """A distillation loss: `method(student, teacher, batch) -> (total, parts)`.

    `student`/`teacher` are `Outputs`, `batch` a `Batch`. `parts` holds detached components for logging.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # one line for --help and the README's table
    Options: ClassVar[type] = NoOptions
    needs_teacher: ClassVar[bool] = True
    needs_features: ClassVar[bool] = False
    draws: ClassVar[bool] = False  # its loss draws random numbers (from `Batch.generator`)

    def __init__(self, options: Any = None, label_smoothing: float = 0.0):
        self.options = options if options is not None else self.Options()
        self.label_smoothing = label_smoothing
        self.modules = None  # trainable modules of the method's own, from setup()

    def option_values(self) -> dict:
        """The options this method runs with, its defaults included (for metrics, checkpoints, HPARAMS)."""
        return dataclasses.asdict(self.options)

    def setup(self, student: Outputs, teacher: Outputs | None, data: TrainingSet):
        """Build the method's modules from one batch's outputs (their feature shapes) and the training set;
        None if it has none. Called for every method before training; `teacher` is None for a method that needs
        no teacher. Their parameters train with the student's; checkpoints save and restore their whole state
        (buffers too)."""
        return None

    def __call__(self, student: Outputs, teacher: Outputs | None, batch: Batch):
        if self.needs_teacher and teacher is None:
            raise ValueError(f"{type(self).__name__} needs the teacher's outputs")
        with fp32_region(student.logits):
            total, parts = self.loss(as_fp32(student), None if teacher is None else as_fp32(teacher, detach=True),
                                     batch._replace(targets=fp32(batch.targets)))
        return total, {k: v.detach() for k, v in parts.items()}

    def ce(self, logits, targets):
        return soft_cross_entropy(logits, targets, self.label_smoothing)

    def loss(self, student: Outputs, teacher: Outputs | None, batch: Batch):
        """Float32 outputs in, (total loss, parts) out."""
        raise NotImplementedError


def as_fp32(out: Outputs, detach: bool = False) -> Outputs:
    cast = (lambda t: fp32(t.detach())) if detach else fp32
    return Outputs(cast(out.logits), None if out.features is None else [cast(f) for f in out.features])


def resize_to(x, size: tuple[int, int]):
    """A feature map brought to another spatial size: average-pooled down, bilinearly up."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.shape[-2] >= size[0]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def matching_stage(shape, teacher_stages: list) -> int:
    """The teacher stage whose spatial size is the student stage's (else the nearest): stages of one
    resolution see the image at the same scale, whatever the two networks' depths."""
    sizes = [s.shape[-1] for s in teacher_stages]
    return min(range(len(sizes)), key=lambda i: (abs(sizes[i] - shape[-1]), i))


def temperature_option(default: float = 4.0):
    """The softmax temperature T of a method's distillation terms: one meaning wherever a method takes it."""
    from distill.front.options import POSITIVE, opt

    return opt(default, "Softmax temperature T of the distillation terms (T = 4: the usual CIFAR value).",
               within=POSITIVE, symbol="T")


__all__ = ["Batch", "Method", "NoOptions", "Outputs", "TrainingSet", "F", "nn", "torch", "kl", "soft_cross_entropy",
           "resize_to", "matching_stage", "temperature_option"]
