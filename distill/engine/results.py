"""What a finished run reports: metrics.json, predictions.pt and its TensorBoard summary.

The test set is evaluated once per run (the weights in best.pt) and once per group for the teacher;
nothing here chooses anything. predictions.pt keeps every test image's probabilities, so `distill
compare` can test gains for significance and measure fidelity to the teacher on the same images.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from distill.engine import checkpoint as ckpt_io
from distill.engine.checkpoint import PREDICTIONS_FILE, predictions_record
from distill.front import config as C
from distill.engine.device import device_name
from distill.engine.confusion import confusion_counts, confusion_png
from distill.methods import METHODS
from distill.models import build_model
from distill.engine.log import AGREEMENT_TAG, GAIN_TAG, HPARAM_COLUMNS, TEST_TAG
from distill.engine.state import Group, Run, steady_throughput
from distill.stats import agreement, gain_record, mean_kl, weak_teacher
from distill.engine.evaluate import evaluate
from distill.models import unwrap



def eval_kwargs(group: Group, cfg: C.TrainConfig) -> dict:
    loop = group.loop
    return dict(num_classes=len(group.splits.classes), tta=cfg.tta, amp_dtype=loop.amp_dtype,
                channels_last=loop.channels_last)


def teacher_test(group: Group, cfg: C.TrainConfig) -> dict:
    """The teacher on exactly this test split, for the comparison; evaluated once per group."""
    if group.teacher_test is None:
        teacher, s = group.loop.teacher, group.splits
        group.teacher_test = evaluate(unwrap(teacher.model), teacher.preprocess, s.test_x, s.test_y,
                                      **eval_kwargs(group, cfg))
    return group.teacher_test


def test_best(group: Group, run: Run) -> tuple[dict, torch.nn.Module]:
    """Test results of the weights kept in best.pt (chosen on validation, or the last epoch's)."""
    best = ckpt_io.load_checkpoint(run.out / "best.pt")
    model = build_model(run.spec).to(group.device)
    model.load_state_dict(best["model"])
    s = group.splits
    test = evaluate(model, run.learner.preprocess, s.test_x, s.test_y,
                    **{**eval_kwargs(group, run.cfg), "channels_last": False})
    return test, model


def fidelity(student_probs: torch.Tensor, teacher_probs: torch.Tensor) -> dict:
    """Top-1 agreement with the teacher and mean KL(teacher || student) on the test set (Stanton et al. 2021)."""
    return {"teacher_agreement": agreement(teacher_probs.argmax(1), student_probs.argmax(1)),
            "teacher_kl": mean_kl(teacher_probs, student_probs)}


def final_metrics(group: Group, run: Run, test: dict, model: torch.nn.Module) -> dict:
    from distill.models.info import count_params, forward_gflops

    s, cfg = group.splits, run.cfg
    extra = {}
    if run.teacher_info is not None:
        teacher = teacher_test(group, cfg)
        run.teacher_info["test_accuracy"] = teacher["accuracy"]
        extra = fidelity(test["probs"], teacher["probs"])
    return {"role": cfg.role, "arch": cfg.arch, "method": getattr(cfg, "effective_method", None),
            "params": count_params(model), "gflops": forward_gflops(model.float(), run.spec["input_size"]),
            "test_accuracy": test["accuracy"], "per_class_accuracy": dict(zip(s.classes, test["per_class"])),
            "best_val_accuracy": None if run.best_val < 0 else run.best_val, "epochs": run.epoch,
            "wall_seconds": run.wall_seconds + time.perf_counter() - run.started,
            "train_images_per_second": run.train_images / max(run.train_seconds, 1e-9),
            "first_epoch_seconds": run.first_epoch_seconds, "steady_images_per_second": steady_throughput(run),
            "trained_with": [r.out.name for r in group.runs if r is not run],  # they share wall time and speed
            "dataset": s.source if hasattr(s, "source") else cfg.data, "train_images": len(s.train_x),
            "test_images": len(s.test_x), "device": device_name(group.device), "teacher": run.teacher_info,
            **extra, "method_options": run.learner.method.option_values(), "eval_weights": run.eval_weights,
            "tta": cfg.tta, "seed": cfg.seed, "changes": run.changes,
            "finetune": cfg.finetune() if isinstance(cfg, C.TeachConfig) else None,
            "predictions": PREDICTIONS_FILE}


def add_gains(group: Group, metrics: list[dict], probs: list[torch.Tensor]) -> None:
    """Each student's gain over the baseline of its arch trained in the same group (the same batches),
    paired image by image on the test set: points, 95% interval and McNemar's exact p."""
    labels = group.splits.test_y.to(group.device)
    baselines = {m["arch"]: i for i, m in enumerate(metrics) if m["role"] == "baseline"}
    for m, p in zip(metrics, probs):
        i = baselines.get(m["arch"])
        if m["role"] != "student" or i is None or p is None:
            continue
        m.update(baseline=group.runs[i].out.name, **gain_record(p.argmax(1) == labels, probs[i].argmax(1) == labels))


def weak_teacher_line(student: dict, baseline: dict | None) -> str | None:
    """The line that says a student's teacher tests below the baseline trained beside it (without one, below
    the student itself): such a teacher cannot teach. None for every other run."""
    teacher = student.get("teacher") or {}
    reference = (student["baseline"], baseline["test_accuracy"]) if baseline else ("this student itself",
                                                                                   student["test_accuracy"])
    return weak_teacher(f"the teacher {teacher.get('path')}", teacher.get("test_accuracy"), *reference)


def warn_weak_teachers(group: Group, metrics: list[dict]) -> None:
    """Said at the end of a run, under its result line: a gain or loss next to a weak teacher misleads."""
    by_name = {run.out.name: m for run, m in zip(group.runs, metrics)}
    for run, m in zip(group.runs, metrics):
        line = weak_teacher_line(m, by_name.get(m.get("baseline")))
        if line:
            run.logger.result(f"{run.out.name}: {line}")


def write_predictions(group: Group, run: Run, probs: torch.Tensor) -> None:
    """Per test image: label, top-1 and probabilities, written atomically like every file of a run."""
    s = group.splits
    ckpt_io.save_atomic(predictions_record(s.classes, s.test_y, probs, run.cfg.tta), run.out / PREDICTIONS_FILE)


def method_text(metrics: dict) -> str:
    """How a run learned, in a few characters: teacher, baseline, or its method with every option it used, each
    by the symbol its method declares (kd T=4 α=0.9)."""
    if metrics["role"] != "student":
        tuned = metrics.get("finetune")  # a teacher's fine-tuning schedule
        return str(metrics["role"]) + (f": fine-tuned {C.finetune_text(tuned)}" if tuned else "")
    symbols = option_symbols(str(metrics["method"]))
    options = (f"{symbols.get(k) or k}={v:g}" if isinstance(v, float) else f"{k}={v}"
               for k, v in (metrics.get("method_options") or {}).items())
    return " ".join((str(metrics["method"]), *options))


def option_symbols(method: str) -> dict[str, str | None]:
    """Each option of a method by the symbol its paper writes it with (None: by its name)."""
    cls = METHODS.get(method)
    return {} if cls is None else {f.name: f.metadata.get("symbol") for f in dataclasses.fields(cls.Options)}


def hparams(metrics: dict) -> dict:
    """The HPARAMS row of a run: how it learned and its size."""
    return dict(zip(HPARAM_COLUMNS, (method_text(metrics), round(metrics["params"] / 1e6, 3))))


def summary_markdown(run: Run, metrics: dict) -> str:
    """A one-run table for TensorBoard's TEXT tab: the final figures legible without any clicking."""
    method = method_text(metrics) if metrics["role"] == "student" else "cross-entropy, no teacher"
    rows = [("role", metrics["role"]), ("arch", metrics["arch"]), ("method", method),
            ("params", f"{metrics['params'] / 1e6:.2f} M"), ("test accuracy", f"{100 * metrics['test_accuracy']:.2f}%"),
            ("epochs", str(metrics["epochs"])), ("wall time", f"{metrics['wall_seconds']:.0f} s")]
    if metrics.get("finetune"):
        rows.insert(3, ("fine-tuned", C.finetune_text(metrics["finetune"])))
    if metrics.get("gain_over_baseline") is not None:
        lo, hi = metrics["gain_interval"] or (None, None)  # no interval below 2 test images
        interval = f" (95% CI {lo:+.2f} to {hi:+.2f}, McNemar p = {metrics['mcnemar_p']:.3g})" if lo is not None else ""
        rows.append((f"gain over {metrics['baseline']}", f"{metrics['gain_over_baseline']:+.2f} points{interval}"))
    if metrics.get("teacher_agreement") is not None:
        rows.append(("top-1 agreement with the teacher", f"{100 * metrics['teacher_agreement']:.2f}%"))
        rows.append(("teacher test accuracy", f"{100 * metrics['teacher']['test_accuracy']:.2f}%"))
    return "\n".join([f"**{run.out.name}**", "", "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


def log_summary(run: Run, metrics: dict, probs: torch.Tensor | None, labels: torch.Tensor) -> None:
    """The run's final figures in TensorBoard: test accuracy (and a student's gain and agreement) at its last
    epoch, a TEXT summary, the confusion matrix and the HPARAMS row, whose metrics are those figures."""
    figures = {TEST_TAG: metrics["test_accuracy"]}
    for key, tag in (("gain_over_baseline", GAIN_TAG), ("teacher_agreement", AGREEMENT_TAG)):
        if metrics.get(key) is not None:
            figures[tag] = metrics[key]
    run.logger.scalars(run.epoch, figures)
    run.logger.text("summary", summary_markdown(run, metrics), run.epoch)
    if probs is not None:
        classes = run.classes
        counts = confusion_counts(labels, probs.argmax(1), len(classes))
        title = f"{run.out.name}: {100 * metrics['test_accuracy']:.2f}% test"
        run.logger.image("test/confusion_matrix", confusion_png(counts, classes, title), run.epoch)
    run.logger.hparams(hparams(metrics))
