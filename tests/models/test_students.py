"""Student architectures: published sizes and costs, shapes, features, registry behaviour; the students of
RepDistiller's / mdistiller's CIFAR tables against their reference code's sizes and costs, one training step
and an ONNX export each."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill import students, teachers
from distill.augment.ops import Preprocess
from distill.errors import UserError
from distill.deploy.export import TOLERANCE, Deployed, export_bytes, load_runner, parity, sample_images
from distill.models.info import count_params, describe, forward_gflops
from distill.registry import Registry
from distill.students.layers import channel_shuffle

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
# Forward GFLOPs per 32x32 image, 2 FLOPs per multiply-add: the figures commonly quoted for these nets (one
# multiply-add of each conv and linear weight per output position, which forward_gflops counts too).
PUBLISHED_GFLOPS = {"resnet20": 0.08, "resnet56": 0.25, "resnet8x4": 0.35, "resnet32x4": 2.17}
# Computed from the anchors' code: HobbitLong/RepDistiller models/ at b84f547 (mdistiller's
# mdistiller/models/cifar at a08d46f gives the same), sum of p.numel() of model_dict[name](num_classes=C), for
# C = 10 and 100; their names: wrn_16_2 ... vgg8 (vgg8_bn), vgg13 (vgg13_bn), MobileNetV2 (mobile_half),
# ShuffleV1, ShuffleV2, and resnet8 ... resnet110 for our resnet8b ... resnet110b (their 1x1-projection shortcuts;
# our resnet8 ... resnet110 are He et al.'s, 2,752 parameters fewer). In millions with 100 classes (CIFAR-100, their
# tables' data set): 0.70, 0.57, 2.26, 3.97, 9.46, 0.81, 0.95, 1.36, 1.23, 7.43.
ANCHOR_PARAMS = {
    "resnet8b": (78_042, 83_892),
    "resnet14b": (175_258, 181_108),
    "resnet20b": (272_474, 278_324),
    "resnet32b": (466_906, 472_756),
    "resnet44b": (661_338, 667_188),
    "resnet56b": (855_770, 861_620),
    "resnet110b": (1_730_714, 1_736_564),
    "wrn_16_2": (691_674, 703_284),
    "wrn_40_1": (563_930, 569_780),
    "wrn_40_2": (2_243_546, 2_255_156),
    "vgg8": (3_918_858, 3_965_028),
    "vgg13": (9_416_010, 9_462_180),
    "mobilenetv2": (697_546, 812_836),
    "shufflenetv1": (862_768, 949_258),
    "shufflenetv2": (1_263_278, 1_355_528),
    "resnet8x4": (1_210_410, 1_233_540),
    "resnet32x4": (7_410_730, 7_433_860),
}
# Forward GFLOPs of a 32x32 image (10 classes), measured on the anchors' code above with the counter
# distill/models/info.py uses (FlopCounterMode, 2 per multiply-add).
ANCHOR_GFLOPS = {
    "wrn_16_2": 0.202214, "wrn_40_1": 0.166561, "wrn_40_2": 0.655199, "vgg8": 0.192293, "vgg13": 0.569780,
    "mobilenetv2": 0.012817, "shufflenetv1": 0.077210, "shufflenetv2": 0.088825,
}
ZOO = list(ANCHOR_GFLOPS)  # the students added beside the CIFAR ResNets
FEATURE_SHAPES = {  # [stem, stages..., pooled], 10 classes: the same layout as RepDistiller's features
    "resnet20": [(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8), (64,)],
    "resnet8x4": [(32, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8), (256,)],
    "wrn_16_2": [(16, 32, 32), (32, 32, 32), (64, 16, 16), (128, 8, 8), (128,)],
    "wrn_40_1": [(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8), (64,)],
    "wrn_40_2": [(16, 32, 32), (32, 32, 32), (64, 16, 16), (128, 8, 8), (128,)],
    "vgg8": [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4), (512,)],
    "vgg13": [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4), (512,)],
    "mobilenetv2": [(16, 16, 16), (12, 16, 16), (16, 8, 8), (48, 4, 4), (160, 2, 2), (1280,)],
    "shufflenetv1": [(24, 32, 32), (240, 16, 16), (480, 8, 8), (960, 4, 4), (960,)],
    "shufflenetv2": [(24, 32, 32), (116, 16, 16), (232, 8, 8), (464, 4, 4), (1024,)],
}
ALL_ARCHS = students.STUDENTS.list()


def images(batch: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, size, size)


@pytest.mark.parametrize(("name", "classes"), PUBLISHED_PARAMS)
def test_param_count_matches_published(name: str, classes: int) -> None:
    value, decimals = PUBLISHED_PARAMS[name, classes]
    assert round(count_params(students.create(name, classes)) / 1e6, decimals) == value


def test_all_published_archs_are_registered() -> None:
    expected = {"resnet8", "resnet14", *(name for name, _ in PUBLISHED_PARAMS), *ANCHOR_PARAMS}
    assert expected <= set(ALL_ARCHS) and set(FEATURE_SHAPES) >= set(ZOO)


@pytest.mark.parametrize("classes", [10, 100])
@pytest.mark.parametrize("name", ANCHOR_PARAMS)
def test_param_count_matches_the_anchors_code(name: str, classes: int) -> None:
    assert count_params(students.create(name, classes)) == ANCHOR_PARAMS[name][classes == 100]


@pytest.mark.parametrize("name", ANCHOR_GFLOPS)
def test_gflops_match_the_anchors_code(name: str) -> None:
    assert forward_gflops(students.create(name), 32) == pytest.approx(ANCHOR_GFLOPS[name], abs=1e-6)


def conv_macs(side: int, in_ch: int, out_ch: int, kernel: int = 3) -> int:
    return side * side * out_ch * in_ch * kernel * kernel


def wrn_macs(depth: int, width: int, classes: int = 10) -> int:
    """Zagoruyko & Komodakis' WRN-depth-width, counted by hand: stem, per stage a first block (conv, conv,
    1x1 projection where the shape changes) and n - 1 blocks of two convs, then the head."""
    n, widths = (depth - 4) // 6, [16, 16 * width, 32 * width, 64 * width]
    macs = conv_macs(32, 3, 16)
    for k, (i, o) in enumerate(zip(widths, widths[1:])):
        side = 32 >> k
        macs += conv_macs(side, i, o) + conv_macs(side, o, o) + (conv_macs(side, i, o, 1) if i != o else 0)
        macs += (n - 1) * 2 * conv_macs(side, o, o)
    return macs + widths[-1] * classes


def vgg_macs(convs: int, classes: int = 10) -> int:
    """RepDistiller's CIFAR VGG counted by hand: blocks of `convs` 3x3 convs at 32, 16, 8, 4, 4 pixels."""
    macs, in_ch = 0, 3
    for side, out_ch in zip((32, 16, 8, 4, 4), (64, 128, 256, 512, 512)):
        macs += conv_macs(side, in_ch, out_ch) + (convs - 1) * conv_macs(side, out_ch, out_ch)
        in_ch = out_ch
    return macs + 512 * classes


@pytest.mark.parametrize(("name", "macs"), [
    ("wrn_16_2", wrn_macs(16, 2)), ("wrn_40_1", wrn_macs(40, 1)), ("wrn_40_2", wrn_macs(40, 2)),
    ("vgg8", vgg_macs(1)), ("vgg13", vgg_macs(2)),
])
def test_gflops_of_plain_conv_nets_are_their_hand_count(name: str, macs: int) -> None:
    assert forward_gflops(students.create(name), 32) == pytest.approx(2 * macs / 1e9, rel=1e-9)


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
    # The layout feature methods read: maps (stem, then at least one stage), then the vector the head reads.
    assert len(feats) >= 3 and all(f.dim() == 4 for f in feats[:-1])
    assert feats[-1].shape == (2, model.fc.in_features)


@pytest.mark.parametrize("name", FEATURE_SHAPES)
def test_feature_shapes(name: str) -> None:
    _, feats = students.create(name).forward_features(images(batch=3))
    assert [tuple(f.shape) for f in feats] == [(3, *s) for s in FEATURE_SHAPES[name]]


# resnet20 and resnet8x4: one per shortcut kind (A, B); shufflenetv2: channel split and shuffle
@pytest.mark.parametrize("name", ["resnet20", "resnet8x4", "shufflenetv2"])
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
    monkeypatch.setattr(students.registry, "STUDENTS", registry)

    @registry.register()
    def tiny(num_classes: int = 10) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

    assert registry.list() == ["tiny"]
    assert students.registry.create("tiny", num_classes=7)(images()).shape == (2, 7)


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


def test_channel_shuffle_interleaves_the_groups() -> None:
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]
    assert channel_shuffle(x, 3).flatten().tolist() == [0, 2, 4, 1, 3, 5]
    maps = torch.randn(2, 12, 5, 5)
    nhwc = channel_shuffle(maps.to(memory_format=torch.channels_last), 3)  # its own code path: same values
    assert torch.equal(nhwc, channel_shuffle(maps, 3)) and nhwc.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("name", ZOO)
def test_one_training_step_reaches_every_parameter_and_lowers_the_loss(name: str) -> None:
    torch.manual_seed(0)
    model = students.create(name, num_classes=10).train()
    x, y = images(), torch.tensor([3, 7])
    named = list(model.named_parameters())
    loss = F.cross_entropy(model(x), y)
    # Every parameter is in the graph (None: a layer built but never called). Values may be ~0 by design: in
    # training mode BatchNorm removes per-channel shifts, e.g. VGG's conv biases and, through a 1x1 conv, the
    # shifts of MobileNetV2's linear bottlenecks.
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    assert [n for (n, _), g in zip(named, grads) if g is None or not g.isfinite().all()] == []
    for (_, p), g in zip(named, grads):
        p.grad = g
    torch.optim.SGD(model.parameters(), lr=0.01).step()
    assert F.cross_entropy(model(x), y) < loss


def sharpened(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """`model` in eval mode with BatchNorm statistics that differ per channel and a head scaled so the logits
    on `x` spread over about +-2: probabilities far from uniform, so a mistranslated layer shows in them."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 2.0), m.weight.data.uniform_(0.5, 1.5)
    model.eval()
    with torch.no_grad():
        scale = 2.0 / model(x).std()
        model.fc.weight.mul_(scale), model.fc.bias.mul_(scale)
    return model


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")
@pytest.mark.parametrize("name", ZOO)
def test_onnx_export_has_parity(name: str) -> None:
    """distill's export path (uint8 images -> probabilities, traced with a dynamic batch at 2), read back by
    onnxruntime on the CPU and compared with the model."""
    torch.manual_seed(0)
    preprocess = Preprocess([0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
    model = sharpened(students.create(name), preprocess(torch.rand(8, 3, 32, 32)))
    module = Deployed(model, preprocess).eval()
    with torch.no_grad():  # the check below can fail: the top class is clearly ahead on the parity images
        assert module(sample_images(8, 32, seed=1)).max(1).values.mean() > 0.25
    check = parity(module, load_runner("onnx", export_bytes("onnx", module, 32, dynamic=True)), 32, dynamic=True)
    assert check["max_abs_diff"] <= TOLERANCE and check["top1_agreement"] == 1.0


def test_distill_models_lists_the_zoo_with_the_anchors_sizes(cli, monkeypatch) -> None:
    monkeypatch.setattr(teachers, "TEACHERS", Registry("teacher arch"))  # only the students: building teachers is slow
    result = cli("models", "--json")
    assert result.code == 0, result.err
    rows = {r["name"]: r for r in json.loads(result.out)}
    assert set(rows) == set(ALL_ARCHS) and {r["family"] for r in rows.values()} == {"student"}
    for name in ZOO:
        assert rows[name]["params"] == ANCHOR_PARAMS[name][0]
        assert rows[name]["gflops"] == pytest.approx(ANCHOR_GFLOPS[name], abs=1e-6)
