"""Screenshots of what a user sees in TensorBoard for a folder of runs: SCALARS, TEXT, IMAGES and HPARAMS.

    python bench/tb_screenshots.py RUNS_DIR OUT_DIR [--width 1400] [--height 1000]

Starts `tensorboard --logdir RUNS_DIR` on a free localhost port, points headless Chromium (Debian's
`chromium` package: `apt-get install chromium`) at each tab and writes OUT_DIR/<tab>.png. Then look at
the pictures: the check is that teacher, student and baseline stand side by side with their final
accuracies legible and the gain's significance stated, without clicking anything.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

TABS = ("scalars", "custom_scalars", "text", "images", "hparams")
# Chromium as this machine's probe started it: no sandbox as root, and no background connections to
# Google's hosts, which a closed network refuses many at a time.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"tensorboard exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"tensorboard did not answer at {url} within {timeout:.0f} s")


def screenshot(chromium: str, url: str, out: Path, width: int, height: int) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                        "--virtual-time-budget=15000", f"--screenshot={out}", url],
                       check=True, capture_output=True, timeout=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, help="the folder tensorboard --logdir would get (e.g. a pipeline's --out)")
    ap.add_argument("out", type=Path, help="where <tab>.png go")
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=1000)
    args = ap.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("error: no chromium on PATH: install Debian's package (apt-get install chromium)")
    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(args.runs), "--port", str(port),
                             "--host", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}/"
        wait_until_up(base + "data/runs", proc)
        time.sleep(3)  # the first reload of the event files
        for tab in TABS:
            screenshot(chromium, f"{base}#{tab}", args.out / f"{tab}.png", args.width, args.height)
            print(args.out / f"{tab}.png")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
