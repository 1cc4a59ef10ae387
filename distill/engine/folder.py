"""A run's folder: where it is, whether it may be used, and the lock that keeps two processes out of it.

Rules: a folder holding a run (last.pt, best.pt or metrics.json) is only continued (--resume) or replaced
(--force); a forced restart removes the old results before it writes anything, so an interrupted
restart can never leave the old model behind to be reported or resumed under the new config; and a
live run holds an exclusive lock on its folder, which the kernel drops when the process dies.
"""

from __future__ import annotations

import fcntl
import os
import shlex
from pathlib import Path

from distill.front import config as C
from distill.errors import UserError

LOCK_FILE = ".lock"
# What a run writes; a forced restart removes them all before writing anything new.
RESULT_FILES = ("last.pt", "best.pt", "metrics.json", "predictions.pt", "config.json")


def default_out(cfg: C.TrainConfig) -> Path:
    runs = Path("runs") / f"{cfg.dataset}{'-coarse' if cfg.coarse_labels else ''}"  # one data set's runs together
    if cfg.role == "teacher":
        return runs / f"teacher-{cfg.arch}"
    if cfg.role == "baseline":
        return runs / f"baseline-{cfg.arch}"
    mixed = "-mix" if getattr(cfg, "mix", "none") != "none" else ""  # beside the same student without --mix
    return runs / f"student-{cfg.arch}-{cfg.method}{mixed}"


def holds_run(out: Path) -> bool:
    """A checkpoint or a result: something a new run must not silently replace (best.pt alone is a run whose
    first save stopped between best.pt and last.pt, e.g. on a full disk). A config.json alone is a run
    stopped before its first checkpoint: nothing to continue, nothing lost by starting again."""
    return any((out / name).exists() for name in ("last.pt", "best.pt", "metrics.json"))


def check_out(cfg: C.TrainConfig) -> Path:
    """The run folder, refusing to mix two runs in one unless the user says --resume or --force, and refusing
    a folder a live run holds. Writes nothing."""
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder: choose another --out")
    check_use(cfg, out)
    if (out / LOCK_FILE).exists() and probes_lock():
        RunLock(out).release()  # refused now if it is live, before any data is decoded (taken for real later)
    return out


def probes_lock() -> bool:
    """Whether this process may probe a run folder's lock: always alone, and only rank 0 under torchrun. Every
    rank runs the checks at the same moment, and two probes of one lock collide: each would see the other
    as a live run (rank 0 alone takes the lock for real)."""
    return os.environ.get("RANK", "0") == "0"


def check_use(cfg: C.TrainConfig, out: Path) -> None:
    if cfg.resume and not (out / "last.pt").exists():
        if (out / "best.pt").exists():
            raise UserError(f"nothing to resume in {out}: it holds best.pt but no last.pt (its run stopped during "
                            f"its first save); keep best.pt elsewhere if you want it, then start over with --force")
        raise UserError(f"nothing to resume in {out} (no last.pt): drop --resume to start a new run there")
    if holds_run(out) and not (cfg.resume or cfg.force):
        raise UserError(f"{out} already holds a run: add --resume to continue it or --force to start over")


class RunLock:
    """An exclusive flock on <out>/.lock for as long as the run's process lives (or until release())."""

    def __init__(self, out: Path):
        self.path = out / LOCK_FILE
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UserError(f"cannot write in the run folder {out} ({exc.strerror or exc}): "
                            f"make it writable or choose another --out") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            raise UserError(f"{out} is in use by another distill process that is still running: wait for it to "
                            f"finish (or stop it), or choose another --out") from None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the lock
            self.fd = None


def make_out(cfg: C.TrainConfig, out: Path) -> RunLock:
    """Create and lock the run folder once every check has passed; a forced restart clears the old run."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the run folder {out} ({exc.strerror or exc}): choose another --out") from None
    lock = RunLock(out)
    try:
        check_use(cfg, out)  # again under the lock: another process may have finished a run here meanwhile
    except UserError:
        lock.release()
        raise
    from distill.engine.checkpoint import remove_stale_temps  # torch: not needed for the checks above

    remove_stale_temps(out)  # left by a run killed mid-save; last.pt itself is always complete
    if not cfg.resume:
        # Starting over (--force, or a folder stopped before its first checkpoint): the old results go first.
        for old in [*(out / name for name in RESULT_FILES), *out.glob("events.out.tfevents.*")]:
            old.unlink(missing_ok=True)
    return lock


def resume_command(command: str, out: Path, launcher: str = "") -> str:
    """The command that continues a run, quoted for a shell (folders may hold spaces)."""
    return f"{launcher}distill {command} --out {shlex.quote(str(out))} --resume"


# The command that starts, and so continues, each kind of run.
COMMAND_OF_ROLE = {"teacher": "teach", "student": "student", "baseline": "student"}


def check_kind(out: Path, held: object, method: object, continued_as: tuple[str, ...]) -> None:
    """A run is continued only as the kind of run it is (teacher, student, baseline): as another, the command's own
    settings would hide what it was (a student's method, its teacher) and its records would change role half-way."""
    if held not in COMMAND_OF_ROLE or held in continued_as:
        return  # a record that names no kind (older, or edited): its settings are compared one by one instead
    how = f" ({method})" if held == "student" else ""
    raise UserError(f"{out} holds a {held} run{how}: resume it with {resume_command(COMMAND_OF_ROLE[held], out)}")
