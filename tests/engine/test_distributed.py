"""torchrun with 2 CPU processes (gloo on loopback): sharded global batches, one writer, agreed stops,
resume, and --sync-bn matching a single process."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from distill.engine.checkpoint import load_checkpoint
from distill.engine.loop import rank_batch
from runhelpers import child_env, run_args, spawn, wait_for
from test_teach import scalars

TORCHRUN = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2"]
# No augmentation: every rank draws crops for its own shard from the same seeded RNG, so augmented
# batches differ from a single process's by design. Everything else must agree.
SAME_MATH = ["--augment", "none", "--deterministic"]
# float32 sums in another order (two shards, then gloo's all-reduce) differ by ~1e-7 relative per
# operation; 15 SGD steps amplify that to ~3e-6 (measured). 1e-4 leaves 30x headroom, while per-shard
# BatchNorm statistics (no --sync-bn) move the weights by O(1) relative: the check cannot pass by luck.
RTOL = 1e-4


def torchrun(args: list, slow: float = 0.0, **env: str):
    return spawn(args, child_env(GLOO_SOCKET_IFNAME="lo", **env), launcher=TORCHRUN, slow=slow)


def finish(proc) -> str:
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    return err


def worst_relative_difference(a: Path, b: Path) -> float:
    """Largest |a - b| / max|a| over the float tensors of two runs' last.pt; integer buffers must match."""
    wa, wb = (load_checkpoint(run / "last.pt")["model"] for run in (a, b))
    worst = 0.0
    for name, x in wa.items():
        if not x.is_floating_point():
            assert torch.equal(x, wb[name]), name
            continue
        worst = max(worst, ((x - wb[name]).abs().max() / x.abs().max().clamp(min=1e-12)).item())
    return worst


def curve(run: Path, tag: str) -> list[float]:
    acc = EventAccumulator(str(run))
    acc.Reload()
    return [e.value for e in acc.Scalars(tag)]


def one_writer(out: Path, launches: int) -> None:
    """Rank 0 wrote every file, once: no second events file per launch, no per-rank copies."""
    names = sorted(p.name for p in out.iterdir())
    events = [n for n in names if n.startswith("events.out.tfevents")]
    assert len(events) == launches, names
    kept = [".lock", "best.pt", "config.json", "last.pt", "metrics.json", "predictions.pt"]
    assert [n for n in names if n not in events] == kept


def test_rank_batch_splits_each_global_batch_into_disjoint_shards():
    class Loop:
        batch_size, world_size = 8, 2

    perm = torch.randperm(40)
    for step in range(5):
        shards = []
        for rank in range(2):
            Loop.rank = rank
            shards.append(rank_batch(perm, step, Loop))
        assert torch.equal(torch.cat(shards), perm[step * 8:(step + 1) * 8]) and len(shards[0]) == 4


def test_sync_bn_run_interrupted_and_resumed_matches_one_process(cli, tiny_data, tmp_path):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    assert cli(*run_args("teach", tiny_data, single, 3, *SAME_MATH)).code == 0

    proc = torchrun(run_args("teach", tiny_data, ddp, 3, *SAME_MATH, "--sync-bn"), slow=0.2)
    wait_for(lambda: (ddp / "last.pt").exists(), proc, timeout=120)
    proc.send_signal(signal.SIGINT)  # like Ctrl-C: torchrun forwards it to both workers
    _, err = proc.communicate(timeout=120)
    assert err.count("error: interrupted") == 1, err[-3000:]  # both ranks stopped, rank 0 spoke
    assert "Resume with: torchrun <same options> -m distill teach" in err
    assert load_checkpoint(ddp / "last.pt")["epoch"] in (1, 2)

    finish(torchrun(["teach", "--out", ddp, "--resume"]))
    assert load_checkpoint(ddp / "last.pt")["epoch"] == 3
    assert worst_relative_difference(single, ddp) < RTOL
    one_writer(ddp, launches=2)
    assert scalars(ddp)["loss/train"] == [1, 2, 3]  # appended across the two launches, no duplicate epoch
    # The logged epoch loss is reduced over both ranks: the single process's figure.
    for ours, theirs in zip(curve(ddp, "loss/train"), curve(single, "loss/train")):
        assert abs(ours - theirs) <= RTOL * abs(theirs)

def test_student_without_sync_bn_writes_one_set_and_its_batch_norm_differs(cli, tiny_data, tmp_path):
    teacher, single, ddp = tmp_path / "teacher", tmp_path / "single", tmp_path / "ddp"
    assert cli(*run_args("teach", tiny_data, teacher, 1)).code == 0
    args = ("--teacher", teacher / "best.pt", *SAME_MATH)
    assert cli(*run_args("student", tiny_data, single, 2, *args)).code == 0
    finish(torchrun(run_args("student", tiny_data, ddp, 2, *args)))
    one_writer(ddp, launches=1)
    assert load_checkpoint(ddp / "last.pt")["role"] == "student"
    # Per-rank BatchNorm statistics over 4 images instead of 8: a real difference, far beyond RTOL.
    assert worst_relative_difference(single, ddp) > 100 * RTOL


def worst_method_state_difference(a: Path, b: Path) -> float:
    """worst_relative_difference for the method's own modules (connectors, embedding heads, memory banks)."""
    sa, sb = (load_checkpoint(run / "last.pt")["method_state"] for run in (a, b))
    assert sa.keys() == sb.keys()
    return max(((x - sb[k]).abs().max() / x.abs().max().clamp(min=1e-12)).item()
               for k, x in sa.items() if x.is_floating_point())


@pytest.mark.parametrize("method", [("--method", "fitnet"), ("--method", "crd", "--crd-negatives", "16",
                                                               "--crd-dim", "16")], ids=["fitnet", "crd"])
def test_a_method_with_modules_of_its_own_trains_one_copy_of_them_under_torchrun(method, cli, tiny_teacher,
                                                                                  tmp_path):
    """A connector or CRD's heads sit outside the student's DDP wrapper: without averaging their gradients
    each process trained its own copy (rank 0's was saved) and --sync-bn could not match one process. CRD also
    draws its negatives for the global batch, so two processes draw what one would."""
    data, best = tiny_teacher
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    args = ("--teacher", best, "--any-teacher", *method, *SAME_MATH, "--sync-bn", "--batch-size", "16")
    assert cli(*run_args("student", data, single, 1, *args)).code == 0
    finish(torchrun(run_args("student", data, ddp, 1, *args)))
    # Two steps of 16: measured 2e-6 (CRD) and 1e-4 (FitNets' connector; its weight of 100 scales the float
    # noise); without the averaging 0.5 to 120. Longer runs of this tiny set grow the noise (CRD's exp(s / 0.07)
    # scores: 7e-3 after five steps of 8), so two steps keep the check sharp.
    assert worst_relative_difference(single, ddp) < 10 * RTOL
    assert worst_method_state_difference(single, ddp) < 10 * RTOL
