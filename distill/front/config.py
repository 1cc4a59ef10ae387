"""Typed run configuration: dataclass defaults < config file (TOML) < command-line options.

Each field's `help` is both its why-comment and its `--help` text: the CLI is generated from these
fields, so an option cannot exist without a description.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path

from distill.augment.spec import parse_augment, parse_mix
from distill.errors import UserError
from distill.methods import METHODS, all_option_names, method_names, option_type, resolve_options
from distill.front.names import ARCHS, DATASETS, STEMS, TEACHER_STAGES, TEACHER_WEIGHTS
from distill.front.options import AT_LEAST_1, MIN_IMAGE_SIZE, NON_NEGATIVE, POSITIVE, Range, dash, opt

# The learning-rate schedules after the warm-up; distill/engine/optim.py implements each.
SCHEDULES = ("cosine", "step")

# Everything this module imports is torch-free: the CLI resolves and validates a config before it imports
# torch, so a bad option answers in a fraction of a second (tests/front/test_cli.py holds it to that).


@dataclass
class TrainConfig:
    """Everything a training run needs; shared by `distill teach` and `distill student`."""

    config: str | None = opt(None, "TOML file giving defaults for these options; options on the command line win.")
    data: str | None = opt(None, "Data: the --dataset's official python version (cifar-10-python.tar.gz or cifar-100-python.tar.gz, a folder holding it, or the extracted cifar-10-batches-py/ or cifar-100-python/), an image-folder tree (train/<class>/, test/<class>/), or a .tar/.tar.gz of either.")
    download: bool = opt(False, "Fill an empty or missing --data folder with the official --dataset (downloaded through torchvision). Without --data, the official --dataset is used anyway: from $DISTILL_DATA or the cache folder, downloaded there once.")
    # Which official set, named on every run: the files of one are never read as the other's, and a resume refuses a change.
    dataset: str = opt("cifar10", "Official data set: cifar10 (10 classes; the default, and what distill's measured numbers use) or cifar100 (100 classes, the set of RepDistiller's and mdistiller's KD tables). It chooses what is downloaded without --data and which python batches --data may hold; an image-folder tree is taken under either.", DATASETS)
    coarse_labels: bool = opt(False, "Train on CIFAR-100's 20 superclasses (its coarse_labels, names from its meta file) instead of its 100 classes. Only with --dataset cifar100.")
    cache_dir: str | None = opt(None, "Where decoded tensors and unpacked archives are cached (default $DISTILL_CACHE or ~/.cache/distill).")
    out: str | None = opt(None, "Run folder (default runs/<dataset>[-coarse]/<role>-<arch>[-<method>]).")
    image_size: int = opt(32, "Side length images are decoded to and trained at.", within=Range(MIN_IMAGE_SIZE))
    resize: int | None = opt(None, "Upsample each batch to this size on the device before the model (pretrained teachers like 64-128).", within=Range(MIN_IMAGE_SIZE))
    val_size: int = opt(5000, "Training images held out (fixed by --seed) to pick the best epoch; 0 trains on every image and keeps the last epoch. The test set never picks anything.", within=NON_NEGATIVE)
    limit_train: int | None = opt(None, "Train on a class-balanced subset of this many images (smoke runs, benchmarks).", within=AT_LEAST_1)
    limit_test: int | None = opt(None, "Evaluate on a class-balanced subset of this many test images.", within=AT_LEAST_1)
    classes: str | None = opt(None, "Train and test on these classes only, relabelled in the data's order: positions in the sorted class list from 0 ('5-9', '0,2,4') or names ('cat,dog'). A transfer experiment pretrains on some classes and fine-tunes on others; the model gets one output per chosen class.")
    arch: str = opt("resnet50", "Model architecture (see `distill models`).", ARCHS)
    epochs: int = opt(30, "Passes over the training set.", within=AT_LEAST_1)
    batch_size: int = opt(512, "Global batch size; the learning rate is not rescaled for you.", within=AT_LEAST_1)
    lr: float = opt(0.2, "Peak learning rate of SGD with Nesterov momentum (reached after warm-up).", within=POSITIVE)
    # Nesterov momentum needs momentum > 0 (torch refuses 0), and at 1 nothing decays.
    momentum: float = opt(0.9, "SGD momentum.", within=Range(0, 1, low_open=True, high_open=True))
    weight_decay: float = opt(5e-4, "L2 weight decay, not applied to BatchNorm or bias parameters.", within=NON_NEGATIVE)
    warmup_epochs: float = opt(1.0, "Linear learning-rate warm-up length before the --schedule's decay.", within=NON_NEGATIVE)
    schedule: str = opt("cosine", "Learning-rate decay after the warm-up: cosine (per step, to zero at the end of --epochs) or step (multiplied by --lr-decay after each of --milestones: the schedule of RepDistiller's and most KD papers' CIFAR tables, which a comparison with their numbers needs).", SCHEDULES)
    milestones: str | None = opt(None, "Epochs after which --schedule step multiplies the learning rate by --lr-decay: comma-separated, increasing, each below --epochs (RepDistiller's 240-epoch runs: 150,180,210). Absolute epochs: a run continued to more --epochs keeps them.")
    lr_decay: float = opt(0.1, "Factor --schedule step multiplies the learning rate by at each milestone (RepDistiller's 0.1).", within=Range(0, 1, low_open=True, high_open=True))
    label_smoothing: float = opt(0.0, "Label smoothing of the cross-entropy targets (students: of their CE term). Off by default: a label-smoothed teacher distils worse (Muller et al. 2019), and KD already gives students soft targets.", within=Range(0, 1, high_open=True))
    grad_clip: float = opt(0.0, "Clip the gradient norm to this value (0: off).", within=NON_NEGATIVE)
    ema_horizon: float = opt(0.05, "Weight EMA time constant as a fraction of the run's steps (0: off): per-step decay 1 - 1/(horizon x steps), so it averages the same share of any schedule. EMA and raw weights compete on validation; with --val-size 0 the EMA is kept.", within=Range(0, 1))
    augment: str = opt("default", "Augmentation: 'default' (crop+flip), 'none', or overrides like 'mixup=0.2,cutout=0.5,color_jitter=0.2'.")
    precision: str = opt("auto", "Training precision: auto (bf16 on CUDA, fp32 on CPU), bf16 or fp32.", ("auto", "bf16", "fp32"))
    channels_last: bool | None = opt(None, "Use channels_last memory format (default: on for CUDA).")
    compile: bool | None = opt(None, "torch.compile the model. Unset: on for single-process GPU runs of 2,500 steps or more, where the compile (about a minute cold, kept in the cache folder for the next run) pays off.")
    compile_mode: str = opt("reduce-overhead", "torch.compile mode: reduce-overhead (replays CUDA graphs: fewest kernel launches, more GPU memory; the fastest measured), default, or max-autotune (longest compile).", ("reduce-overhead", "default", "max-autotune"))
    tta: bool = opt(False, "Average predictions over the image and its mirror at evaluation.")
    device: str = opt("auto", "auto, cpu, cuda or cuda:N.")
    # The loop seeds epoch e with seed * 1_000_003 + e: below 2^31 that stays far inside torch's 64-bit seeds.
    seed: int = opt(0, "Seeds the split, the batch order and the augmentation.", within=Range(0, 2**31, high_open=True))
    deterministic: bool = opt(False, "Deterministic kernels (bit-exact runs on the CPU; slower).")
    sync_bn: bool = opt(False, "Under torchrun, compute BatchNorm statistics over the global batch instead of each process's shard (slower; helps small per-GPU batches).")
    save_every: int = opt(1, "Write last.pt/best.pt every N epochs (and always at the end or on interruption).", within=AT_LEAST_1)
    resume: bool = opt(False, "Continue the run in --out from its last.pt.")
    force: bool = opt(False, "Start over in an existing run folder (its old files are replaced as the new run saves).")
    quiet: bool = opt(False, "No progress bar or per-epoch lines: only errors and the final result line.")

    role = "teacher"

    def validate(self) -> None:
        """Every check that needs neither torch nor a file: it runs before any import, decode or write."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None and f.metadata["range"] is not None:
                f.metadata["range"].check(f.name, value)
            if f.metadata["choices"]:
                check_choice(f.name, value)
        if self.resume and self.force:
            raise UserError("--resume and --force contradict each other: choose one")
        check_coarse_labels(self.dataset, self.coarse_labels)
        check_augment(self.augment, self.image_size)
        check_schedule(self.schedule, self.milestones, self.epochs)
        parse_classes(self.classes)


@dataclass
class TeachConfig(TrainConfig):
    weights: str = opt("none", "Initial weights: none, imagenet (torchvision DEFAULT, e.g. IMAGENET1K_V2), imagenet1k_v1, a state_dict FILE in torchvision's key format, or a distill checkpoint (best.pt of a run of the same --arch and --stem, e.g. pretrained on other --classes). The head always starts new.")
    stem: str = opt("cifar", "cifar: 3x3 stride-1 conv, no max-pool (keeps 32x32 detail); imagenet: torchvision's 7x7/2 + max-pool (for comparison).", STEMS)
    backbone_lr_scale: float = opt(0.1, "Learning-rate factor for pretrained backbone layers (the new head, and a stem derived from ImageNet's, use the full --lr); without --layer-decay.", within=POSITIVE)
    # Fine-tuning schedules: each needs --weights (a model trained from scratch has no features to keep).
    freeze_epochs: int = opt(0, "Epochs at the start in which only the new head trains: every pretrained stage is frozen, its weights and its BatchNorm statistics (a linear probe on the pretrained features). Then --unfreeze says how the stages rejoin. Needs --weights.", within=NON_NEGATIVE)
    unfreeze: str = opt("all", "After --freeze-epochs: 'all' unfreezes every stage at once; 'gradual' one stage per epoch from the top, layer4 first and the stem last, in epoch --freeze-epochs + 5 (--epochs must reach it; ULMFiT's gradual unfreezing, Howard & Ruder 2018: the most general features change last); 'lp-ft' every stage at once and the head too at --lr x --backbone-lr-scale (linear probe then fine-tune, Kumar et al. 2022, 'Fine-Tuning can Distort Pretrained Features': a head fitted first distorts the features less than a random one, most of all out of distribution).", ("all", "gradual", "lp-ft"))
    layer_decay: float = opt(1.0, "Layer-wise learning-rate decay (timm's layer_decay, after BEiT): pretrained stage i of d trains at --lr x decay^(d - i), layer4 at --lr x decay, the stem at --lr x decay^d, the head at --lr: early layers hold general features and move least. Replaces --backbone-lr-scale; 1: off. Needs --weights.", within=Range(0, 1, low_open=True))
    freeze_bn: bool = opt(False, "Keep every BatchNorm layer in eval mode: its running statistics stay the pretrained ones (timm's freeze_bn and torchvision's FrozenBatchNorm2d do so too, and also fix the affine scale and shift, which train here). For small batches, whose statistics are noisy. Needs --weights.")

    def validate(self) -> None:
        super().validate()
        check_finetune(self)

    def finetune(self) -> dict | None:
        """The fine-tuning settings (metrics.json's `finetune`), None for a model trained from scratch."""
        return None if self.weights == "none" else {k: getattr(self, k) for k in FINETUNE_FIELDS}


# A fine-tuned teacher's recipe beyond the common one: recorded in metrics.json, shown in its HPARAMS and summary.
FINETUNE_FIELDS = ("weights", "backbone_lr_scale", "freeze_epochs", "unfreeze", "layer_decay", "freeze_bn")
SCHEDULE_DEFAULTS = {"freeze_epochs": 0, "unfreeze": "all", "layer_decay": 1.0, "freeze_bn": False}


def check_finetune(cfg: TeachConfig) -> None:
    """A schedule needs pretrained weights, and a probe needs epochs to probe and to fine-tune in."""
    for name, default in SCHEDULE_DEFAULTS.items():
        if cfg.weights == "none" and getattr(cfg, name) != default:
            raise UserError(f"--{dash(name)} needs pretrained weights: set --weights (a model trained from scratch "
                            f"has no features to keep)")
    if cfg.unfreeze == "lp-ft" and cfg.freeze_epochs == 0:
        raise UserError("--unfreeze lp-ft needs --freeze-epochs N, the linear probe's length")
    if cfg.freeze_epochs >= cfg.epochs:
        raise UserError(f"--freeze-epochs {cfg.freeze_epochs} leaves none of the {cfg.epochs} --epochs to fine-tune "
                        f"the backbone: lower it")
    if cfg.unfreeze == "lp-ft" and cfg.layer_decay != 1:
        raise UserError("--unfreeze lp-ft fine-tunes every layer at one rate, --layer-decay gives each its own: "
                        "choose one")
    if cfg.layer_decay != 1 and cfg.backbone_lr_scale != TeachConfig.backbone_lr_scale:
        raise UserError(f"--layer-decay {cfg.layer_decay:g} sets every pretrained layer's rate and replaces "
                        f"--backbone-lr-scale {cfg.backbone_lr_scale:g}, which would be ignored: choose one")
    if cfg.unfreeze == "gradual":
        check_gradual(cfg.freeze_epochs, cfg.epochs)


def check_gradual(freeze_epochs: int, epochs: int) -> None:
    """Gradual unfreezing thaws one pretrained stage per epoch after --freeze-epochs, layer4 first and the stem
    last: a run whose --epochs end before a stage's turn would leave it pretrained without a word."""
    pretrained = [members[0] for members in TEACHER_STAGES[:-1]]  # the head trains from the start
    last_thaw = freeze_epochs + len(pretrained)  # the epoch (from 1) in which the stem starts training
    if epochs >= last_thaw:
        return
    *others, last = ["the stem", *pretrained[1:]][:last_thaw - epochs]
    never = f"{', '.join(others)} and {last}" if others else last
    fix = f"--epochs {last_thaw} or more"
    if epochs >= len(pretrained):
        fix += f", or --freeze-epochs {epochs - len(pretrained)} or less"
    raise UserError(f"--unfreeze gradual after --freeze-epochs {freeze_epochs} thaws one stage per epoch, the stem "
                    f"last in epoch {last_thaw}: within --epochs {epochs}, {never} would never train; "
                    f"set {fix}")


def finetune_text(settings: dict) -> str:
    """How a teacher was fine-tuned, in a few words: 'from best.pt, lp-ft after 3 frozen epochs, backbone lr x0.1'."""
    parts = [f"from {Path(settings['weights']).name}"]
    if settings["freeze_epochs"] or settings["unfreeze"] != "all":
        frozen = settings["freeze_epochs"]
        parts.append(f"{settings['unfreeze']} after {frozen} frozen epoch{'' if frozen == 1 else 's'}")
    parts.append(f"layer decay {settings['layer_decay']:g}" if settings["layer_decay"] != 1
                 else f"backbone lr x{settings['backbone_lr_scale']:g}")
    if settings["freeze_bn"]:
        parts.append("frozen BN")
    return ", ".join(parts)


@dataclass
class _StudentOptions(TrainConfig):
    arch: str = opt("resnet20", "Student architecture (see `distill models`).", ARCHS)
    teacher: str | None = opt(None, "Teacher checkpoint (best.pt or last.pt of `distill teach`).")
    no_teacher: bool = opt(False, "Train the baseline: same recipe, plain cross-entropy, no teacher (same as --method none).")
    method: str = opt("kd", "Distillation method: " + "; ".join(f"{n}: {c.summary}" for n, c in METHODS.items()) + ".",
                      method_names())
    compile_teacher: bool | None = opt(None, "torch.compile the teacher's forward pass (one batch shape: under reduce-overhead one CUDA graph). Unset: as the student is compiled.")
    mix: str = opt("none", "MixUp/CutMix of this run's own on top of --augment, e.g. 'mixup=0.2,cutmix=1.0,mix_prob=0.5': the student and the teacher see the same mixed image (function matching, Beyer et al. 2022), while a baseline trained in the same group keeps the unmixed batch.")
    any_teacher: bool = opt(False, "Allow a student or baseline checkpoint as --teacher (any trained model can teach).")

    @property
    def role(self) -> str:  # type: ignore[override]
        return "baseline" if self.effective_method == "none" else "student"

    @property
    def effective_method(self) -> str:
        return "none" if self.no_teacher else self.method

    def method_options(self) -> dict:
        """The values given for the method's options (None: the method's default)."""
        return {name: getattr(self, name) for name in all_option_names()}

    def validate(self) -> None:
        super().validate()
        if self.teacher and self.no_teacher:
            raise UserError("--teacher and --no-teacher contradict each other: choose one")
        if self.effective_method != "none" and not self.teacher:
            raise UserError(f"--method {self.method} needs --teacher CKPT (or use --no-teacher for the baseline)")
        # The options the method takes, each in the method's own range; the others refused. Checked against
        # --method even for the baseline (--no-teacher), which then ignores them.
        resolve_options(self.method, self.method_options())
        if parse_mix(self.mix) is not None:
            shared = parse_augment(self.augment)
            if shared.mixup > 0 or shared.cutmix > 0:
                raise UserError(f"--mix {self.mix} would mix images that --augment {self.augment} already mixed: "
                                f"move the mixing to one of them")


def method_option_field(name: str) -> tuple[str, object, dataclasses.Field]:
    """One --option for every method that takes it: default None (the method's own default), its help from
    the first method that declares it, with each method's default."""
    declared = [(cls.name, f) for cls in METHODS.values() for f in dataclasses.fields(cls.Options) if f.name == name]
    defaults = ", ".join(f"{method} {f.default}" for method, f in declared)
    help_text = f"{declared[0][1].metadata['help']} Methods and defaults: {defaults}."
    return name, option_type(name) | None, opt(None, help_text)


# StudentConfig: the student's options plus every distillation method's options, declared by the methods
# themselves (distill/methods/): adding a method adds its options here without touching this file.
StudentConfig = dataclasses.make_dataclass("StudentConfig", [method_option_field(n) for n in all_option_names()],
                                           bases=(_StudentOptions,))


# Options that change nothing a run computes: never compared on resume, never shown as hyperparameters.
NOT_COMPUTED = ("config", "quiet", "resume", "force")


def check_choice(name: str, value: str) -> None:
    choices = FIELD_CHOICES[name]
    if value not in choices:
        raise UserError(f"unknown --{dash(name)} '{value}': choose one of {', '.join(choices)}")


def check_coarse_labels(dataset: str, coarse_labels: bool) -> None:
    """Only CIFAR-100 has superclasses: refused before anything is loaded."""
    if coarse_labels and dataset != "cifar100":
        raise UserError(f"--coarse-labels needs --dataset cifar100 ({dataset} has no superclasses): "
                        "add --dataset cifar100, or drop --coarse-labels")


def check_augment(spec: str, image_size: int) -> None:
    """A bad --augment fails now, not after the data set is decoded."""
    padding = parse_augment(spec).crop_padding
    if padding >= image_size:  # reflect padding takes its pixels from inside the image
        raise UserError(f"--augment crop_padding={padding} must be in [0, {image_size}) at --image-size "
                        f"{image_size}: reflect padding needs fewer pixels than the image has")


def parse_milestones(text: str) -> tuple[int, ...]:
    """--milestones '150,180,210' -> (150, 180, 210); anything but comma-separated epoch numbers is refused."""
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isascii() and part.isdigit() for part in parts):
        raise UserError(f"--milestones '{text}' is not a comma-separated list of epochs: write e.g. "
                        f"--milestones 150,180,210")
    return tuple(int(part) for part in parts)


def check_schedule(schedule: str, milestones: str | None, epochs: int) -> None:
    """--milestones belong to --schedule step, which needs them: increasing epochs inside the run (a milestone at
    0 is a lower --lr, one at or past --epochs never takes effect)."""
    if schedule != "step":
        if milestones is not None:
            raise UserError(f"--milestones {milestones} applies to --schedule step only, not {schedule}: "
                            f"add --schedule step or drop --milestones")
        return
    if milestones is None:
        raise UserError("--schedule step needs --milestones, the epochs after which the learning rate decays: "
                        "e.g. --milestones 150,180,210")
    values = parse_milestones(milestones)
    if any(later <= earlier for earlier, later in zip(values, values[1:])):
        raise UserError(f"--milestones {milestones} must increase: write each epoch once, in order")
    if values[0] < 1 or values[-1] >= epochs:
        raise UserError(f"--milestones {milestones} must lie in [1, {epochs - 1}] for --epochs {epochs}: a milestone "
                        f"at or past the last epoch never takes effect; lower it or raise --epochs")


MOST_CLASSES = 1_000_000  # past any data set's class list: a longer range is a typo, never expanded


def parse_classes(spec: str | None) -> list[int | str] | None:
    """--classes as a list: positions (from 0; a range 'a-b' expanded) and names, each once; None: every class.
    Which classes they are is known once the data is loaded (distill.data.splits.select_classes)."""
    if spec is None:
        return None
    items: list[int | str] = []
    for part in (p.strip() for p in spec.split(",")):
        span = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part, re.ASCII)
        if re.fullmatch(r"\d+", part, re.ASCII):
            items.append(int(part))
        elif span and int(span[1]) <= int(span[2]) < MOST_CLASSES:
            items += range(int(span[1]), int(span[2]) + 1)
        elif span:
            raise UserError(f"--classes range '{part}' must run upward and stay below {MOST_CLASSES:,}: e.g. 5-9")
        elif part:
            items.append(part)
        else:
            raise UserError(f"--classes '{spec}' has an empty item: separate positions or names by single commas")
    seen: set[int | str] = set()
    for item in items:
        if item in seen:
            raise UserError(f"--classes '{spec}' names class {item} twice: name each once")
        seen.add(item)
    if len(items) < 2:
        raise UserError(f"--classes '{spec}' selects one class: a classifier needs at least 2")
    return items


def check_paths(cfg: TrainConfig) -> None:
    """Files a command-line run reads must exist before torch is imported. Not part of validate: a pipeline
    plans (and validates) its students before their teacher's checkpoint is written."""
    check_data(cfg.data, cfg.download)
    check_cache_dir(cfg.cache_dir)
    check_weights(getattr(cfg, "weights", "none"), cfg.arch)
    teacher = getattr(cfg, "teacher", None)
    if teacher and cfg.effective_method != "none" and not Path(teacher).expanduser().is_file():
        raise UserError(f"--teacher checkpoint {teacher} not found: check the path")


def check_data(data: str | None, download: bool | None) -> None:
    """--data must exist, unless --download will fill it (None: the command has no --download)."""
    if data and not download and not Path(data).expanduser().exists():
        fetch = "" if download is None else ", or add --download to fetch the --dataset into it"
        raise UserError(f"data path {data} does not exist; pass --data with an existing file or folder{fetch}")


def check_cache_dir(cache_dir: str | None) -> None:
    """--cache-dir is a folder, or made one: a file there would be found only when the decoded images are saved."""
    if cache_dir and Path(cache_dir).expanduser().exists() and not Path(cache_dir).expanduser().is_dir():
        raise UserError(f"--cache-dir {cache_dir} is a file, not a folder: choose another --cache-dir")


def check_weights(weights: str, arch: str) -> None:
    """--weights names the pretrained weights of a teacher arch or an existing file (a file of that name would be
    read only after torch is imported and the data decoded)."""
    if weights == "none":
        return
    if arch not in TEACHER_WEIGHTS:
        raise UserError(f"--weights applies to teachers only; {arch} is a student: use --weights none")
    names = TEACHER_WEIGHTS[arch]
    path = Path(weights).expanduser()
    if weights.lower() in names or path.is_file():
        return
    choices = f"none, {', '.join(names)}"
    if path.exists():
        raise UserError(f"--weights {weights} is not a regular file: pass a state_dict file, a run's best.pt, or one "
                        f"of: {choices}")
    raise UserError(f"--weights '{weights}' is neither a file nor one of: {choices} ({arch}'s names): check the "
                    f"path or the name")


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
        try:
            return float(value)
        except OverflowError:  # past 1e308: infinite, as the same digits on the command line, and refused as such
            return math.inf if value > 0 else -math.inf
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


def parse_assignments(items: list[str], flag: str) -> dict:
    """`KEY=VALUE` items (VALUE in TOML syntax: 3, 0.5, false, "text"; anything else is taken as text)."""
    values = {}
    for item in items:
        key, sep, raw = (part.strip() for part in item.partition("="))
        if not sep or not key:
            raise UserError(f"{flag} '{item}' is not KEY=VALUE: write e.g. {flag} epochs=5 or {flag} compile=false")
        try:
            values[key] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            values[key] = raw
    return values


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
