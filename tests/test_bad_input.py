"""Every user mistake of `distill teach`: one line naming the problem, exit code 2, nothing lost."""

from __future__ import annotations

import shutil

import pytest

from conftest import file_digest, tiny_teach_args


def break_data(kind: str, data):
    """Turn the tiny data set into one of the broken layouts; returns the --data to pass."""
    if kind == "missing":
        return data / "nowhere"
    if kind == "neither layout":
        shutil.rmtree(data / "test")
        return data
    if kind == "empty class":
        for f in (data / "train" / "boat").iterdir():
            f.unlink()
        return data
    if kind == "bad image":
        (data / "train" / "boat" / "0003.png").write_bytes(b"not a png at all")
        return data
    if kind == "class mismatch":
        (data / "test" / "boat").rename(data / "test" / "ship")
        return data
    raise AssertionError(kind)


DATA_CASES = {"missing": "nowhere", "neither layout": "train/", "empty class": "boat",
              "bad image": "0003.png", "class mismatch": "ship"}


def assert_one_line_error(result, *needles: str) -> None:
    assert result.code == 2, (result.code, result.err)
    assert "Traceback" not in result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def guarded_out(tmp_path):
    """An output folder holding a file that must survive every refused command."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    return out


@pytest.mark.parametrize("kind", sorted(DATA_CASES))
def test_bad_data(cli, tiny_data, guarded_out, kind):
    data = break_data(kind, tiny_data)
    result = cli(*tiny_teach_args(data, guarded_out / "run"))
    assert_one_line_error(result, DATA_CASES[kind])
    assert (guarded_out / "keep.txt").read_text() == "precious"


@pytest.mark.parametrize("option, value, needle", [
    ("--arch", "resnet9000", "resnet50"),          # the valid names are listed
    ("--stem", "huge", "cifar, imagenet"),
    ("--weights", "imagenet-v9", "none, imagenet, imagenet1k_v1"),
    ("--epochs", "0", "--epochs"),
    ("--batch-size", "0", "--batch-size"),
    ("--lr", "0", "--lr"),
    ("--lr", "-1", "--lr"),
    ("--limit-train", "1000", "1000"),
    ("--limit-test", "999", "999"),
    ("--precision", "fp8", "bf16, fp32"),
    ("--compile-mode", "fast", "reduce-overhead, default, max-autotune"),
    ("--augment", "mixup=lots", "mixup"),
    ("--device", "tpu", "cpu"),
])
def test_bad_options(cli, tiny_data, tmp_path, option, value, needle):
    out = tmp_path / "run"
    args = tiny_teach_args(tiny_data, out)
    if option in args:
        args[args.index(option) + 1] = value
    else:
        args += [option, value]
    assert_one_line_error(cli(*args), needle)
    assert not (out / "last.pt").exists()


@pytest.mark.parametrize("content, needle", [
    ("epochs = 2\nbogus_key = 1\n", "bogus_key"),
    ('epochs = "two"\n', "epochs"),
    ("epochs = [\n", "TOML"),
])
def test_bad_config_file(cli, tiny_data, tmp_path, content, needle):
    config = tmp_path / "bad.toml"
    config.write_text(content)
    assert_one_line_error(cli(*tiny_teach_args(tiny_data, tmp_path / "run"), "--config", config), needle)


def test_config_file_gives_defaults_and_command_line_wins(cli, tiny_data, tmp_path):
    config = tmp_path / "ok.toml"
    config.write_text('epochs = 1\nlabel-smoothing = 0.2\nwarmup_epochs = 1\n')  # int accepted for a float
    args = [a for a in tiny_teach_args(tiny_data, tmp_path / "run") if a not in ("--epochs", "2")]
    assert cli(*args, "--config", config, "--label-smoothing", "0.05").code == 0
    import json

    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["epochs"] == 1 and saved["label_smoothing"] == 0.05 and saved["warmup_epochs"] == 1.0


def test_resume_without_run_and_with_changed_settings(cli, tiny_data, tmp_path):
    out = tmp_path / "run"
    assert_one_line_error(cli(*tiny_teach_args(tiny_data, out, "--resume")), "nothing to resume")
    assert cli(*tiny_teach_args(tiny_data, out)).code == 0
    before = file_digest(out / "last.pt")
    args = tiny_teach_args(tiny_data, out, "--resume")
    args[args.index("--batch-size") + 1] = "4"
    assert_one_line_error(cli(*args), "batch_size: 8 -> 4")
    assert file_digest(out / "last.pt") == before


def test_no_arguments_shows_help_and_every_option_has_help(cli):
    result = cli()
    assert result.code == 0 and "teach" in result.out and "student" in result.out
    import typer

    from distill.cli import app

    for command in typer.main.get_command(app).commands.values():
        for param in command.params:
            if getattr(param, "help", None) is not None or param.param_type_name == "option":
                assert param.help, f"{command.name} {param.name} has no help text"
