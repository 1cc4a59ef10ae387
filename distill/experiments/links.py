"""What the finished runs say about each other: each student's baseline and teacher, its gain over the
baseline (with both runs' predictions.pt: image by image, its 95% interval and McNemar's exact test), its
fidelity to the teacher (top-1 agreement and KL(teacher || student)), teachers too weak to teach, and runs
that differ only in their seed aggregated (mean +- sd, paired t-test across seeds).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from distill import stats
from distill.experiments.runs import FinishedRun, Predictions, experiment, finite, same_experiment, shown_experiment


def find_baseline(run: FinishedRun, runs: list[FinishedRun]) -> FinishedRun | None:
    """The baseline of the same arch in the same experiment folder (runs of another experiment may use
    another recipe or data), of the same seed where there is one; else the arch's only baseline."""
    candidates = [b for b in same_experiment(runs, run, "baseline") if b.row["arch"] == run.row["arch"]]
    same_seed = [b for b in candidates if b.row["seed"] == run.row["seed"]]
    for found in (same_seed, candidates):
        if len(found) == 1:
            return found[0]
    return None


def find_teacher(run: FinishedRun, runs: list[FinishedRun]) -> FinishedRun | None:
    """The teacher run in the student's experiment whose folder holds the checkpoint it was distilled from
    (by resolved path, then by folder name: the path may be relative to another working folder), else the
    experiment's only teacher if its arch fits. Baselines are measured against the only teacher too."""
    teachers = same_experiment(runs, run, "teacher")
    given = run.metrics.get("teacher") or {}
    if given.get("path"):
        folder = Path(given["path"]).parent
        try:
            target = folder.resolve()
        except (OSError, ValueError):  # a NUL byte in the path, say: it names no folder here
            target = None
        for match in (lambda t: t.folder.resolve() == target, lambda t: t.folder.name == folder.name):
            found = [t for t in teachers if match(t)]
            if len(found) == 1:
                return found[0]
    arch = given.get("arch")
    if len(teachers) == 1 and arch in (None, teachers[0].row["arch"]):
        return teachers[0]
    return None


def add_gain(run: FinishedRun, store: Predictions) -> None:
    """Gain over the baseline in points; with both runs' predictions, its 95% interval and McNemar's p (the record
    the two runs' metrics.json holds when they trained together: stats.gain_record)."""
    row, base = run.row, run.baseline
    row |= {**dict.fromkeys(stats.GAIN_FIELDS), "baseline_run": None}
    if base is None or run.accuracy is None or base.accuracy is None:
        return
    row["baseline_run"] = base.name
    pair = store.pair(run, base, "no interval or p for its gain")
    if pair is None:
        row |= stats.accuracy_gain_record(run.accuracy, base.accuracy)
    else:
        row |= stats.gain_record(*((p["top1"] == p["labels"]) for p in pair))


def add_fidelity(run: FinishedRun, store: Predictions) -> None:
    """Top-1 agreement with the teacher and mean KL(teacher || student) on the test images."""
    row, teacher = run.row, run.teacher
    row |= {"teacher_agreement": None, "teacher_kl": None, "teacher_run": teacher.name if teacher else None}
    pair = store.pair(run, teacher, "no agreement or KL") if teacher else None
    if pair is not None:
        mine, theirs = pair
        row["teacher_agreement"] = stats.agreement(mine["top1"], theirs["top1"])
        row["teacher_kl"] = finite(stats.mean_kl(theirs["probs"], mine["probs"]))  # NaN probabilities: no KL


def link_runs(runs: list[FinishedRun], store: Predictions) -> None:
    for run in runs:
        role = run.row["role"]
        run.baseline = find_baseline(run, runs) if role == "student" else None
        run.teacher = find_teacher(run, runs) if role in ("student", "baseline") else None
        add_gain(run, store)
        add_fidelity(run, store)


def weak_teacher_notes(runs: list[FinishedRun]) -> list[str]:
    """A note per teacher that tests below the baseline of students it taught (below the student itself where
    there is no baseline), the students it concerns named in front. The teacher's accuracy is the one the
    student recorded (on its own test split), else its run's."""
    students: dict[str, list[str]] = defaultdict(list)
    for run in (r for r in runs if r.row["role"] == "student"):
        given = run.metrics.get("teacher") or {}
        accuracy = finite(given.get("test_accuracy"))
        accuracy = run.teacher.accuracy if accuracy is None and run.teacher else accuracy
        teacher = f"the teacher {run.teacher.name if run.teacher else given.get('path')}"
        base = run.baseline if run.baseline and run.baseline.accuracy is not None else None
        reference = (base.name, base.accuracy) if base else (f"{run.name} itself", run.accuracy)
        sentence = stats.weak_teacher(teacher, accuracy, *reference)
        if sentence:
            students[sentence].append(run.name)
    return [f"{', '.join(names)}: {sentence}" for sentence, names in students.items()]


def seed_groups(runs: list[FinishedRun], notes: list[str]) -> list[list[FinishedRun]]:
    """Runs of one experiment, role, arch and method with two or more seeds, one run per seed."""
    groups: dict[tuple, list[FinishedRun]] = defaultdict(list)
    for run in runs:
        if run.row["seed"] is not None and run.accuracy is not None:
            r = run.row
            groups[(experiment(r), r["role"], r["arch"], r["method"])].append(run)
    kept = []
    for members in groups.values():
        seeds = [m.row["seed"] for m in members]
        if len(set(seeds)) != len(seeds):  # e.g. two temperatures of one method: not repeats of one recipe
            notes.append(f"{', '.join(m.name for m in members)}: a seed repeats; not aggregated over seeds")
        elif len(seeds) > 1:
            kept.append(sorted(members, key=lambda m: m.row["seed"]))
    return kept


def aggregate(members: list[FinishedRun], root: Path) -> dict:
    """Mean +- sd of test accuracy over seeds; for students also of the gain over the same-seed baseline,
    and the paired t-test of student against baseline accuracies (one pair per seed)."""
    first = members[0].row
    mean, std = stats.mean_std([m.accuracy for m in members])
    pairs = [(m.accuracy, m.baseline.accuracy) for m in members
             if m.baseline is not None and m.baseline.row["seed"] == m.row["seed"] and m.baseline.accuracy is not None]
    entry = {"experiment": shown_experiment(first, root), "role": first["role"], "arch": first["arch"],
             "method": first["method"], "seeds": [m.row["seed"] for m in members],
             "runs": [m.name for m in members], "test_accuracy_mean": mean, "test_accuracy_std": std,
             "gain_mean": None, "gain_std": None, "paired_seeds": len(pairs), "t": None, "p": None, "df": None}
    if pairs:
        gain_mean, gain_std = stats.mean_std([100 * (s - b) for s, b in pairs])
        t, p, df = stats.paired_t_test([s for s, _ in pairs], [b for _, b in pairs])
        entry |= {"gain_mean": gain_mean, "gain_std": gain_std, "t": finite(t), "p": p, "df": df}  # JSON has no inf
    return entry
