"""`distill transfer` end to end on a tiny image tree, and what it is made of: --classes (a class subset the split,
checkpoints and evaluation keep), --weights from a distill checkpoint (its backbone, a new head)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import write_image_tree
from distill import teachers
from distill.data import Dataset, make_splits, select_classes
from distill.engine.checkpoint import eval_state_dict, load_checkpoint
from distill.errors import UserError
from distill.front.cli import main
from distill.front.config import parse_classes
from distill.models import build_model, make_spec, new_parameter_names
from runhelpers import assert_one_line_error, record_groups

CLASSES = ("apple", "boat", "cloud", "dune")  # dune has apple's colour: it takes the target's own features
TRANSFERS = ("scratch", "finetune", "lp-ft")
STAGES = ("teacher-resnet18-pretrain", *(f"teacher-resnet18-{t}" for t in TRANSFERS), "student-resnet8-kd",
          "baseline-resnet8")


def write_config(path: Path, data: Path) -> Path:
    """Pretrain on apple and boat (1 epoch), transfer to cloud and dune with 8 of their 24 labels (2 epochs)."""
    path.write_text(f"""
[common]
data = "{data}"
image_size = 16
batch_size = 8
lr = 0.05
device = "cpu"

[teacher]
arch = "resnet18"
stem = "imagenet"

[pretrain]
classes = "0-1"
val_size = 4
epochs = 1

[target]
classes = "cloud,dune"
val_size = 4
limit_train = 16
epochs = 2

[transfers.scratch]
[transfers.finetune]
weights = "pretrain"
[transfers.lp-ft]
weights = "pretrain"
freeze_epochs = 1
unfreeze = "lp-ft"

[[students]]
arch = "resnet8"
teacher = "lp-ft"
""")
    return path


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("transfer")
    config = write_config(root / "tiny.toml", write_image_tree(root / "data", classes=CLASSES))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISTILL_CACHE", str(root / "cache"))
        calls = record_groups(mp)
        main(["transfer", "--config", str(config), "--out", str(root / "exp"), "--quiet"])
    return {"out": root / "exp", "config": config, "calls": calls}


def test_transfer_pretrains_transfers_distils_and_compares_in_one_command(experiment):
    out = experiment["out"]
    report = json.loads((out / "pipeline.json").read_text())
    assert [s["name"] for s in report["stages"]] == list(STAGES) and report["finished"]
    # Teachers one by one (each reads the one before it); the student and its baseline together.
    assert experiment["calls"] == [[name] for name in STAGES[:4]] + [list(STAGES[4:])]
    pretrain = load_checkpoint(out / STAGES[0] / "best.pt")
    assert pretrain["classes"] == ["apple", "boat"] and pretrain["model"]["fc.weight"].shape == (2, 512)
    for name in STAGES[1:]:
        ck = load_checkpoint(out / name / "best.pt")
        assert ck["classes"] == ["cloud", "dune"] and ck["config"]["classes"] == "cloud,dune", name
        metrics = json.loads((out / name / "metrics.json").read_text())
        assert metrics["train_images"] == 16 and set(metrics["per_class_accuracy"]) == {"cloud", "dune"}
    weights = {t: json.loads((out / f"teacher-resnet18-{t}" / "config.json").read_text())["weights"] for t in TRANSFERS}
    assert weights == {"scratch": "none", "finetune": str(out / STAGES[0] / "best.pt"),
                       "lp-ft": str(out / STAGES[0] / "best.pt")}
    student = json.loads((out / "student-resnet8-kd" / "metrics.json").read_text())
    assert student["teacher"]["path"] == str(out / "teacher-resnet18-lp-ft" / "best.pt")
    assert student["baseline"] == "baseline-resnet8"
    assert (out / "compare.png").is_file()


def test_a_rerun_skips_every_finished_stage(experiment, capsys):
    main(["transfer", "--config", str(experiment["config"]), "--out", str(experiment["out"]), "--quiet"])
    report = json.loads((experiment["out"] / "pipeline.json").read_text())
    assert {s["status"] for s in report["stages"]} == {"skipped"}


def test_evaluate_tests_a_class_subset_checkpoint_on_its_classes(experiment, cli):
    run = experiment["out"] / "teacher-resnet18-finetune"
    result = cli("evaluate", run / "best.pt", "--json", "--device", "cpu")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert set(report["per_class"]) == {"cloud", "dune"}
    assert report["accuracy"] == pytest.approx(json.loads((run / "metrics.json").read_text())["test_accuracy"])


def test_weights_from_a_distill_checkpoint_are_its_backbone_with_a_new_head(experiment):
    path = experiment["out"] / STAGES[0] / "best.pt"
    pretrained = eval_state_dict(load_checkpoint(path))
    spec = make_spec("resnet18", 3, 16, "imagenet")
    model = build_model(spec, str(path)).state_dict()
    assert model["fc.weight"].shape == (3, 512)  # a new head: other classes, another count
    for key in model.keys() - {"fc.weight", "fc.bias"}:
        assert torch.equal(model[key], pretrained[key]), key
    # Its stem was trained on these images already: only the head is new (a derived ImageNet stem would be too).
    assert new_parameter_names(spec, str(path)) == {"fc.weight", "fc.bias"}
    with pytest.raises(UserError, match=r"holds a resnet18 with the imagenet stem, not the resnet18 with the cifar "
                                        r"stem this run builds: pass --arch resnet18 --stem imagenet"):
        teachers.create("resnet18", num_classes=3, stem="cifar", weights=str(path))
    student = experiment["out"] / "student-resnet8-kd" / "best.pt"
    with pytest.raises(UserError, match="holds the student resnet8: pass the checkpoint of a teacher arch"):
        teachers.create("resnet18", num_classes=3, stem="imagenet", weights=str(student))


@pytest.mark.parametrize("spec, items", [("5-9", [5, 6, 7, 8, 9]), ("0, 2-3,cat", [0, 2, 3, "cat"]),
                                         ("cat,dog", ["cat", "dog"]), ("t-shirt,1", ["t-shirt", 1])])
def test_classes_are_positions_ranges_or_names(spec, items):
    assert parse_classes(spec) == items


@pytest.mark.parametrize("spec, needle", [("3", "selects one class"), ("5-3", "must run upward"),
                                          ("1,,2", "has an empty item"), ("1,0-2", "names class 1 twice"),
                                          ("0-99999999", "stay below 1,000,000")])
def test_a_class_list_that_makes_no_sense_is_refused_in_one_line(cli, tmp_path, spec, needle):
    assert_one_line_error(cli("teach", "--classes", spec, "--out", tmp_path / "run"), "--classes", needle)
    assert not (tmp_path / "run").exists()


def tiny_dataset() -> Dataset:
    """Classes a, b, c with 4, 5 and 6 training images (their index as pixels), 2 test images each."""
    train_y = torch.tensor([0] * 4 + [1] * 5 + [2] * 6)
    test_y = torch.tensor([0, 0, 1, 1, 2, 2])
    pixels = lambda n: torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 8, 8).contiguous()  # noqa: E731
    return Dataset(pixels(15), train_y, pixels(6), test_y, ["a", "b", "c"], "tiny")


def test_a_class_subset_is_relabelled_in_the_datas_order_and_split_like_any_data():
    ds = tiny_dataset()
    sub = select_classes(ds, ["c", 0])  # names and positions; the data's order, whatever the list's
    assert sub.classes == ["a", "c"]
    assert sub.train_y.tolist() == [0] * 4 + [1] * 6 and sub.test_y.tolist() == [0, 0, 1, 1]
    assert sub.train_x[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 9, 10, 11, 12, 13, 14]  # the images of a and c
    splits = make_splits(ds, 2, 6, None, seed=0, classes=[0, 2])
    assert splits.classes == ["a", "c"] and torch.bincount(splits.val_y).tolist() == [1, 1]
    assert torch.bincount(splits.train_y).tolist() == [3, 3]  # --limit-train stays class-balanced
    with pytest.raises(UserError, match=r"--classes: 'd' is not one of the data's 3 classes \(0 a, 1 b, 2 c\)"):
        select_classes(ds, ["a", "d"])
    with pytest.raises(UserError, match="position 3 is past the last of the data's 3 classes"):
        select_classes(ds, [1, 3])
    with pytest.raises(UserError, match="names one class twice"):
        select_classes(ds, [0, "a"])


def write_plan(path: Path, body: str) -> Path:
    path.write_text('[teacher]\narch = "resnet18"\n[pretrain]\nclasses = "0-1"\n[target]\nclasses = "2-3"\n' + body)
    return path


@pytest.mark.parametrize("body, needle", [
    ("", "no [transfers.NAME] tables"),
    ('[transfers.a]\n[[students]]\narch = "resnet8"\nteacher = "b"\n', "'teacher' must name one of the transfers (a)"),
    ('[transfers."a b"]\n[[students]]\narch = "resnet8"\nteacher = "a b"\n', "a transfer's name becomes its folder"),
    ('[transfers.a]\nteacher = "x"\n', "[transfers.a]: unknown key 'teacher'"),
    ('[transfers.a]\nfreeze_epochs = 1\n[[students]]\narch = "resnet8"\nteacher = "a"\n',
     "[transfers.a]: --freeze-epochs needs pretrained weights"),
    ('[transfers.a]\n[[students]]\narch = "resnet8"\n', "'teacher' must name one of the transfers (a), got None"),
])
def test_a_transfer_plan_that_makes_no_sense_is_refused_in_one_line_before_any_training(cli, tmp_path, body, needle):
    config = write_plan(tmp_path / "plan.toml", body)
    assert_one_line_error(cli("transfer", "--config", config, "--out", tmp_path / "exp"), needle)
    assert not (tmp_path / "exp").exists()


CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "transfer"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.name)
def test_the_shipped_transfer_configs_pretrain_on_half_the_classes_and_learn_the_rest_from_a_tenth(path, tmp_path):
    from distill.experiments.pipeline import plan_groups
    from distill.experiments.transfer import load_transfer

    pipe = load_transfer(path, {"data": "d"})
    assert pipe.out == Path("runs") / path.stem
    cfgs = {stage.name: stage.config(pipe.out) for stage in pipe.stages}  # each resolves and validates
    pretrain, *rest = cfgs.values()
    assert pretrain.classes == "0-4" and pretrain.weights == "none" and all(c.classes == "5-9" for c in rest)
    assert all(c.limit_train + c.val_size == 2500 for c in rest)  # 10% of the target's 25,000 labels
    best = str(pipe.out / "teacher-resnet18-pretrain" / "best.pt")
    assert {name: (c.weights, c.freeze_epochs > 0, c.unfreeze) for name, c in cfgs.items() if c.role == "teacher"
            and name.endswith(("scratch", "finetune", "lp-ft"))} == {
        "teacher-resnet18-scratch": ("none", False, "all"), "teacher-resnet18-finetune": (best, False, "all"),
        "teacher-resnet18-lp-ft": (best, True, "lp-ft")}
    student = next(c for c in rest if c.role == "student")
    assert student.teacher == str(pipe.out / "teacher-resnet18-finetune" / "best.pt")
    groups = [[s.name for s in group] for group in plan_groups(pipe)]
    assert groups[-1] == [student.out.rpartition("/")[2], f"baseline-{student.arch}"]  # trained together
    assert all(len(group) == 1 for group in groups[:-1])
