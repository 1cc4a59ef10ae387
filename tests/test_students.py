"""Student architectures: published sizes and costs, shapes, features, registry behaviour."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distill import students
from distill.errors import UserError
from distill.models.info import count_params, describe, forward_gflops
from distill.registry import Registry

# Published parameter counts in millions, as (value, decimals): He et al. 2016 table 6 (10 classes)
# and RepDistiller/CRD for the x4 nets (quoted with 100 classes).
PUBLISHED_PARAMS = {
    ("resnet20", 10): (0.27, 2),
    ("resnet32", 10): (0.46, 2),
    ("resnet44", 10): (0.66, 2),
    ("resnet56", 10): (0.85, 2),
    ("resnet110", 10): (1.7, 1),
    ("resnet8x4", 10): (1.2, 1),
    ("resnet32x4", 10): (7.4, 1),
    ("resnet8x4", 100): (1.23, 2),
    ("resnet32x4", 100): (7.43, 2),
}
# Forward GFLOPs per 32x32 image, 2 FLOPs per multiply-add (shared/notes/recipes.md).
PUBLISHED_GFLOPS = {"resnet20": 0.08, "resnet56": 0.25, "resnet8x4": 0.35, "resnet32x4": 2.17}
FEATURE_SHAPES = {
    "resnet20": [(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8), (64,)],
    "resnet8x4": [(32, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8), (256,)],
}
ALL_ARCHS = students.list_archs()


def images(batch: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, size, size)


@pytest.mark.parametrize(("name", "classes"), PUBLISHED_PARAMS)
def test_param_count_matches_published(name: str, classes: int) -> None:
    value, decimals = PUBLISHED_PARAMS[name, classes]
    assert round(count_params(students.create(name, classes)) / 1e6, decimals) == value


def test_all_published_archs_are_registered() -> None:
    expected = {"resnet8", "resnet14", *(name for name, _ in PUBLISHED_PARAMS)}
    assert expected <= set(ALL_ARCHS)


@pytest.mark.parametrize("name", ALL_ARCHS)
@pytest.mark.parametrize("classes", [10, 100])
def test_output_shape(name: str, classes: int) -> None:
    assert students.create(name, num_classes=classes)(images()).shape == (2, classes)


@pytest.mark.parametrize("name", ALL_ARCHS)
def test_forward_features_logits_equal_forward(name: str) -> None:
    model = students.create(name).eval()  # eval: BN must not update between the two passes
    x = images()
    logits, feats = model.forward_features(x)
    torch.testing.assert_close(logits, model(x))
    assert len(feats) == 5


@pytest.mark.parametrize("name", FEATURE_SHAPES)
def test_feature_shapes(name: str) -> None:
    _, feats = students.create(name).forward_features(images(batch=3))
    assert [tuple(f.shape) for f in feats] == [(3, *s) for s in FEATURE_SHAPES[name]]


@pytest.mark.parametrize("name", ["resnet20", "resnet8x4"])  # one per shortcut kind (A, B)
def test_channels_last_bf16_autocast(name: str) -> None:
    model = students.create(name).to(memory_format=torch.channels_last)
    x = images().to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, feats = model.forward_features(x)
    assert logits.shape == (2, 10) and logits.dtype == torch.bfloat16
    assert all(f.is_contiguous(memory_format=torch.channels_last) for f in feats[:-1])
    logits.float().sum().backward()


def test_unknown_arch_lists_valid_names() -> None:
    with pytest.raises(UserError, match="resnet20.*resnet8x4|resnet8x4.*resnet20") as err:
        students.create("resnet21")
    assert "resnet21" in str(err.value)


def test_registered_arch_is_creatable(monkeypatch: pytest.MonkeyPatch) -> None:
    # A private registry swapped in for this test only, so the global one stays unchanged.
    registry: Registry[nn.Module] = Registry("student arch")
    monkeypatch.setattr(students, "STUDENTS", registry)

    @registry.register()
    def tiny(num_classes: int = 10) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

    assert students.list_archs() == ["tiny"]
    assert students.create("tiny", num_classes=7)(images()).shape == (2, 7)


def test_gflops_of_conv_is_analytic() -> None:
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1, bias=False)
    macs = 8 * 32 * 32 * (3 * 3 * 3)  # output elements x multiply-adds per output
    assert forward_gflops(conv, 32) == pytest.approx(2 * macs / 1e9)


def test_gflops_of_linear_is_analytic() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 10))
    assert forward_gflops(model, 4) == pytest.approx(2 * 48 * 10 / 1e9)


def test_gflops_restores_training_mode() -> None:
    model = students.create("resnet8").train()
    forward_gflops(model, 32)
    assert model.training


@pytest.mark.parametrize("name", PUBLISHED_GFLOPS)
def test_gflops_match_published(name: str) -> None:
    # Published to two decimals, so 0.08 stands for 0.075-0.085: allow 10%.
    assert forward_gflops(students.create(name), 32) == pytest.approx(PUBLISHED_GFLOPS[name], rel=0.1)


def test_describe() -> None:
    info = describe("resnet20", students.create("resnet20"), 32)
    assert info["name"] == "resnet20" and info["params"] == 269_722
    assert info["gflops"] == pytest.approx(0.0811, abs=1e-3)
