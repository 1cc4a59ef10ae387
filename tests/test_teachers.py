"""Teacher backbones: CIFAR stem geometry, torchvision-format weights, ImageNet weights through TORCH_HOME."""

from __future__ import annotations

import pytest
import torch
import torchvision

import teachers
from distill.config import TeachConfig
from distill.errors import UserError
from distill.models import make_spec, new_parameter_names
from distill.run import param_groups


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


@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
def test_torchvision_state_dict_file_loads_all_but_head_and_replaced_stem(tmp_path, stem):
    reference = torchvision.models.resnet18(num_classes=1000)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    model = teachers.create("resnet18", num_classes=10, stem=stem, weights=str(path))
    ref, got = reference.state_dict(), model.state_dict()
    fresh = {"fc.weight", "fc.bias"} | ({"conv1.weight"} if stem == "cifar" else set())
    for key in got:
        if key in fresh:
            continue
        assert torch.equal(got[key], ref[key]), key
    assert got["fc.weight"].shape == (10, 512)
    assert (got["conv1.weight"].shape == (64, 3, 3, 3)) == (stem == "cifar")


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
    assert by_param[id(named["conv1.weight"])]["lr"] == pytest.approx(0.4)
    assert by_param[id(named["layer1.0.conv1.weight"])]["lr"] == pytest.approx(0.04)
    assert by_param[id(named["layer1.0.bn1.weight"])]["weight_decay"] == 0
    assert by_param[id(named["fc.bias"])]["weight_decay"] == 0
    assert by_param[id(named["layer1.0.conv1.weight"])]["weight_decay"] == 5e-4
    scratch = param_groups(model, cfg, new_parameter_names(spec, "none"))
    assert {g["lr"] for g in scratch} == {0.4}
