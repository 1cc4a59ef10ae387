"""Typed run configuration: dataclass defaults < config file (TOML) < command-line options.

Each field's `help` is both its why-comment and its `--help` text: the CLI is generated from these
fields, so an option cannot exist without a description.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from distill.errors import UserError


def opt(default, help: str, choices: tuple[str, ...] | None = None):
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class TrainConfig:
    """Everything a training run needs; shared by `distill teach` and `distill student`."""

    config: str | None = opt(None, "TOML file giving defaults for these options; options on the command line win.")
    data: str | None = opt(None, "CIFAR-10 data: cifar-10-python.tar.gz, cifar-10-batches-py/, an image-folder tree (train/<class>/, test/<class>/), or a .tar/.tar.gz of either.")
    download: bool = opt(False, "Download official CIFAR-10 through torchvision when --data holds nothing.")
    cache_dir: str | None = opt(None, "Where decoded tensors and unpacked archives are cached (default $DISTILL_CACHE or ~/.cache/distill).")
    out: str | None = opt(None, "Run folder (default runs/cifar10/<role>-<arch>[-<method>]).")
    image_size: int = opt(32, "Side length images are decoded to and trained at.")
    resize: int | None = opt(None, "Upsample each batch to this size on the device before the model (pretrained teachers like 64-128).")
    val_size: int = opt(5000, "Training images held out (fixed by --seed) to pick the best epoch; 0 trains on every image and keeps the last epoch. The test set never picks anything.")
    limit_train: int | None = opt(None, "Train on a class-balanced subset of this many images (smoke runs, benchmarks).")
    limit_test: int | None = opt(None, "Evaluate on a class-balanced subset of this many test images.")
    arch: str = opt("resnet50", "Model architecture (see `distill models`).")
    epochs: int = opt(30, "Passes over the training set.")
    batch_size: int = opt(512, "Global batch size; the learning rate is not rescaled for you.")
    lr: float = opt(0.2, "Peak learning rate of SGD with Nesterov momentum (reached after warm-up).")
    momentum: float = opt(0.9, "SGD momentum.")
    weight_decay: float = opt(5e-4, "L2 weight decay, not applied to BatchNorm or bias parameters.")
    warmup_epochs: float = opt(1.0, "Linear learning-rate warm-up length before the cosine decay to zero.")
    label_smoothing: float = opt(0.0, "Label smoothing of the cross-entropy targets (students: of their CE term). Off by default: a label-smoothed teacher distils worse (Muller et al. 2019), and KD already gives students soft targets.")
    grad_clip: float = opt(0.0, "Clip the gradient norm to this value (0: off).")
    ema_horizon: float = opt(0.05, "Weight EMA time constant as a fraction of the run's steps (0: off): per-step decay 1 - 1/(horizon x steps), so it averages the same share of any schedule. EMA and raw weights compete on validation; with --val-size 0 the EMA is kept.")
    augment: str = opt("default", "Augmentation: 'default' (crop+flip), 'none', or overrides like 'mixup=0.2,cutout=0.5,color_jitter=0.2'.")
    precision: str = opt("auto", "Training precision: auto (bf16 on CUDA, fp32 on CPU), bf16 or fp32.", ("auto", "bf16", "fp32"))
    channels_last: bool | None = opt(None, "Use channels_last memory format (default: on for CUDA).")
    compile: bool | None = opt(None, "torch.compile the model. Unset: on for single-process GPU runs of 2,500 steps or more, where the compile (about a minute cold, kept in the cache folder for the next run) pays off.")
    compile_mode: str = opt("reduce-overhead", "torch.compile mode: reduce-overhead (replays CUDA graphs: fewest kernel launches, more GPU memory; the fastest measured), default, or max-autotune (longest compile).", ("reduce-overhead", "default", "max-autotune"))
    tta: bool = opt(False, "Average predictions over the image and its mirror at evaluation.")
    device: str = opt("auto", "auto, cpu, cuda or cuda:N.")
    seed: int = opt(0, "Seeds the split, the batch order and the augmentation.")
    deterministic: bool = opt(False, "Deterministic kernels (bit-exact runs on the CPU; slower).")
    sync_bn: bool = opt(False, "Under torchrun, compute BatchNorm statistics over the global batch instead of each process's shard (slower; helps small per-GPU batches).")
    save_every: int = opt(1, "Write last.pt/best.pt every N epochs (and always at the end or on interruption).")
    resume: bool = opt(False, "Continue the run in --out from its last.pt.")
    force: bool = opt(False, "Start over in an existing run folder (its old files are replaced as the new run saves).")
    quiet: bool = opt(False, "Print only the final result.")

    role = "teacher"

    def validate(self) -> None:
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "image_size": self.image_size,
                    "save_every": self.save_every}
        for name, value in positive.items():
            if value < 1:
                raise UserError(f"--{dash(name)} must be at least 1 (got {value})")
        if self.lr <= 0:
            raise UserError(f"--lr must be positive (got {self.lr})")
        for name in ("limit_train", "limit_test", "resize"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"--{dash(name)} must be at least 1 (got {value})")
        if self.val_size < 0 or self.weight_decay < 0 or self.grad_clip < 0 or self.warmup_epochs < 0:
            raise UserError("--val-size, --weight-decay, --grad-clip and --warmup-epochs cannot be negative")
        if not 0 <= self.label_smoothing < 1 or not 0 <= self.ema_horizon <= 1:
            raise UserError("--label-smoothing must be in [0, 1) and --ema-horizon in [0, 1]")
        if self.resume and self.force:
            raise UserError("--resume and --force contradict each other: choose one")
        check_choice("precision", self.precision)
        check_choice("compile_mode", self.compile_mode)
        from distill.augment import parse_augment

        parse_augment(self.augment)  # a bad --augment fails now, not after the data set is decoded


@dataclass
class TeachConfig(TrainConfig):
    weights: str = opt("none", "Initial weights: none, imagenet (torchvision DEFAULT, e.g. IMAGENET1K_V2), imagenet1k_v1, or a state_dict FILE in torchvision's key format.")
    stem: str = opt("cifar", "cifar: 3x3 stride-1 conv, no max-pool (keeps 32x32 detail); imagenet: torchvision's 7x7/2 + max-pool (for comparison).", ("cifar", "imagenet"))
    backbone_lr_scale: float = opt(0.1, "Learning-rate factor for pretrained backbone layers (the new head and stem use the full --lr).")

    def validate(self) -> None:
        super().validate()
        check_choice("stem", self.stem)
        if self.backbone_lr_scale <= 0:
            raise UserError("--backbone-lr-scale must be positive")


@dataclass
class StudentConfig(TrainConfig):
    arch: str = opt("resnet20", "Student architecture (see `distill models`).")
    teacher: str | None = opt(None, "Teacher checkpoint (best.pt or last.pt of `distill teach`).")
    no_teacher: bool = opt(False, "Train the baseline: same recipe, plain cross-entropy, no teacher (same as --method none).")
    method: str = opt("kd", "Distillation method: kd (Hinton), dkd (decoupled KD), none (baseline).")
    temperature: float = opt(4.0, "Softmax temperature T of the distillation term.")
    alpha: float | None = opt(None, "Weight of the DISTILLATION term (kd: loss = (1-alpha)*CE + alpha*T^2*KL, default 0.9; dkd: TCKD weight, default 1.0). Some toolkits weight CE instead.")
    beta: float | None = opt(None, "DKD only: weight of the non-target-class term NCKD (default 8.0).")
    kd_warmup_epochs: float = opt(20.0, "DKD only: epochs over which the distillation weight ramps up linearly.")
    compile_teacher: bool | None = opt(None, "torch.compile the teacher's forward pass (one batch shape: under reduce-overhead one CUDA graph). Unset: as the student is compiled.")
    any_teacher: bool = opt(False, "Allow a student or baseline checkpoint as --teacher (any trained model can teach).")

    @property
    def role(self) -> str:  # type: ignore[override]
        return "baseline" if self.effective_method == "none" else "student"

    @property
    def effective_method(self) -> str:
        return "none" if self.no_teacher else self.method

    def validate(self) -> None:
        super().validate()
        if self.teacher and self.no_teacher:
            raise UserError("--teacher and --no-teacher contradict each other: choose one")
        if self.temperature <= 0:
            raise UserError(f"--temperature must be positive (got {self.temperature})")
        if self.alpha is not None and not 0 <= self.alpha <= 1 and self.effective_method == "kd":
            raise UserError(f"--alpha must be in [0, 1] (got {self.alpha})")


# Options that change nothing a run computes: never compared on resume, never shown as hyperparameters.
NOT_COMPUTED = ("config", "quiet", "resume", "force")


def dash(name: str) -> str:
    return name.replace("_", "-")


def check_choice(name: str, value: str) -> None:
    choices = FIELD_CHOICES[name]
    if value not in choices:
        raise UserError(f"unknown --{dash(name)} '{value}': choose one of {', '.join(choices)}")


FIELD_CHOICES = {
    f.name: f.metadata["choices"]
    for cls in (TrainConfig, TeachConfig, StudentConfig)
    for f in dataclasses.fields(cls)
    if f.metadata.get("choices")
}


def base_type(hint) -> type:
    """`int | None` -> int."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0]
    return hint


def coerce(cls, key: str, value, source: str):
    """Check a config-file value against the field's type; int is accepted where float is expected."""
    want = base_type(typing.get_type_hints(cls)[key])
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, want) or (want is int and isinstance(value, bool)):
        raise UserError(f"{source}: '{key}' must be {want.__name__}, got {type(value).__name__} {value!r}")
    return value


def read_toml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} not found: check the path")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"config file {path} is not valid TOML ({exc}): fix the syntax") from None


def values_from_mapping(cls, mapping: dict, source: str) -> dict:
    """Validate keys (dashes or underscores) and types of a config table for dataclass `cls`."""
    names = {f.name for f in dataclasses.fields(cls)} - {"config"}
    values = {}
    for raw_key, value in mapping.items():
        key = raw_key.replace("-", "_")
        if key not in names:
            raise UserError(f"{source}: unknown key '{raw_key}'; valid keys: {', '.join(sorted(names))}")
        values[key] = coerce(cls, key, value, source)
    return values


def resolve(cls, cli_values: dict, file_values: dict | None = None):
    """Defaults < file < command line. `cli_values` holds only the options the user actually gave."""
    values = dict(file_values or {})
    if cli_values.get("config"):
        values.update(values_from_mapping(cls, read_toml(cli_values["config"]), cli_values["config"]))
    values.update({k: v for k, v in cli_values.items() if v is not None})
    cfg = cls(**values)
    cfg.validate()
    return cfg


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
