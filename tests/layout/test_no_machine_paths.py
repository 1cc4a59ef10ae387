"""No tracked file names one development machine's absolute paths (its home, its work or shared-data folders):
a command or a default copied from the repository must work on any machine (`../shared`, `~`, or a variable).
Scratch folders under /tmp in example commands are fine: every machine has one."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# One development machine's folders. Each pattern is written so that it does not match its own text (the class
# "[k]" in "wor[k]"), so this file is scanned like any other. Not after a word character, a dot, ':' or '/': a URL's
# path (https://host/home/...) or a relative one (../shared/...) is not a machine's absolute path.
MACHINE_PATHS = re.compile(r"(?<![\w.:/~-])(/wor[k]/|/roo[t]/|/hom[e]/[\w.-]+/|/User[s]/[\w.-]+/|/tmp/bar[s]\b)")


def tracked_text_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, timeout=60)
    assert listed.returncode == 0, f"git ls-files failed in {REPO}: {listed.stderr.decode(errors='replace')}"
    return [REPO / name for name in listed.stdout.decode().split("\0") if name and (REPO / name).is_file()]


def text_of(path: Path) -> str | None:
    """The file's text, or None for a binary file (a NUL byte, or not UTF-8): images, checkpoints."""
    data = path.read_bytes()
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def test_no_tracked_file_names_a_machine_s_absolute_path():
    files = tracked_text_files()
    assert any(path.name == "README.md" for path in files)  # the listing is the repository's, not an empty one
    hits = []
    for path in files:
        text = text_of(path)
        for number, line in enumerate((text or "").splitlines(), 1):
            found = MACHINE_PATHS.search(line)
            if found:
                hits.append(f"{path.relative_to(REPO)}:{number}: {found.group(0)} in {line.strip()[:120]}")
    assert not hits, "absolute paths of one machine (use ../shared, ~ or a variable):\n" + "\n".join(hits)


def test_the_pattern_finds_what_it_is_for_and_leaves_the_rest():
    # Written with "@" for the leading "/", so that these examples are not hits of the scan above.
    for line in ("--data @work/shared/data/x.tar.gz", "PYTHONPATH=@work/main", "cd @root/src", "@home/ana/data",
                 "'@Users/bo/cifar'", "ls @tmp/bars/data"):
        assert MACHINE_PATHS.search(line.replace("@", "/")), line
    for line in ("--out @tmp/smoke2", "../shared/data/x.tar.gz", "~/.cache/distill", "https://example.org/home/a/b",
                 "$WORK/runs", "@tmp/barsoom", "bench@work/x"):
        assert not MACHINE_PATHS.search(line.replace("@", "/")), line
