"""What a run tells the world: TensorBoard scalars, console progress, the hparams summary.

Every scalar uses the epoch as its step, so runs of one experiment overlay in one chart. Accuracies are
written in percent, as `distill compare` and the result line print them (callers pass fractions).
"""

from __future__ import annotations

import sys
import time
from typing import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import summary_v2 as hp
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from distill.data.progress import live_bar_possible
from distill.errors import UserError

# The final figures. TensorBoard lists sections alphabetically and opens the first two: "accuracy" (train and
# validation per epoch) and "loss"; the final figures, one point per run, come after them in "result" (a lone
# point opening SCALARS drew a chart of dots on an axis of its own; HPARAMS shows them as a table).
TEST_TAG, GAIN_TAG, AGREEMENT_TAG = "result/test_accuracy", "result/gain_over_baseline", "result/teacher_agreement"
PERCENT_TAGS = frozenset({"accuracy/train", "accuracy/val", TEST_TAG, AGREEMENT_TAG})  # fractions in, % out
TRAIN_LOSS = "loss/train"  # plain cross-entropy; a distillation method's objective gets a chart of its own

# One chart per story across every run of the experiment (TensorBoard's CUSTOM SCALARS tab).
CUSTOM_LAYOUT = {
    "accuracy (%)": {
        "validation per epoch, all runs": ["Multiline", [r"^accuracy/val$"]],
        "train per epoch, all runs": ["Multiline", [r"^accuracy/train$"]],
    }
}

# HPARAMS: TensorBoard ticks the first five columns (at most) and gives each 10em: at 1400 px two columns fit
# beside the trial name and the three metrics, so there are two, and the rest of a recipe is in its TEXT summary.
HPARAM_COLUMNS = ("method", "params_M")
HPARAM_NAMES = {"params_M": "params (M)"}
HPARAM_METRICS = ((TEST_TAG, "test accuracy (%)"), (GAIN_TAG, "gain (points)"),
                  (AGREEMENT_TAG, "agreement with teacher (%)"))

PROGRESS_EVERY = 30.0  # seconds between progress lines where no live bar can be drawn
ESTIMATE_STEPS, ESTIMATE_SECONDS = 3, 2.0  # measured after the first step (which pays for warm-up)


def train_loss_tag(method: str) -> str:
    """A distilled run's loss is its method's whole objective (KD: (1 - alpha) CE + alpha T^2 KL): a chart of its
    own, not beside the plain cross-entropy of the teacher and the baselines as if the values compared."""
    return TRAIN_LOSS if method == "none" else f"{TRAIN_LOSS}_{method}"


def hparam_key(column: str) -> str:
    """TensorBoard sorts HPARAMS columns by name and ticks the first few: a numbered name keeps our order,
    and the column still reads as its display name."""
    return f"{HPARAM_COLUMNS.index(column) + 1:02d}_{column}"


def hparams_experiment() -> Summary:
    """The experiment summary every run writes: the same columns and metrics, in a fixed order."""
    return hp.hparams_config_pb([hp.HParam(hparam_key(name), display_name=HPARAM_NAMES.get(name, name))
                                 for name in HPARAM_COLUMNS],
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


def duration_text(seconds: float) -> str:
    """A rough duration as a person says it: 40 s, 4 min, 2.5 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 90 * 60 else f"{seconds / 3600:.1f} h"


def synchronize(device) -> None:
    """Wait for the work queued on `device`, so that the host clock has counted it (nothing to wait for on a CPU)."""
    if device is not None and device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


class Pace:
    """Training speed from the loop's step callback alone: the host clock is read at each step, and the device is
    waited for only before a figure is printed (the estimate once, then a line every PROGRESS_EVERY seconds
    where no live bar shows), so that queued GPU work is counted without a sync per step."""

    def __init__(self, name: str, say: Callable[[str], None], lines: bool, clock: Callable[[], float] = time.monotonic):
        self.name, self.say, self.lines, self.clock = name, say, lines, clock
        self.device, self.images_per_step = None, 0.0
        self.steps = 0  # steps seen by this process
        self.mark: tuple[float, int] | None = None  # (time, steps) the current measurement started at
        self.estimated = False

    def on_step(self, left: int, where: str) -> None:
        """After a step; `left`: steps still to train in the run, `where`: e.g. 'epoch 3/8 step 20/50'."""
        self.steps += 1
        now = self.clock()
        if self.mark is None:  # the first step pays for compiling and autotuning: measured from its end
            synchronize(self.device)
            self.mark = (self.clock(), self.steps)
            return
        since, steps_then = self.mark
        if self.estimated and (not self.lines or now - since < PROGRESS_EVERY):
            return
        if not self.estimated and (self.steps - steps_then < ESTIMATE_STEPS or now - since < ESTIMATE_SECONDS):
            return
        synchronize(self.device)
        now = self.clock()
        steps_per_second = (self.steps - steps_then) / max(now - since, 1e-9)
        rate = f"{steps_per_second * self.images_per_step:,.0f} img/s"
        eta = duration_text(left / steps_per_second)
        if self.estimated:
            self.say(f"{self.name} {where}: {rate}, about {eta} left")
        else:
            self.say(f"{self.name}: about {eta} of training on this device ({rate}, {left:,} steps to go)")
            self.estimated = True
        self.mark = (now, self.steps)


class RunLogger:
    def __init__(self, out, name: str, epochs: int, quiet: bool, purge_step: int | None, enabled: bool = True,
                 live: bool = True, method: str = "none"):
        self.enabled = enabled  # False on ranks other than 0: one writer per run
        self.name, self.epochs, self.quiet = name, epochs, quiet
        self.loss_tag = train_loss_tag(method)
        self.console = Console(stderr=False, highlight=False)
        self.writer = open_writer(out, purge_step) if enabled else None
        if self.writer is not None and purge_step in (None, 0):
            self.writer.add_custom_scalars(CUSTOM_LAYOUT)
        # `live`: this logger shows the progress (a group of runs shows one, its first run's): a live bar where
        # rich can draw one, else a line every PROGRESS_EVERY seconds (a pipe, a log file, TERM=dumb).
        shows = live and enabled and not quiet
        bar = shows and live_bar_possible(sys.stdout)
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), console=self.console, transient=True) if bar else None
        self.pace = Pace(name, self.say, lines=not bar) if shows else None
        self.task = None
        self.epoch = 0

    def start_epoch(self, epoch: int, steps: int, done: int = 0, images: int = 0, device=None) -> None:
        """`images`: training images per epoch (for images/s); `device`: what to wait for before timing."""
        self.epoch = epoch
        if self.pace is not None:
            self.pace.device, self.pace.images_per_step = device, images / max(steps, 1)
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
        if self.pace is not None:
            self.pace.on_step((self.epochs - self.epoch) * steps - step,
                              f"epoch {self.epoch + 1}/{self.epochs} step {step}/{steps}")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Fractions in; TensorBoard gets accuracies in percent and the loss under the name of what it is."""
        if self.writer is None:
            return
        for tag, value in values.items():
            tag = self.loss_tag if tag == TRAIN_LOSS else tag
            self.writer.add_scalar(tag, 100 * value if tag in PERCENT_TAGS else value, step)
        self.writer.flush()

    def say(self, text: str) -> None:
        if self.enabled and not self.quiet:
            self.console.print(text, soft_wrap=True)

    def result(self, text: str) -> None:
        """The final result line: printed under --quiet too (--quiet drops progress, not results)."""
        if self.enabled:
            self.console.print(text, soft_wrap=True)

    def epoch_line(self, epoch: int, s: dict) -> None:
        val = f"val {100 * s['accuracy/val']:.2f}%" if s.get("accuracy/val") == s.get("accuracy/val") else "val -"
        self.say(f"{self.name} epoch {epoch}/{self.epochs}: loss {s[TRAIN_LOSS]:.4f} "
                 f"train {100 * s['accuracy/train']:.2f}% {val} lr {s['lr']:.4g} "
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

    def hparams(self, params: dict) -> None:
        """Write the HPARAMS summary into this run's own event file (add_hparams would add a run). Every run
        declares the same columns and metrics in the same order, so TensorBoard shows them first whichever run
        it reads the experiment from; a run without a column leaves it blank. The metrics' values are the
        scalars of HPARAM_METRICS, written with the run's final figures."""
        if self.writer is None:
            return
        # torch's own experiment summary would list only this run's columns, unordered: ours replaces it.
        _, start, end = hparams({hparam_key(k): v for k, v in params.items()}, {})
        for summary in (hparams_experiment(), start, end):
            self.writer.file_writer.add_summary(summary)
        self.writer.flush()

    def close(self) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.stop()
        if self.writer is not None:
            self.writer.close()
