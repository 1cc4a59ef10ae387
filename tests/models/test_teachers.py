"""Teacher backbones: CIFAR stem geometry, torchvision-format weights, ImageNet weights through TORCH_HOME."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision

from distill import teachers
from distill.front.config import TeachConfig
from distill.errors import UserError
from distill.models import make_spec, new_parameter_names
from distill.engine.optim import param_groups


def layer1_size(model, image=32) -> tuple[int, int]:
    seen = {}
    model.layer1.register_forward_hook(lambda m, i, o: seen.update(shape=o.shape[-2:]))  # returns None: output kept
    model.eval()(torch.zeros(2, 3, image, image))
    return tuple(seen["shape"])


def test_registry_lists_the_torchvision_backbones():
    assert teachers.TEACHERS.list() == sorted(["resnet18", "resnet34", "resnet50", "resnet101", "wide_resnet50_2"])
    with pytest.raises(UserError, match="resnet50"):
        teachers.create("vgg16")


def test_cifar_stem_keeps_32x32_at_layer1_imagenet_stem_does_not():
    assert layer1_size(teachers.create("resnet50", stem="cifar")) == (32, 32)
    assert layer1_size(teachers.create("resnet50", stem="imagenet")) == (8, 8)
    model = teachers.create("resnet18", num_classes=7)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    with pytest.raises(UserError, match="cifar, imagenet"):
        teachers.create("resnet18", stem="tiny")


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    """A torchvision-format state_dict, as torchvision.models.resnet18 saves it (7x7 conv1, 1000-way fc)."""
    reference = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(reference, path)
    return path, reference


def stem_kernel(seed=0) -> torch.Tensor:
    """A 7x7 conv1 kernel as torchvision initialises it, in float64 so exactness is checked, not rounding."""
    torch.manual_seed(seed)
    return torchvision.models.resnet18().conv1.weight.detach().double()


def responses(kernel7, image):
    """Outputs of the derived 3x3 conv on a 32x32 image(u, v) and of the 7x7 stride-2 conv on it enlarged by 7/3.

    3x3 outputs at pixels 10, 16, 22 and 7x7 outputs 9, 16, 23 (input 18, 32, 46) sit at the same offsets
    -6, 0, 6 in CIFAR pixels from the centre, away from the padding.
    """
    u = torch.arange(32, dtype=torch.float64) - 16
    z = (torch.arange(64, dtype=torch.float64) - 32) * 3 / 7
    small, big = image(u[:, None], u[None])[None], image(z[:, None], z[None])[None]
    at3, at7 = [10, 16, 22], [9, 16, 23]
    out3 = F.conv2d(small, teachers.cifar_conv1_from_imagenet(kernel7), padding=1)[:, :, at3][..., at3]
    out7 = F.conv2d(big, kernel7, stride=2, padding=3)[:, :, at7][..., at7]
    return out3, out7


def test_cifar_conv1_keeps_each_filter_sum_and_the_constant_colour_response():
    kernel7 = stem_kernel()
    kernel3 = teachers.cifar_conv1_from_imagenet(kernel7)
    assert kernel3.shape == (64, 3, 3, 3)
    torch.testing.assert_close(kernel3.sum((2, 3)), kernel7.sum((2, 3)), rtol=1e-12, atol=1e-12)
    colour = torch.tensor([0.7, -0.2, 1.3], dtype=torch.float64).view(1, 3, 1, 1)
    flat3 = F.conv2d(colour.expand(1, 3, 32, 32), kernel3, padding=1)[..., 1:-1, 1:-1]
    flat7 = F.conv2d(colour.expand(1, 3, 64, 64), kernel7, stride=2, padding=3)[..., 2:-2, 2:-2]
    torch.testing.assert_close(flat3, flat7[..., :1, :1].expand_as(flat3), rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("curvature", [0.0, 1.0], ids=["ramp", "quadratic"])
def test_cifar_conv1_reads_a_ramp_as_the_7x7_reads_it_enlarged_by_7_over_3(curvature):
    """Exact (to float64 rounding) for ramps and any quadratic image, every channel and direction its own."""
    torch.manual_seed(1)
    a, b, c, d, e, f = (torch.randn(3, 1, 1, dtype=torch.float64) for _ in range(6))

    def image(u, v):
        return a + b * u + c * v + curvature * (d * u * u + e * u * v + f * v * v) / 16

    out3, out7 = responses(stem_kernel(), image)
    torch.testing.assert_close(out3, out7, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("period", [32, 8])
def test_cifar_conv1_reads_smooth_images_approximately_as_the_7x7_enlarged(period):
    """Beyond quadratics the match is approximate: for a wave of `period` CIFAR pixels the two responses
    differ by under 1% of the filter's absolute sum (the largest response a unit-amplitude image can give)."""
    kernel7 = stem_kernel()

    def image(u, v):
        return torch.stack([torch.cos(2 * math.pi * (0.8 * u + 0.6 * v) / period + ch) for ch in range(3)])

    out3, out7 = responses(kernel7, image)
    assert ((out3 - out7).abs() / kernel7.abs().sum((1, 2, 3)).view(1, -1, 1, 1)).max() < 0.01


def test_cifar_conv1_of_hand_made_kernels():
    """Tap offsets -3..3 land at 3i/7 pixels; quadratic interpolation through -1, 0, 1 spreads each tap."""
    def derived(kernel7):
        return teachers.cifar_conv1_from_imagenet(kernel7.double().view(1, 1, 7, 7))[0, 0]

    delta = torch.zeros(7, 7)
    delta[3, 3] = 1
    torch.testing.assert_close(derived(delta), torch.tensor([[0, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=torch.float64))
    corner = torch.zeros(7, 7)
    corner[0, 6] = 1  # offsets (-3, +3): read at (-9/7, +9/7), outside the 3x3 window: quadratic extrapolation
    left, right = torch.tensor([72, -32, 9.0]) / 49, torch.tensor([9, -32, 72.0]) / 49
    torch.testing.assert_close(derived(corner), torch.outer(left, right).double())
    box = torch.tensor([18, 13, 18.0]) / 7  # per axis: sum of x(x-1)/2, 1-x^2, x(x+1)/2 over x = 3i/7
    torch.testing.assert_close(derived(torch.ones(7, 7)), torch.outer(box, box).double())


@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
def test_torchvision_state_dict_file_loads_all_but_head_and_derives_the_cifar_conv1(resnet18_file, stem):
    path, ref = resnet18_file
    got = teachers.create("resnet18", num_classes=10, stem=stem, weights=str(path)).state_dict()
    conv1 = teachers.cifar_conv1_from_imagenet(ref["conv1.weight"]) if stem == "cifar" else ref["conv1.weight"]
    assert torch.equal(got["conv1.weight"], conv1)
    assert got["conv1.weight"].shape == ((64, 3, 3, 3) if stem == "cifar" else (64, 3, 7, 7))
    for key in got.keys() - {"conv1.weight", "fc.weight", "fc.bias"}:  # bn1's affine and statistics included
        assert torch.equal(got[key], ref[key]), key
    assert got["fc.weight"].shape == (10, 512) and got["fc.bias"].shape == (10,)


@pytest.mark.parametrize("arch", teachers.TEACHERS.list())
def test_every_teacher_arch_derives_its_cifar_conv1(arch):
    model = torchvision.models.get_model(arch)  # its own state is a torchvision-format state_dict
    state = model.state_dict()
    teachers.use_cifar_stem(model)
    teachers.load_backbone(model, state, arch, cifar_stem=True)
    assert torch.equal(model.conv1.weight.detach(), teachers.cifar_conv1_from_imagenet(state["conv1.weight"]))
    assert torch.equal(model.bn1.running_var, state["bn1.running_var"])


@pytest.mark.parametrize("shape", [(64, 3, 5, 5), (64, 3, 3, 3), (32, 3, 7, 7), (64, 1, 7, 7)])
def test_a_pretrained_conv1_that_is_not_7x7_rgb_is_refused_in_one_line(resnet18_file, shape):
    state = dict(resnet18_file[1], **{"conv1.weight": torch.zeros(shape)})
    with pytest.raises(UserError, match=r"do not fit torchvision's resnet18 .*conv1\.weight") as err:
        teachers.load_backbone(teachers.create("resnet18"), state, "resnet18", cifar_stem=True)
    assert "\n" not in str(err.value)


def test_weights_of_another_arch_are_refused(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(UserError, match="do not fit torchvision's resnet34"):
        teachers.create("resnet34", weights=str(path))


def test_imagenet_weights_come_from_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), folder / "resnet18-f37072fd.pth")  # torchvision's IMAGENET1K_V1 file name
    model = teachers.create("resnet18", stem="imagenet", weights="imagenet")
    assert torch.equal(model.state_dict()["layer4.1.conv2.weight"], reference.state_dict()["layer4.1.conv2.weight"])


def test_imagenet_weights_offline_names_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*_args, **_kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(UserError) as err:
        teachers.create("resnet50", weights="imagenet")
    message = str(err.value)
    assert "resnet50-11ad3fa6.pth" in message  # IMAGENET1K_V2, torchvision's DEFAULT for resnet50
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in message and "--weights none" in message
    with pytest.raises(UserError, match="imagenet1k_v1"):
        teachers.create("resnet50", weights="no-such-file.pth")


def test_param_groups_lower_backbone_lr_and_no_decay_on_bn_and_bias():
    cfg = TeachConfig(lr=0.4, weight_decay=5e-4, backbone_lr_scale=0.1)
    model = teachers.create("resnet18", stem="cifar")
    spec = make_spec("resnet18", 10, 32, "cifar")
    groups = param_groups(model, cfg, new_parameter_names(spec, "imagenet"))
    by_param = {id(p): g for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert by_param[id(named["fc.weight"])]["lr"] == pytest.approx(0.4)
    for fresh in ("conv1.weight", "bn1.weight", "bn1.bias"):  # derived stem: its input statistics changed
        assert by_param[id(named[fresh])]["lr"] == pytest.approx(0.4), fresh
    assert by_param[id(named["layer1.0.conv1.weight"])]["lr"] == pytest.approx(0.04)
    assert by_param[id(named["layer1.0.bn1.weight"])]["weight_decay"] == 0
    assert by_param[id(named["fc.bias"])]["weight_decay"] == 0
    assert by_param[id(named["layer1.0.conv1.weight"])]["weight_decay"] == 5e-4
    scratch = param_groups(model, cfg, new_parameter_names(spec, "none"))
    assert {g["lr"] for g in scratch} == {0.4}


def test_new_parameter_names_are_the_head_and_for_the_cifar_stem_conv1_and_bn1():
    cifar, imagenet = make_spec("resnet18", 10, 32, "cifar"), make_spec("resnet18", 10, 224, "imagenet")
    head = {"fc.weight", "fc.bias"}
    assert new_parameter_names(cifar, "imagenet") == head | {"conv1.weight", "bn1.weight", "bn1.bias"}
    assert new_parameter_names(imagenet, "imagenet") == head
    assert new_parameter_names(cifar, "none") == set()
