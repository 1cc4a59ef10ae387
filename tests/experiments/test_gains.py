"""A student's gain over its baseline is one record, whichever path computes it: `train_group` for runs trained
together (metrics.json, from the test probabilities) and `distill compare` for finished runs (from their
predictions.pt) give the same points, interval and McNemar p for the same two runs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from distill import stats
from distill.engine.results import add_gains, summary_markdown, write_predictions
from distill.experiments.links import add_gain
from distill.experiments.runs import FinishedRun, Predictions

CLASSES = ["apple", "boat", "cloud"]


def probabilities(labels: torch.Tensor, correct: list[int]) -> torch.Tensor:
    """A model's test probabilities: right where `correct` says 1, else it says label + 1."""
    top1 = torch.where(torch.tensor(correct, dtype=torch.bool), labels, (labels + 1) % len(CLASSES))
    return torch.full((len(labels), len(CLASSES)), 0.1).index_put_((torch.arange(len(labels)), top1),
                                                                    torch.tensor(0.8))


def both_paths(tmp_path: Path, student: list[int], baseline: list[int]) -> tuple[dict, dict]:
    """The student's metrics.json entries (trained beside its baseline) and its `distill compare` row."""
    labels = torch.arange(len(student)) % len(CLASSES)
    probs = [probabilities(labels, student), probabilities(labels, baseline)]
    runs = [SimpleNamespace(out=tmp_path / name, cfg=SimpleNamespace(tta=False)) for name in ("kd", "base")]
    group = SimpleNamespace(splits=SimpleNamespace(test_y=labels, classes=CLASSES), device=torch.device("cpu"),
                            runs=runs)
    metrics = [{"role": "student", "arch": "resnet8"}, {"role": "baseline", "arch": "resnet8"}]
    add_gains(group, metrics, probs)
    finished = []
    for run, p, correct in zip(runs, probs, (student, baseline)):
        run.out.mkdir()
        write_predictions(group, run, p)  # the file a finished run leaves
        finished.append(FinishedRun(run.out, {"name": run.out.name, "test_accuracy": sum(correct) / len(correct)}, {}))
    finished[0].baseline = finished[1]
    add_gain(finished[0], Predictions([]))
    return metrics[0], finished[0].row


@pytest.mark.parametrize(("student", "baseline", "points", "interval", "p"), [
    # d = [0, 1, 1, 0, 0, -1, 1]: b = 3, c = 1, p = 2 P(X <= 1), X ~ B(4, 1/2) = 2 * 5 / 16
    ([1, 1, 1, 1, 0, 0, 1], [1, 0, 0, 1, 0, 1, 0], 100 * 2 / 7, True, 0.625),
    ([1], [0], 100.0, False, 1.0),  # one test image: no interval, in either path
])
def test_runs_trained_together_and_compare_record_the_same_gain(tmp_path, student, baseline, points, interval, p):
    in_group, compared = both_paths(tmp_path, student, baseline)
    fields = stats.GAIN_FIELDS
    assert {k: in_group[k] for k in fields} == {k: compared[k] for k in fields}  # exactly: no rounding in one
    assert in_group["baseline"] == compared["baseline_run"] == "base"
    assert in_group["gain_over_baseline"] == pytest.approx(points) and in_group["mcnemar_p"] == pytest.approx(p)
    expected = stats.paired_gain(student, baseline)
    assert in_group["gain_interval"] == ([expected.low, expected.high] if interval else None)


def test_without_predictions_compare_gives_the_accuracy_difference_alone():
    assert stats.accuracy_gain_record(0.9, 0.85) == {"gain_over_baseline": pytest.approx(5.0), "gain_interval": None,
                                                     "mcnemar_p": None}


def test_the_tensorboard_summary_reads_a_gain_without_an_interval(tmp_path):
    in_group, _ = both_paths(tmp_path, [1], [0])
    metrics = {**in_group, "arch": "resnet8", "method": "kd", "params": 78_000, "test_accuracy": 1.0, "epochs": 1,
               "wall_seconds": 2.0, "method_options": {}}
    text = summary_markdown(SimpleNamespace(out=tmp_path / "kd"), metrics)
    assert "| gain over base | +100.00 points |" in text
