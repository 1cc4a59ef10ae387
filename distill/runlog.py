"""What a run tells the world: TensorBoard scalars, console progress, the hparams summary.

Every scalar uses the epoch as its step, so runs of one experiment overlay in one chart.
"""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import summary_v2 as hp
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from distill.errors import UserError

# One chart per metric across every run of the experiment (TensorBoard's CUSTOM SCALARS tab).
CUSTOM_LAYOUT = {
    "distill": {
        "test accuracy (all runs)": ["Multiline", [r"accuracy/test"]],
        "validation accuracy (all runs)": ["Multiline", [r"accuracy/val$"]],
    }
}


# HPARAMS: the columns a user compares first, in this order, and the metrics beside them.
HPARAM_COLUMNS = ("role", "arch", "method", "temperature", "alpha", "epochs", "lr", "params_M", "seed")
HPARAM_METRICS = (("hparam/test_accuracy", "test accuracy"), ("hparam/gain_over_baseline", "gain (points)"),
                  ("hparam/teacher_agreement", "agreement with teacher"))


def hparam_key(column: str) -> str:
    """TensorBoard sorts HPARAMS columns by name and ticks the first few: a numbered name keeps our order,
    and the column still reads as its display name."""
    return f"{HPARAM_COLUMNS.index(column) + 1:02d}_{column}"


def hparams_experiment() -> Summary:
    """The experiment summary every run writes: the same columns and metrics, in a fixed order."""
    return hp.hparams_config_pb([hp.HParam(hparam_key(name), display_name=name) for name in HPARAM_COLUMNS],
                                [hp.Metric(tag, display_name=label) for tag, label in HPARAM_METRICS])


def png_summary(tag: str, png: bytes) -> Summary:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        width, height = image.size
    return Summary(value=[Summary.Value(tag=tag, image=Summary.Image(height=height, width=width, colorspace=4,
                                                                          encoded_image_string=png))])


def open_writer(out, purge_step: int | None) -> SummaryWriter:
    """The run's TensorBoard writer; an unwritable folder or a full disk is one line, not a traceback."""
    try:
        return SummaryWriter(str(out), purge_step=purge_step)
    except OSError as exc:
        raise UserError(f"cannot write TensorBoard events in {out} ({exc.strerror or exc}): free disk space or "
                        f"make the folder writable, or choose another --out") from None


class RunLogger:
    def __init__(self, out, name: str, epochs: int, quiet: bool, purge_step: int | None, enabled: bool = True,
                 live: bool = True):
        self.enabled = enabled  # False on ranks other than 0: one writer per run
        self.name, self.epochs, self.quiet = name, epochs, quiet
        self.console = Console(stderr=False, highlight=False)
        self.writer = open_writer(out, purge_step) if enabled else None
        if self.writer is not None and purge_step in (None, 0):
            self.writer.add_custom_scalars(CUSTOM_LAYOUT)
        # `live`: this logger may draw the progress bar (a group of runs shows one, its first run's).
        live = live and enabled and not quiet and sys.stdout.isatty()
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), console=self.console, transient=True) if live else None
        self.task = None

    def start_epoch(self, epoch: int, steps: int, done: int = 0) -> None:
        if self.progress is None:
            return
        if self.task is None:
            self.progress.start()
            self.task = self.progress.add_task("", total=steps)
        self.progress.reset(self.task, total=steps, completed=done,
                            description=f"{self.name} epoch {epoch + 1}/{self.epochs}")

    def step(self, step: int, steps: int) -> None:
        if self.progress is not None and (step % 5 == 0 or step == steps):
            self.progress.update(self.task, completed=step)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer is None:
            return
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def say(self, text: str) -> None:
        if self.enabled and not self.quiet:
            self.console.print(text, soft_wrap=True)

    def result(self, text: str) -> None:
        """The final result line: printed under --quiet too (--quiet drops progress, not results)."""
        if self.enabled:
            self.console.print(text, soft_wrap=True)

    def epoch_line(self, epoch: int, s: dict) -> None:
        val = f"val {s['accuracy/val']:.4f}" if s.get("accuracy/val") == s.get("accuracy/val") else "val -"
        self.say(f"{self.name} epoch {epoch}/{self.epochs}: loss {s['loss/train']:.4f} "
                 f"train {s['accuracy/train']:.4f} {val} lr {s['lr']:.4g} "
                 f"{s['throughput/train_images_per_second']:.0f} img/s {s['time/epoch_seconds']:.1f}s")

    def text(self, tag: str, markdown: str, step: int) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, markdown, step)
            self.writer.flush()

    def image(self, tag: str, png: bytes, step: int) -> None:
        """A PNG (already drawn, e.g. by matplotlib) into the IMAGES tab."""
        if self.writer is not None:
            self.writer.file_writer.add_summary(png_summary(tag, png), step)
            self.writer.flush()

    def hparams(self, params: dict, metrics: dict) -> None:
        """Write the HPARAMS summary into this run's own event file (add_hparams would add a run). Every run
        declares the same columns in the same order (HPARAM_COLUMNS), so TensorBoard shows them first
        whichever run it reads the experiment from; a run without a column leaves it blank."""
        if self.writer is None:
            return
        # torch's own experiment summary would list only this run's columns, unordered: ours replaces it.
        _, start, end = hparams({hparam_key(k): v for k, v in params.items()}, metrics)
        for summary in (hparams_experiment(), start, end):
            self.writer.file_writer.add_summary(summary)
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, 0)
        self.writer.flush()

    def close(self) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.stop()
        if self.writer is not None:
            self.writer.close()
