"""The command line itself: typos answer before torch is imported, names agree across the torch-free and the
torch side, --version and -h, flag pairs, help texts, `distill models` order and `distill evaluate`'s output."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import typing

import pytest
import torch
import typer

from distill import students
from distill import teachers
from distill.augment import ops as augment
from distill.augment import spec as augment_spec
from distill.front import names
from distill.front import config as C
from distill import package_version
from distill.front.cli import app
from distill.front.app import SUMMARIES
from distill.methods import METHODS, all_option_names
from distill.registry import Registry
from runhelpers import FAST, spawn


def imported_modules(importtime_stderr: str) -> set[str]:
    """Module names from `python -X importtime` lines: 'import time: self | cumulative | <indent>name'."""
    return {line.rsplit("|", 1)[1].strip() for line in importtime_stderr.splitlines()
            if line.startswith("import time:")}


@pytest.mark.parametrize("args, needle", [
    (["teach", "--arch", "resnet9"], "resnet9"),
    (["student", "--method", "dkdd"], "dkdd"),
    (["teach", "--augment", "strong,mixupp=1"], "mixupp"),
    (["teach", "--lr", "-1"], "--lr"),
    (["teach", "--config", "missing.toml"], "missing.toml"),
    (["teach", "--data", "/no/such/path"], "/no/such/path"),
    (["teach", "--precision", "fp8"], "fp8"),
    (["student", "--no-teacher", "--temperature", "inf"], "--temperature"),
    (["models", "--image-size", "0"], "--image-size"),
    # A missing or mistyped path, for every command that takes one ({tmp}: this test's folder).
    (["teach", "--out", "{tmp}/typo", "--resume"], "nothing to resume in {tmp}/typo"),
    (["teach", "--out", "{tmp}", "--epochs", "1"], "already holds a run"),
    (["student", "--teacher", "{tmp}/missing.pt"], "{tmp}/missing.pt not found"),
    (["teach", "--weights", "{tmp}/nope.pt"], "--weights '{tmp}/nope.pt' is neither a file nor one of: none, imagenet"),
    (["teach", "--weights", "imagenett"], "'imagenett' is neither a file nor one of: none, imagenet, imagenet1k_v1"),
    (["teach", "--weights", "{tmp}"], "--weights {tmp} is not a regular file"),
    (["teach", "--arch", "resnet8", "--weights", "imagenet"], "resnet8 is a student: use --weights none"),
    (["teach", "--cache-dir", "{tmp}/best.pt"], "--cache-dir {tmp}/best.pt is a file, not a folder"),
    (["evaluate", "{tmp}/best.pt", "--cache-dir", "{tmp}/last.pt"], "--cache-dir {tmp}/last.pt is a file"),
    (["pipeline", "--config", "configs/pipeline/smok.toml"], "smok.toml not found"),
    (["pipeline", "--config", "{tmp}/bad.toml"], "is not valid TOML"),
    (["pipeline", "--config", "{tmp}/unknown.toml"], "unknown key 'bogus'"),
    (["pipeline", "--config", "{tmp}/good.toml", "--out", "{tmp}/out", "--data", "/no/such/path"],
     "/no/such/path does not exist"),
    (["compare", "{tmp}/nonexistent"], "{tmp}/nonexistent is not a folder"),
    (["evaluate", "{tmp}/missing.pt"], "{tmp}/missing.pt not found"),
    (["evaluate", "{tmp}/best.pt", "--data", "/no/such/path"], "/no/such/path does not exist"),
    (["predict", "{tmp}/missing.pt", "{tmp}/best.pt"], "{tmp}/missing.pt not found"),
    (["export", "{tmp}/missing.pt", "--format", "onnx"], "{tmp}/missing.pt not found"),
    (["bench", "--reference", "--data", "/no/such/path"], "/no/such/path does not exist"),
])
def test_a_typo_answers_without_importing_torch(args, needle, tmp_path):
    """A real process, as a user runs it: the test process has torch loaded already, so it cannot tell."""
    for name, text in {"bad.toml": "epochs = [\n", "unknown.toml": '[teacher]\nbogus = 1\n',
                       "good.toml": '[teacher]\narch = "resnet8"\n[[students]]\narch = "resnet8"\n',
                       "best.pt": "a checkpoint", "last.pt": "a checkpoint"}.items():
        (tmp_path / name).write_text(text)
    args, needle = [a.format(tmp=tmp_path) for a in args], needle.format(tmp=tmp_path)
    start = time.perf_counter()
    proc = spawn(args, launcher=[sys.executable, "-X", "importtime"])
    _, err = proc.communicate(timeout=60)
    seconds = time.perf_counter() - start
    print(f"distill {' '.join(args)}: {seconds:.2f} s")
    lines = [line for line in err.splitlines() if not line.startswith("import time:")]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert not {m for m in imported_modules(err) if m.split(".")[0] == "torch"}
    assert seconds < 3, f"{seconds:.2f} s"  # about 0.4 s here; torch alone takes 3-6 s to import
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml", "best.pt", "good.toml", "last.pt",
                                                          "unknown.toml"]  # nothing written


def test_version_and_h_for_every_command(cli):
    result = cli("--version")
    assert result.code == 0 and result.out == f"distill {package_version()}\n"
    for name in [None, *typer.main.get_command(app).commands]:
        args = [name, "-h"] if name else ["-h"]
        result = cli(*args)
        assert result.code == 0 and result.out.startswith("Usage: distill"), (args, result.err)
        assert result.out == cli(*args[:-1], "--help").out


@pytest.mark.parametrize("columns", [200, 80, 60])
def test_help_lists_each_command_by_its_whole_summary_and_command_help_is_whole(cli, monkeypatch, columns):
    """Click cut every docstring's first sentence at the terminal's width with "...": the list shows whole
    sentences that fit 80 columns (wrapped when narrower, never cut), `distill COMMAND --help` the docstring."""
    for name, value in {"COLUMNS": str(columns), "TERM": "xterm-256color", "NO_COLOR": "1"}.items():
        monkeypatch.setenv(name, value)  # never the caller's terminal
    commands = typer.main.get_command(app).commands
    assert set(commands) == set(SUMMARIES) and all(s.endswith(".") and len(s) <= 64 for s in SUMMARIES.values())
    listing = cli("--help").out.split("Commands:\n")[1].splitlines()
    entries: dict[str, str] = {}
    for line in listing:
        if line.startswith("  ") and not line.startswith("   "):  # a command's first line, else a continuation
            name, text = line.split(maxsplit=1)
            entries[name] = text
        else:
            entries[name] += " " + line.strip()
    assert entries == SUMMARIES and "..." not in "".join(listing)
    assert len(listing) == len(SUMMARIES) or columns < 80  # one line each from 80 columns up
    for name, command in commands.items():
        assert " ".join(command.help.split()) in " ".join(cli(name, "--help").out.split()), name


def test_version_without_installed_metadata_is_the_package_attribute(monkeypatch):
    import importlib.metadata

    import distill

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert package_version() == distill.__version__


def test_every_declared_name_is_registered_and_nothing_else():
    """distill/front/names.py is what the CLI checks before torch; the registries are what builds. One list each."""
    assert teachers.TEACHERS.list() == sorted(names.TEACHER_ARCHS)
    assert students.STUDENTS.list() == sorted(names.STUDENT_ARCHS)
    assert C.FIELD_CHOICES["method"] == tuple(METHODS)  # the methods register themselves (distill/methods/)
    assert teachers.STEMS == names.STEMS
    assert tuple(augment._POLICIES) == augment_spec.POLICIES
    assert {arch: tuple(teachers.weight_choices(arch)) for arch in names.TEACHER_ARCHS} == names.TEACHER_WEIGHTS


def test_a_registry_refuses_an_undeclared_name():
    registry: Registry[int] = Registry("student arch", declared=("resnet8",))
    registry.register("resnet8")(lambda: 8)
    with pytest.raises(ValueError, match="resnet9000.*distill/front/names.py"):
        registry.register("resnet9000")(lambda: 9000)


CONFIGS = (C.TrainConfig, C.TeachConfig, C.StudentConfig)


@pytest.mark.parametrize("cls", CONFIGS)
def test_every_numeric_option_has_a_range_and_its_default_is_in_it(cls):
    hints = typing.get_type_hints(cls)
    method_options = set(all_option_names())  # ranged per method: see the next test
    for f in dataclasses.fields(cls):
        if C.base_type(hints[f.name]) in (int, float) and f.name not in method_options:
            assert f.metadata["range"] is not None, f"--{C.dash(f.name)} has no valid range"
            assert f.default is None or f.default in f.metadata["range"], f.name


def test_every_method_option_has_a_range_help_and_a_default_inside_it():
    for name, cls in METHODS.items():
        for f in dataclasses.fields(cls.Options):
            assert f.metadata["help"] and f.metadata["range"] is not None, (name, f.name)
            assert f.default in f.metadata["range"], (name, f.name)


@pytest.mark.parametrize("value, inside", [(0.5, True), (0.0, False), (1.0, False), (float("nan"), False),
                                           (float("inf"), False), (-float("inf"), False)])
def test_range_membership_rejects_nan_and_infinities(value, inside):
    assert (value in C.Range(0, 1, low_open=True, high_open=True)) is inside
    assert (value in C.POSITIVE) is (inside or value == 1.0)


def test_range_compares_integers_exactly_up_to_64_bits():
    assert 2**63 - 1 in C.AT_LEAST_1 and 2**63 not in C.AT_LEAST_1 and 10**400 not in C.NON_NEGATIVE
    assert 2**53 + 1 not in C.Range(0, 2**53)  # as a float it would round down into the range


def test_a_no_option_pairs_with_with_and_quiet_says_what_it_does(cli, tiny_data, tmp_path):
    help_text = " ".join(cli("student", "--help").out.split())
    assert "--no-teacher / --with-teacher" in help_text and "--no-no-" not in help_text
    assert "--quiet / --no-quiet No progress bar or per-epoch lines: only errors and the final result line." \
        in help_text
    # --with-teacher overrides a config file's no_teacher = true
    config = tmp_path / "baseline.toml"
    config.write_text("no_teacher = true\n")
    result = cli("student", "--config", config, "--with-teacher", "--data", tiny_data)
    assert result.code == 2 and "needs --teacher" in result.err


def test_models_are_listed_smallest_first_in_each_family(monkeypatch):
    from distill.models import info as modelinfo
    from distill.models import table as report

    monkeypatch.setattr(modelinfo, "forward_gflops", lambda model, size: 0.0)  # slow, and not what is tested
    with torch.device("meta"):  # the real architectures and parameter counts, without initialising weights
        rows = report.model_table(32, 10)
    for family, archs in (("teacher", names.TEACHER_ARCHS), ("student", names.STUDENT_ARCHS)):
        params = [r["params"] for r in rows if r["family"] == family]
        assert params == sorted(params) and len(params) == len(archs)
    order = [r["name"] for r in rows]
    assert order.index("resnet14") < order.index("resnet110") and order[0] == "resnet18"


@pytest.fixture
def trained_checkpoint(cli, tiny_data, tmp_path):
    """A 1-epoch resnet8 in a folder whose path is too long for an 80-column table title."""
    out = tmp_path / ("a-run-folder-with-a-long-name-" * 3) / "run"
    args = ["student", "--no-teacher", "--data", tiny_data, "--out", out, "--epochs", "1", *FAST]
    assert cli(*args).code == 0
    return out / "best.pt"


def test_evaluate_says_which_data_and_prints_percentages_and_whole_paths(cli, tiny_data, trained_checkpoint):
    result = cli("evaluate", trained_checkpoint, "--device", "cpu")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0] == f"data: {tiny_data} (what {trained_checkpoint} was trained on; --data chooses other data)"
    assert f"{trained_checkpoint} (resnet8) on 12 test images" in lines  # one line: the terminal wraps it, not rich
    assert any(line.split()[1:2] == ["all"] and line.rstrip(" │|").endswith("%") for line in lines), result.out

    as_json = cli("evaluate", trained_checkpoint, "--device", "cpu", "--json")
    assert as_json.err.startswith(f"data: {tiny_data} ")
    assert 0 <= json.loads(as_json.out)["accuracy"] <= 1

    with_data = cli("evaluate", trained_checkpoint, "--device", "cpu", "--data", tiny_data)
    assert "data:" not in with_data.out  # the user chose it
