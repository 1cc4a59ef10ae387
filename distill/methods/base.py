"""What a distillation method is: its options, its loss, and the modules it trains (connectors, heads).

A method is one file in distill/methods/ with one `Method` subclass registered by `@register`. It
declares its options in a nested `Options` dataclass (default, help and valid range per field, next to
the loss that uses them); the command line, config files, the pipeline's baselines, checkpoints and
TensorBoard read them from there. It sees the student's and the teacher's `Outputs` (logits, and the
stage features when it sets `needs_features`), may own trainable modules (`setup`), and returns its loss
and named parts. The training loop never changes for a new method.

Every loss is computed in float32 with autocast off, so bf16 logits do not degrade the softmax/KL.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

from distill.lazy import F, nn, torch

Parts = dict  # name -> detached scalar tensor, for logging


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
    """A distillation loss: `method(student, teacher, targets, progress) -> (total, parts)`.

    `student`/`teacher` are `Outputs`; `targets` are (B, C) probabilities; `progress` is the share of the
    run done, in [0, 1] (a weight ramped over a share of the run scales with the schedule). `parts` holds
    detached components for logging.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # one line for --help and the README's table
    Options: ClassVar[type] = NoOptions
    needs_teacher: ClassVar[bool] = True
    needs_features: ClassVar[bool] = False

    def __init__(self, options: Any = None, label_smoothing: float = 0.0):
        self.options = options if options is not None else self.Options()
        self.label_smoothing = label_smoothing
        self.modules = None  # trainable modules of the method's own, from setup()

    def option_values(self) -> dict:
        """The options this method runs with, its defaults included (for metrics, checkpoints, HPARAMS)."""
        return dataclasses.asdict(self.options)

    def setup(self, student: Outputs, teacher: Outputs):
        """Build the method's trainable modules from one batch's outputs (their feature shapes); None if it
        has none. Their parameters train with the student's, and checkpoints save and restore them."""
        return None

    def __call__(self, student: Outputs, teacher: Outputs | None, targets, progress: float):
        if self.needs_teacher and teacher is None:
            raise ValueError(f"{type(self).__name__} needs the teacher's outputs")
        with fp32_region(student.logits):
            total, parts = self.loss(as_fp32(student), None if teacher is None else as_fp32(teacher, detach=True),
                                     fp32(targets), progress)
        return total, {k: v.detach() for k, v in parts.items()}

    def ce(self, logits, targets):
        return soft_cross_entropy(logits, targets, self.label_smoothing)

    def loss(self, student: Outputs, teacher: Outputs | None, targets, progress: float):
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


def parameters_of(modules) -> list:
    return [] if modules is None else list(modules.parameters())


__all__ = ["Method", "NoOptions", "Outputs", "F", "nn", "torch", "kl", "soft_cross_entropy", "resize_to",
           "matching_stage", "parameters_of"]
