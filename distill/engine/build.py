"""Building runs from configs: every check, then device, folders, data, models, optimizers and teacher.

`build_group` is the one builder of training runs (a single run is a group of one); `make_loop` and
`compile_models` are also what `distill bench` times, so a benchmark runs exactly a run's step.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from distill.engine import checkpoint as ckpt_io
from distill.front import config as C
from distill.engine import distributed as dist_util
from distill.augment.ops import GpuAugment, Preprocess, parse_augment, to_float
from distill.augment.spec import parse_mix
from distill.data import Splits, channel_stats, load_dataset, make_splits
from distill.errors import UserError
from distill.engine.checks import (check_batch, check_group, check_positions, check_resume, needs_teacher,
                                   require_classes)
from distill.engine.device import amp_dtype, compile_models, configure_backends, resolve_device
from distill.engine.evaluate import model_from_checkpoint
from distill.engine.optim import make_freezing, make_optimizer
from distill.methods import Method, Outputs, TrainingSet
from distill.methods import create as create_method
from distill.models import (WithFeatures, build_model, forward_with_features, make_spec, model_stages,
                            new_parameter_names)
from distill.engine.folder import RunLock, check_out, make_out
from distill.engine.log import RunLogger
from distill.engine.state import Group, Run, restore, set_rng_state
from distill.engine.loop import Learner, Loop, TeacherModel, model_input
from distill.engine.ema import ModelEMA, ema_decay
from distill.models import unwrap


def load_teacher(cfg: C.StudentConfig, classes: list[str], device: torch.device, channels_last: bool):
    ck = ckpt_io.load_checkpoint(Path(cfg.teacher))
    if ck.get("role") != "teacher" and not cfg.any_teacher:
        raise UserError(f"{cfg.teacher} is a {ck.get('role')} checkpoint, not a teacher: pass --any-teacher "
                        f"to distill from it anyway, or give a checkpoint of `distill teach`")
    require_classes(ck["classes"], classes, cfg.teacher, "use a teacher trained on the same data (and --classes)")
    model, pre = model_from_checkpoint(ck, cfg.teacher, device, channels_last)
    info = {"path": str(cfg.teacher), "arch": ck["spec"]["arch"], "role": ck.get("role"),
            "test_accuracy": (ck.get("metrics") or {}).get("test_accuracy"),
            "sha256": ckpt_io.file_sha256(Path(cfg.teacher))}  # what a resume checks: the same teacher
    return TeacherModel(model, pre), info


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
    # Every method sets up, a teacher-free one too (a memory bank needs only the training set): the shapes its
    # modules need, from one small batch through the student (and the teacher, for a method that has one).
    features = method.needs_features
    teacher = probe.teacher_outputs(features) if method.needs_teacher else None
    modules = method.setup(probe.outputs(model, preprocess, features), teacher, probe.data)
    if modules is not None:
        method.modules = modules.to(device)
    # The configured weights even on resume: they shape the parameter groups the saved optimizer has.
    fresh = new_parameter_names(spec, getattr(cfg, "weights", "none"))
    stage_of, depth = model_stages(spec)
    optimizer, scheduler = make_optimizer(model, cfg, fresh, steps_per_epoch, method.modules, stage_of, depth)
    decay = ema_decay(cfg.ema_horizon, cfg.epochs * steps_per_epoch)
    return Learner(name=name, model=WithFeatures(model) if method.needs_features else model, preprocess=preprocess,
                   optimizer=optimizer, scheduler=scheduler, method=method, grad_clip=cfg.grad_clip,
                   ema=ModelEMA(model, decay) if decay > 0 else None, mix=parse_mix(getattr(cfg, "mix", "none")),
                   freezing=make_freezing(cfg, stage_of, depth))


@dataclass
class Probe:
    """Two training images and the training set, for every method's `setup`: the shapes of the student's and
    the teacher's outputs (features too, for a method that reads them) and what a memory bank needs to know."""

    images: torch.Tensor  # float [0, 1], on the device
    teacher: TeacherModel | None
    channels_last: bool
    data: TrainingSet  # what a method keeping one entry per training image needs to know

    @torch.no_grad()
    def outputs(self, model: nn.Module, preprocess: Preprocess, features: bool) -> Outputs:
        was_training = model.training
        model.eval()  # BatchNorm statistics stay as they are
        x = model_input(self.images, preprocess, self.channels_last)
        out = Outputs(*forward_with_features(model, x)) if features else Outputs(model(x))
        model.train(was_training)
        return out

    def teacher_outputs(self, features: bool) -> Outputs:
        if self.teacher is None:
            raise UserError("a distillation method needs --teacher CKPT")
        return self.outputs(unwrap(self.teacher.model), self.teacher.preprocess, features)


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
                      quiet=lead.quiet or rank != 0, dataset=lead.dataset, coarse_labels=lead.coarse_labels)
    splits = make_splits(ds, lead.val_size, lead.limit_train, lead.limit_test, lead.seed, C.parse_classes(lead.classes))
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
            learner.method.modules = dist_util.share_method_modules(learner.method.modules, device, lead.sync_bn)
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
    data = TrainingSet(len(train_x), train_y, device, dist_util.all_gather_cat, dist_util.own_rows)
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


def group_teacher(cfgs, classes, device, channels_last) -> tuple[TeacherModel | None, dict]:
    """The one teacher of the distilling runs, loaded once, and where it came from."""
    distilling = [cfg for cfg in cfgs if needs_teacher(cfg)]
    if not distilling:
        return None, {}
    return load_teacher(distilling[0], classes, device, channels_last)


