"""distill installed as users and the GPU machine install it (not editable), then run from the repository root,
where `python -m` puts the checkout's own distill/ first on sys.path, and from elsewhere."""

from __future__ import annotations

import importlib.util
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """`pip install --no-deps --target SITE` of a copy of the checkout (pip builds in the source folder)."""
    root = tmp_path_factory.mktemp("install")
    src = root / "src"
    for name in ("distill", "teachers", "students"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    offline = ["--no-index", "--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", *offline,
                    "--target", str(root / "site"), str(src)], check=True, capture_output=True, timeout=300)
    return root / "site"


def bare(site_dir: Path, *args: str, cwd: Path, script: bool = False) -> subprocess.CompletedProcess:
    """Python with only SITE and the dependencies on the path: -S skips site-packages' .pth files, so this
    environment's editable install of distill (a .pth finder) cannot answer in place of SITE."""
    deps = site.getsitepackages()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site_dir), *deps])}
    command = [str(site_dir / "bin" / "distill"), *args] if script else [sys.executable, "-S", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_python_m_distill_from_the_repository_root(installed):
    version = bare(installed, "-m", "distill", "--version", cwd=REPO)
    assert version.returncode == 0 and "distill 0.1.0" in version.stdout, version.stderr
    models = bare(installed, "-m", "distill", "models", cwd=REPO)  # imports distill.teachers and .students
    assert models.returncode == 0, models.stderr
    assert "resnet50" in models.stdout and "resnet20" in models.stdout


def test_the_installed_command_lists_the_models_from_the_repository_root(installed):
    result = bare(installed, "models", cwd=REPO, script=True)
    assert result.returncode == 0, result.stderr
    assert "resnet50" in result.stdout and "resnet20" in result.stdout


@pytest.mark.parametrize("where", ["root", "elsewhere"])
def test_teachers_and_students_import_wherever_python_starts(installed, tmp_path, where):
    code = "import distill.teachers, distill.students; print(distill.teachers.__file__, distill.students.__file__)"
    result = bare(installed, "-c", code, cwd=REPO if where == "root" else tmp_path)
    assert result.returncode == 0, result.stderr
    teachers, students = map(Path, result.stdout.split())
    # From the root the checkout shadows the installed copy, whole: its own teachers/ and students/.
    expected = (REPO / "teachers", REPO / "students") if where == "root" else \
        (installed / "distill" / "teachers", installed / "distill" / "students")
    assert (teachers.parent, students.parent) == expected
