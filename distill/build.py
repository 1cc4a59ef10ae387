"""Building runs from configs: every check, then device, folders, data, models, optimizers and teacher.

`build_group` is the one builder of training runs (a single run is a group of one); `make_loop` and
`compile_models` are also what `distill bench` times, so a benchmark runs exactly a run's step.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
import os
from pathlib import Path

import torch
from torch import nn

from distill import checkpoint as ckpt_io
from distill import config as C
from distill import distributed as dist_util
from distill.augment import GpuAugment, Preprocess, parse_augment, to_float
from distill.augment_spec import parse_mix
from distill.data import Splits, channel_stats, default_cache_dir, load_dataset, make_splits
from distill.errors import UserError
from distill.evaluation import model_from_checkpoint
from distill.methods import Method, Outputs, TrainingSet, all_option_names, resolve_options
from distill.methods import create as create_method
from distill.models import WithFeatures, build_model, forward_with_features, make_spec, new_parameter_names
from distill.runfolder import RunLock, check_out, make_out
from distill.runlog import RunLogger
from distill.runstate import RESUME_FREE, RESUME_RECORDED, Group, Run, restore, set_rng_state
from distill.train import Learner, Loop, ModelEMA, TeacherModel, ema_decay, model_input, require_classes, unwrap

# Settings every run of a group must share: they fix the batches, the augmentation draws and the step count.
GROUP_SHARED = ("data", "download", "cache_dir", "image_size", "val_size", "limit_train", "limit_test", "seed",
                "batch_size", "epochs", "augment", "device", "precision", "channels_last", "deterministic",
                "sync_bn", "compile_mode")


# --compile's automatic choice: on for single-GPU runs of at least this many steps. Measured on an H100
# (2026-11-27): CUDA graphs (reduce-overhead) take a ResNet50 step from 12.6k to 17.1k images/s (10.7 ms
# saved per batch of 512) after ~50 s of cold compile: repaid after ~4,700 steps cold, far sooner with the
# persistent cache a second run reads. Students' compile gain is not measured yet (BENCHMARKS.md).
AUTO_COMPILE_MIN_STEPS = 2500
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # torch.compile modes that capture CUDA graphs


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}': use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible: use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"unsupported device '{name}': use auto, cpu, cuda or cuda:N")
    return device


def amp_dtype(cfg: C.TrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def check_resume(ck: dict, cfg: C.TrainConfig, classes: list[str] | None, path: Path) -> None:
    """Refuse, in one line listing every difference, to continue a run with settings it cannot take."""
    saved, now = recipe(ck["config"], cfg), recipe(C.to_dict(cfg), cfg)
    if saved.get("data"):  # runs before 2026-11-27 stored --data as typed: relative to where they were started
        saved["data"] = str(Path(saved["data"]).expanduser().resolve())
    diffs = [f"{k}: {saved[k]!r} -> {now[k]!r}" for k in now if saved[k] != now[k]]
    if needs_teacher(cfg) and not same_teacher(ck, cfg):
        diffs.append(f"teacher: {cfg.teacher} is not the checkpoint that taught this run (other contents)")
    if classes is not None and ck["classes"] != classes:  # same --data path, new contents: the head no longer fits
        diffs.append(f"classes: {classes_text(ck['classes'])} -> {classes_text(classes)}")
    if diffs:
        raise UserError(f"cannot resume {path} with changed settings ({'; '.join(diffs)}): "
                        f"restore them, or start a new run with --force or another --out")


def recipe(values: dict, cfg: C.TrainConfig) -> dict:
    """The settings that define what a run computes (all but RESUME_FREE and RESUME_RECORDED), a missing one
    (a checkpoint older than the setting) at its default, a method's options as the method resolves them."""
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    keys = [k for k in fields if k not in RESUME_FREE and k not in RESUME_RECORDED]
    out = {k: values.get(k, fields[k].default) for k in keys}
    if isinstance(cfg, C.StudentConfig):
        options = {k: out.pop(k) for k in all_option_names()}
        method = "none" if out["no_teacher"] else out["method"]
        if method != "none":  # a baseline ignores them
            out.update(method_options=dataclasses.asdict(resolve_options(method, options)))
    return out


def same_teacher(ck: dict, cfg: C.StudentConfig) -> bool:
    """The teacher is the same by content (a moved file is fine); checkpoints from before 2026-12-04 knew
    only its path."""
    digest = (ck.get("teacher") or {}).get("sha256")
    if digest is None:
        return ck["config"].get("teacher") == cfg.teacher
    return digest == ckpt_io.file_sha256(Path(cfg.teacher))


def classes_text(classes: list[str]) -> str:
    return f"{len(classes)} [{', '.join(classes[:4])}{', ...' if len(classes) > 4 else ''}]"


def check_group(cfgs: list[C.TrainConfig]) -> None:
    """Runs trained together must agree on everything that fixes their batches and their step count."""
    first = C.to_dict(cfgs[0])
    for cfg in cfgs[1:]:
        now = C.to_dict(cfg)
        diffs = [f"{k}: {first[k]!r} vs {now[k]!r}" for k in GROUP_SHARED if first.get(k) != now.get(k)]
        if diffs:
            raise UserError(f"{cfg.out} cannot train in one group with {cfgs[0].out} ({'; '.join(diffs)}): "
                            f"give them the same settings or train them one by one")
    teachers = {cfg.teacher for cfg in cfgs if needs_teacher(cfg)}
    if len(teachers) > 1:
        raise UserError(f"a group of runs shares one teacher, but these name {len(teachers)}: "
                        f"{', '.join(sorted(teachers))}")


def needs_teacher(cfg: C.TrainConfig) -> bool:
    return isinstance(cfg, C.StudentConfig) and cfg.effective_method != "none"


def param_groups(model: nn.Module, cfg: C.TrainConfig, fresh: set[str]) -> list[dict]:
    """No weight decay on BatchNorm and bias; pretrained backbone layers at a lower learning rate."""
    scale = getattr(cfg, "backbone_lr_scale", 1.0) if fresh else 1.0
    groups: dict[tuple[bool, float], list] = {}
    for name, p in model.named_parameters():
        decay = p.ndim > 1
        lr_scale = 1.0 if (not fresh or name in fresh) else scale
        groups.setdefault((decay, lr_scale), []).append(p)
    return [{"params": ps, "weight_decay": cfg.weight_decay if decay else 0.0, "lr": cfg.lr * s}
            for (decay, s), ps in groups.items()]


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0, evaluated per batch."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model, cfg, fresh, steps_per_epoch, method_modules=None):
    """Nesterov SGD over the model and the modules a method trains (at the full rate), on the warm-up +
    cosine schedule."""
    groups = param_groups(model, cfg, fresh)
    if method_modules is not None:
        groups += param_groups(method_modules, cfg, set())
    opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    total, warmup = cfg.epochs * steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, warmup))
    return opt, sched


def load_teacher(cfg: C.StudentConfig, classes: list[str], device: torch.device, channels_last: bool):
    ck = ckpt_io.load_checkpoint(Path(cfg.teacher))
    if ck.get("role") != "teacher" and not cfg.any_teacher:
        raise UserError(f"{cfg.teacher} is a {ck.get('role')} checkpoint, not a teacher: pass --any-teacher "
                        f"to distill from it anyway, or give a checkpoint of `distill teach`")
    require_classes(ck["classes"], classes, cfg.teacher)
    model, pre = model_from_checkpoint(ck, cfg.teacher, device, channels_last)
    info = {"path": str(cfg.teacher), "arch": ck["spec"]["arch"], "role": ck.get("role"),
            "test_accuracy": (ck.get("metrics") or {}).get("test_accuracy"),
            "sha256": ckpt_io.file_sha256(Path(cfg.teacher))}  # what a resume checks: the same teacher
    return TeacherModel(model, pre), info


def configure_backends(cfg: C.TrainConfig, device: torch.device) -> None:
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def make_method(cfg: C.TrainConfig) -> Method:
    """The run's loss: a teacher's and a baseline's plain cross-entropy, a student's distillation method."""
    if not isinstance(cfg, C.StudentConfig):
        return create_method("none", label_smoothing=cfg.label_smoothing)
    return create_method(cfg.effective_method, cfg.method_options() if cfg.effective_method != "none" else {},
                         cfg.label_smoothing)


def make_learner(cfg: C.TrainConfig, name: str, spec: dict, stats: tuple, device: torch.device,
                 channels_last: bool, steps_per_epoch: int, pretrained: bool, probe: Probe) -> Learner:
    """Model, loss (and the modules it trains), optimizer, schedule and EMA of one run. Initial weights depend
    on --seed alone, not on what ran before in the process (nor on the other members of a group)."""
    torch.manual_seed(cfg.seed)
    weights = getattr(cfg, "weights", "none") if pretrained else "none"
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(spec, weights).to(device, memory_format=fmt)
    preprocess = Preprocess(*stats, spec["input_size"]).to(device)
    method = make_method(cfg)
    if method.needs_teacher:  # the shapes its modules need: one small batch through both models
        modules = method.setup(probe.outputs(model, preprocess), probe.teacher_outputs(), probe.data)
        if modules is not None:
            method.modules = modules.to(device)
    # The configured weights even on resume: they shape the parameter groups the saved optimizer has.
    fresh = new_parameter_names(spec, getattr(cfg, "weights", "none"))
    optimizer, scheduler = make_optimizer(model, cfg, fresh, steps_per_epoch, method.modules)
    decay = ema_decay(cfg.ema_horizon, cfg.epochs * steps_per_epoch)
    return Learner(name=name, model=WithFeatures(model) if method.needs_features else model, preprocess=preprocess,
                   optimizer=optimizer, scheduler=scheduler, method=method, grad_clip=cfg.grad_clip,
                   ema=ModelEMA(model, decay) if decay > 0 else None, mix=parse_mix(getattr(cfg, "mix", "none")))


@dataclass
class Probe:
    """Two training images, to show a feature method the shapes of the student's and the teacher's features."""

    images: torch.Tensor  # float [0, 1], on the device
    teacher: TeacherModel | None
    channels_last: bool
    data: TrainingSet  # what a method keeping one entry per training image needs to know

    @torch.no_grad()
    def outputs(self, model: nn.Module, preprocess: Preprocess) -> Outputs:
        was_training = model.training
        model.eval()  # BatchNorm statistics stay as they are
        out = Outputs(*forward_with_features(model, model_input(self.images, preprocess, self.channels_last)))
        model.train(was_training)
        return out

    def teacher_outputs(self) -> Outputs:
        if self.teacher is None:
            raise UserError("a distillation method needs --teacher CKPT")
        return self.outputs(unwrap(self.teacher.model), self.teacher.preprocess)


def with_resolved_data(cfg: C.TrainConfig) -> C.TrainConfig:
    """--data as an absolute path, so config.json lets the run be resumed from any directory."""
    if cfg.data is None:
        return cfg  # official CIFAR-10 from $DISTILL_DATA or the cache folder: the same from anywhere
    return dataclasses.replace(cfg, data=str(Path(cfg.data).expanduser().resolve()))


def build_group(cfgs: list[C.TrainConfig]) -> Group:
    """Everything the runs need, checked before any model trains: folders, data, models, teacher."""
    cfgs = [with_resolved_data(cfg) for cfg in cfgs]
    check_group(cfgs)
    lead = cfgs[0]
    device = resolve_device(lead.device)
    rank, world, device = dist_util.init(device)
    configure_backends(lead, device)
    outs = [check_out(cfg) for cfg in cfgs]
    saved = [ckpt_io.load_resumable(out / "last.pt") if cfg.resume else None for cfg, out in zip(cfgs, outs)]
    check_positions(saved, outs)
    for ck, cfg, out in zip(saved, cfgs, outs):
        if ck is not None:
            check_resume(ck, cfg, None, out)  # the settings now; the classes once the data is loaded
    ds = load_dataset(lead.data, lead.image_size, Path(lead.cache_dir) if lead.cache_dir else None, lead.download,
                      quiet=lead.quiet or rank != 0)
    splits = make_splits(ds, lead.val_size, lead.limit_train, lead.limit_test, lead.seed)
    for ck, cfg, out in zip(saved, cfgs, outs):
        if ck is not None:
            check_resume(ck, cfg, splits.classes, out)
    check_batch(lead, len(splits.train_x), world)
    stats = channel_stats(splits.train_x)
    norms = [ck["normalization"] if ck else {"mean": stats[0], "std": stats[1]} for ck in saved]
    channels_last = device.type == "cuda" if lead.channels_last is None else lead.channels_last
    teacher, info = group_teacher(cfgs, splits.classes, device, channels_last)
    loop = make_loop(cfgs, [out.name for out in outs], splits, device, norms, teacher,
                     fresh=[ck is None for ck in saved], rank=rank, world=world)
    locks = lock_folders(cfgs, outs) if rank == 0 else []  # every check has passed: now write
    dist_util.barrier()
    try:
        runs = [start_run(cfg, out, ck, norm, learner, splits, info, rank, live=i == 0)
                for i, (cfg, out, ck, norm, learner) in enumerate(zip(cfgs, outs, saved, norms, loop.learners))]
        if saved[0] is not None:
            set_rng_state(saved[0]["rng"])  # every member saved the same state: they stopped at the same step
        compile_models(loop, cfgs)
        for learner in loop.learners:
            learner.model = dist_util.wrap(learner.model, device, lead.sync_bn)
        return Group(runs, loop, splits, device, locks=locks)
    except BaseException:
        for lock in locks:  # the folders are free again for the user's next attempt
            lock.release()
        raise


def start_run(cfg: C.TrainConfig, out: Path, ck: dict | None, norm: dict, learner: Learner, splits: Splits,
              teacher_info: dict, rank: int, live: bool) -> Run:
    """One run's logger and state, restored from its last.pt when it continues (`live`: it draws the group's
    one progress bar)."""
    logger = RunLogger(out, out.name, cfg.epochs, cfg.quiet, ck["epoch"] + 1 if ck else None, enabled=rank == 0,
                       live=live, method=learner.method.name)
    run = Run(cfg, out, learner_spec(cfg, splits), norm, splits.classes, learner, logger, is_main=rank == 0,
              teacher_info=dict(teacher_info) if needs_teacher(cfg) else None)
    if ck is not None:
        restore(run, ck)
    return run


def lock_folders(cfgs: list[C.TrainConfig], outs: list[Path]) -> list[RunLock]:
    """Create and lock every run folder, or none: a refusal releases the locks already taken."""
    locks: list[RunLock] = []
    try:
        for cfg, out in zip(cfgs, outs):
            locks.append(make_out(cfg, out))
    except UserError:
        for lock in locks:
            lock.release()
        raise
    return locks


def learner_spec(cfg: C.TrainConfig, splits: Splits) -> dict:
    return make_spec(cfg.arch, len(splits.classes), cfg.resize or cfg.image_size, getattr(cfg, "stem", "cifar"))


def make_loop(cfgs: list[C.TrainConfig], names: list[str], splits: Splits, device: torch.device, norms: list[dict],
              teacher: TeacherModel | None, fresh: list[bool], rank: int = 0, world: int = 1) -> Loop:
    """The loop over `splits.train_*` that trains one learner per config (`fresh`: start from the configured
    initial weights, else they are about to be restored). Shared settings come from the first config."""
    lead = cfgs[0]
    channels_last = device.type == "cuda" if lead.channels_last is None else lead.channels_last
    steps = len(splits.train_x) // lead.batch_size
    train_x, train_y = splits.train_x.to(device), splits.train_y.to(device)
    data = TrainingSet(len(train_x), train_y, device, dist_util.all_gather_cat)
    probe = Probe(to_float(train_x[:2]), teacher, channels_last, data)
    learners = [make_learner(cfg, name, learner_spec(cfg, splits), (norm["mean"], norm["std"]), device,
                             channels_last, steps, pretrained=new, probe=probe)
                for cfg, name, norm, new in zip(cfgs, names, norms, fresh)]
    if teacher is not None and any(learner.method.needs_features for learner in learners):
        teacher = TeacherModel(WithFeatures(teacher.model), teacher.preprocess)  # its features, once a step
    return Loop(learners=learners, augment=GpuAugment(parse_augment(lead.augment), len(splits.classes),
                                                      mean=norms[0]["mean"]),  # the training mean: the fill
                train_x=train_x, train_y=train_y, batch_size=lead.batch_size,
                seed=lead.seed, epochs=lead.epochs, device=device, amp_dtype=amp_dtype(lead, device),
                channels_last=channels_last,
                teacher=teacher, rank=rank, world_size=world)


def check_positions(saved: list[dict | None], outs: list[Path]) -> None:
    """A group steps all its runs together, so they must all start fresh or all stand at the same step."""
    where = {(ck["epoch"], ck["step_in_epoch"]) if ck else (0, 0) for ck in saved}
    if len(where) > 1:
        raise UserError(f"the runs {', '.join(str(o) for o in outs)} stand at different points of training "
                        f"({sorted(where)}): resume each on its own")


def check_batch(cfg: C.TrainConfig, train_images: int, world: int) -> None:
    if cfg.batch_size % world:
        raise UserError(f"--batch-size {cfg.batch_size} is the global batch and must split evenly over the "
                        f"{world} processes: use a multiple of {world}")
    if train_images < cfg.batch_size:
        raise UserError(f"--batch-size {cfg.batch_size} is larger than the {train_images} training images: lower it")


def group_teacher(cfgs, classes, device, channels_last) -> tuple[TeacherModel | None, dict]:
    """The one teacher of the distilling runs, loaded once, and where it came from."""
    distilling = [cfg for cfg in cfgs if needs_teacher(cfg)]
    if not distilling:
        return None, {}
    return load_teacher(distilling[0], classes, device, channels_last)


def use_persistent_compile_cache(cfg: C.TrainConfig) -> None:
    """Inductor's compiled kernels under the user cache folder instead of /tmp: a second run (or the next
    stage of a pipeline) reads them back instead of compiling again. Importing torchvision already fills
    TORCHINDUCTOR_CACHE_DIR with inductor's /tmp default, which inductor re-reads at every use, so that
    default is replaced; a folder the user chose is kept."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir as inductor_default

    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is None or os.path.abspath(current) == os.path.abspath(inductor_default()):
        root = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str((root / "inductor").absolute())


def compile_wanted(cfg: C.TrainConfig, loop: Loop) -> bool:
    """--compile / --no-compile as given; unset, on for long single-process GPU runs (AUTO_COMPILE_MIN_STEPS)."""
    if cfg.compile is not None:
        return cfg.compile
    steps = cfg.epochs * loop.steps_per_epoch
    return loop.device.type == "cuda" and loop.world_size == 1 and steps >= AUTO_COMPILE_MIN_STEPS


def compile_models(loop: Loop, cfgs: list[C.TrainConfig]) -> None:
    """torch.compile what the configs ask for, after the optimizers, EMAs and restore: they, the checkpoints
    and evaluation hold the plain modules (`unwrap`), so compiling changes no saved key and evaluation's
    odd last batch causes no recompile."""
    wanted = [compile_wanted(cfg, loop) for cfg in cfgs]
    # --compile-teacher unset follows the student: the teacher's forward is half of a distillation step.
    compile_teacher = loop.teacher is not None and any(
        w if cfg.compile_teacher is None else cfg.compile_teacher for cfg, w in zip(cfgs, wanted) if needs_teacher(cfg))
    if any(wanted) or compile_teacher:
        use_persistent_compile_cache(cfgs[0])
    mode = cfgs[0].compile_mode  # shared by the group
    for learner, want in zip(loop.learners, wanted):
        if want:
            learner.model = torch.compile(learner.model, mode=mode)
    if compile_teacher:
        # The teacher always sees full training batches (every step has batch_size images): one shape,
        # so one compile, and under reduce-overhead one CUDA graph replayed every step.
        loop.teacher.model = torch.compile(loop.teacher.model, mode=mode)
    # These modes replay CUDA graphs, whose outputs the next compiled call overwrites (train.forward).
    loop.cuda_graphs = (any(wanted) or compile_teacher) and mode in CUDA_GRAPH_MODES


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
