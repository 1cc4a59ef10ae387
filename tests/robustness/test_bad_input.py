"""Every user mistake of `distill teach`: one line naming the problem, exit code 2, nothing lost."""

from __future__ import annotations

import shutil

import pytest

from runhelpers import assert_one_line_error

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


def student_args(data, out) -> list:
    """A student run on the tiny data set; each case adds --no-teacher or a --teacher."""
    return ["student", "--data", data, "--out", out, "--arch", "resnet8", "--image-size", "16", "--epochs", "1",
            "--batch-size", "8", "--device", "cpu", "--quiet"]


NO_TEACHER = ["--no-teacher"]
HUGE = str(10**399)  # 400 digits: an int option compared as a float overflows (math.isfinite)
SHOWN = "(got 100000000000... (400 digits))"  # not the 400 digits themselves
BENCH = ["--arch", "resnet8", "--device", "cpu"]  # a bench that would take a second, were its values valid
# (command, its arguments, what the one line must say: the option and its valid range)
RANGE_CASES = [
    ("teach", ["--momentum", "0"], ["--momentum", "(0, 1)", "got 0.0"]),  # Nesterov needs momentum > 0
    ("teach", ["--momentum", "1"], ["--momentum", "(0, 1)"]),
    ("teach", ["--image-size", "4"], ["--image-size", "at least 8", "got 4"]),
    ("teach", ["--resize", "7"], ["--resize", "at least 8"]),
    ("teach", ["--seed", "-1"], ["--seed", "[0, 2147483648)"]),
    ("teach", ["--seed", "2147483648"], ["--seed", "[0, 2147483648)"]),
    ("teach", ["--lr", "inf"], ["--lr", "positive and finite", "got inf"]),
    ("teach", ["--lr", "nan"], ["--lr", "positive and finite", "got nan"]),
    ("teach", ["--weight-decay", "nan"], ["--weight-decay", "at least 0 and finite"]),
    ("teach", ["--warmup-epochs", "inf"], ["--warmup-epochs", "at least 0 and finite"]),
    ("teach", ["--grad-clip", "inf"], ["--grad-clip", "at least 0 and finite"]),
    ("teach", ["--ema-horizon", "nan"], ["--ema-horizon", "[0, 1]"]),
    ("teach", ["--label-smoothing", "1"], ["--label-smoothing", "[0, 1)"]),
    ("teach", ["--backbone-lr-scale", "inf"], ["--backbone-lr-scale", "positive and finite"]),
    ("teach", ["--val-size", "-1"], ["--val-size", "at least 0"]),
    ("teach", ["--save-every", "0"], ["--save-every", "at least 1"]),
    ("teach", ["--augment", "crop_padding=16"], ["crop_padding=16", "[0, 16)", "--image-size 16"]),  # reflect pad
    ("teach", ["--augment", "mixup=1e308"], ["mixup", "[0.01, 100.0]"]),
    ("teach", ["--augment", "strong,cutmix=0.001"], ["cutmix", "0 (off) or a value in [0.01, 100.0]"]),
    ("student", [*NO_TEACHER, "--temperature", "inf"], ["--temperature", "positive and finite"]),
    ("student", [*NO_TEACHER, "--temperature", "0"], ["--temperature", "positive"]),
    ("student", [*NO_TEACHER, "--method", "dkd", "--nckd-weight", "-1"], ["--nckd-weight", "at least 0 and finite"]),
    ("student", [*NO_TEACHER, "--method", "dkd", "--nckd-weight", "inf"], ["--nckd-weight", "at least 0 and finite"]),
    ("student", [*NO_TEACHER, "--method", "dkd", "--kd-warmup", "nan"],
     ["--kd-warmup", "in [0, 1]"]),
    ("student", [*NO_TEACHER, "--nckd-weight", "4"], ["--nckd-weight does not apply to --method kd",
                                                       "--temperature, --kd-weight"]),
    ("student", [*NO_TEACHER, "--method", "fitnet", "--hint-stage", "0"], ["--hint-stage", "at least 1"]),
    ("student", [*NO_TEACHER, "--mix", "cutout=1"], ["bad --mix item 'cutout=1'", "mixup, cutmix, mix_prob"]),
    ("student", [*NO_TEACHER, "--mix", "mixup=0.2", "--augment", "default,cutmix=1"],
     ["--mix mixup=0.2 would mix images that --augment default,cutmix=1 already mixed"]),
    ("student", [*NO_TEACHER, "--method", "at", "--attention-p", "0"], ["--attention-p must be positive"]),
    ("student", [*NO_TEACHER, "--method", "dist", "--intra-weight", "-2"], ["--intra-weight", "at least 0"]),
    ("student", ["--teacher", "nowhere.pt", "--kd-weight", "1.5"], ["--kd-weight", "[0, 1]"]),  # kd: a share
    ("student", ["--teacher", "nowhere.pt", "--method", "dkd", "--tckd-weight", "-1"], ["--tckd-weight", "at least 0"]),
    ("student", [*NO_TEACHER, "--method", "crd", "--bank-momentum", "1"], ["--bank-momentum", "in [0, 1)"]),
    ("student", [], ["--method kd needs --teacher", "--no-teacher"]),
    ("student", ["--teacher", "nowhere.pt"], ["--teacher", "nowhere.pt", "not found"]),
    ("models", ["--image-size", "0"], ["--image-size", "at least 8", "got 0"]),
    ("models", ["--num-classes", "-1"], ["--num-classes", "at least 2"]),
    ("models", ["--num-classes", "0"], ["--num-classes", "at least 2"]),
    ("models", ["--num-classes", "1"], ["--num-classes", "at least 2"]),
    ("evaluate", ["nowhere.pt", "--limit-test", "0"], ["--limit-test", "at least 1"]),
    # Every int option, past 64 bits: one line naming it, before torch, as for any value out of range.
    ("teach", ["--epochs", HUGE], ["--epochs must be at least 1 and at most 2^63 - 1", SHOWN]),
    ("teach", ["--epochs", "-" + HUGE], ["--epochs must be at least 1 and at most 2^63 - 1", "(got -1000"]),
    ("teach", ["--batch-size", HUGE], ["--batch-size must be at least 1 and at most 2^63 - 1"]),
    ("teach", ["--image-size", HUGE], ["--image-size must be at least 8 and at most 2^63 - 1"]),
    ("teach", ["--limit-train", HUGE], ["--limit-train must be at least 1 and at most 2^63 - 1"]),
    ("teach", ["--seed", HUGE], ["--seed must be in [0, 2147483648)", SHOWN]),
    ("teach", ["--lr", HUGE], ["--lr must be positive and finite (got inf)"]),  # a float: click reads inf
    ("teach", ["--augment", f"crop_padding={HUGE}"], ["augment crop_padding=100000000000... (400 digits) is out of"]),
    ("student", [*NO_TEACHER, "--method", "fitnet", "--hint-stage", HUGE],
     ["--hint-stage must be at least 1 and at most 2^63 - 1"]),
    ("models", ["--image-size", HUGE], ["--image-size must be at least 8 and at most 2^63 - 1"]),
    ("evaluate", ["nowhere.pt", "--limit-test", HUGE], ["--limit-test must be at least 1 and at most 2^63 - 1"]),
    ("predict", ["nowhere.pt", "x.png", "--top-k", HUGE], ["--top-k must be at least 1 and at most 2^63 - 1"]),
    ("bench", [*BENCH, "--steps", HUGE], ["--steps must be at least 1 and at most 2^63 - 1", SHOWN]),
    ("bench", [*BENCH, "--warmup", HUGE], ["--warmup must be at least 0 and at most 2^63 - 1", SHOWN]),
    ("bench", [*BENCH, "--batch-size", HUGE], ["--batch-size must be at least 1 and at most 2^63 - 1"]),
    ("bench", [*BENCH, "--reference", "--num-workers", HUGE], ["--num-workers must be at least 0 and at most 2^63"]),
    ("bench", [*BENCH, "--steps", "0"], ["--steps must be at least 1 (got 0)"]),
    ("bench", [*BENCH, "--num-workers", "-1"], ["--num-workers must be at least 0 (got -1)"]),
]


@pytest.mark.parametrize("command, args, needles", RANGE_CASES, ids=[" ".join([c, *a]).replace(HUGE, "<400 digits>") for c, a, _ in RANGE_CASES])
def test_values_out_of_range(cli, tiny_data, tmp_path, command, args, needles):
    out = tmp_path / "run"
    base = {"teach": tiny_teach_args(tiny_data, out), "student": student_args(tiny_data, out)}.get(command, [command])
    assert_one_line_error(cli(*base, *args), *needles)
    assert not out.exists()  # refused before anything was written


@pytest.mark.parametrize("content, needle", [
    ("epochs = 2\nbogus_key = 1\n", "bogus_key"),
    ('epochs = "two"\n', "epochs"),
    ("epochs = [\n", "TOML"),
    (f"limit_train = {HUGE}\n", "--limit-train must be at least 1 and at most 2^63 - 1 " + SHOWN),
    (f"weight_decay = {HUGE}\n", "--weight-decay must be at least 0 and finite (got inf)"),  # as on the command line
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

    from distill.front.cli import app

    for command in typer.main.get_command(app).commands.values():
        for param in command.params:
            if getattr(param, "help", None) is not None or param.param_type_name == "option":
                assert param.help, f"{command.name} {param.name} has no help text"
