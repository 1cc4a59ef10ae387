"""Teacher backbones: torchvision ResNets with an optional CIFAR stem, started from ImageNet weights or a distill
checkpoint's, and their stages (what fine-tuning schedules freeze and scale).

Add a teacher by declaring its name in distill/front/names.py and registering a constructor
`fn(num_classes, stem, weights) -> nn.Module` on TEACHERS.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
import torchvision
from torch import nn

from distill.errors import UserError
from distill.front.names import STEMS, TEACHER_ARCHS, TEACHER_STAGES
from distill.registry import Registry

TEACHERS: Registry[nn.Module] = Registry("teacher arch", declared=TEACHER_ARCHS)


def use_cifar_stem(model: nn.Module) -> None:
    """3x3 stride-1 conv and no max-pool: a 32x32 image reaches layer1 at 32x32, not 8x8."""
    model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()


def build_torchvision(arch: str, num_classes: int = 10, stem: str = "cifar", weights: str = "none") -> nn.Module:
    if stem not in STEMS:
        raise UserError(f"unknown stem '{stem}': choose one of {', '.join(STEMS)}")
    # zero_init_residual: each block starts as the identity (its last BatchNorm scale is 0), which makes a deep
    # network train like a shallow one early on (Goyal et al. 2017); pretrained weights overwrite it.
    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes, zero_init_residual=True)
    if stem == "cifar":
        use_cifar_stem(model)
    if weights != "none":
        state, imagenet = pretrained_state_dict(arch, stem, weights)
        load_backbone(model, state, arch, cifar_stem=stem == "cifar" and imagenet)
    return model


# A torchvision ResNet from the bottom, stage by stage, the head last (declared torch-free for the command line).
STAGES = TEACHER_STAGES
HEAD_STAGE = len(STAGES) - 1


def stage_of(name: str) -> int:
    """The stage of a parameter or module by its name: 'layer3.1.conv2.weight' -> 3, 'fc.bias' -> 5 (the head)."""
    top = name.split(".")[0]
    return next(i for i, members in enumerate(STAGES) if top in members)


def cifar_conv1_from_imagenet(weight: torch.Tensor) -> torch.Tensor:
    """The 3x3 stride-1 kernel that reads a 32x32 image the way the 7x7 stride-2 kernel reads it enlarged by 7/3.

    A CIFAR image is an ImageNet object shrunk ~7x, and the 3x3 conv sees 3 pixels where the 7x7 saw 7, so
    tap i (offset -3..3) of the 7x7 kernel reads the image at 3i/7 CIFAR pixels. Each tap is spread over the
    three pixels -1, 0, 1 with the quadratic (Lagrange) interpolation weights for that offset, separably in
    rows and columns. For every image that is a quadratic polynomial over the window - constant colour,
    ramps, curvature, in any direction - the derived conv's response equals the 7x7 conv's response on the
    image enlarged by 7/3; in particular each filter's sum is preserved, so on flat regions the response is
    the pretrained one and bn1's running mean stays valid. Detail finer than 3x3 can hold is lost, so bn1's
    running variance is only approximately right.
    """
    # Not area resampling: antialiased bilinear and adaptive pooling weight the 7 taps unequally (0.8-1.6), so
    # filter sums drift; an exact box keeps sums but reads a ramp ~11% weak. On synthetic 1/f images with
    # Gabor-like filters, these quadratic weights gave the response (and its variance) closest to the 7x7's.
    x = torch.arange(-3, 4, dtype=torch.float64, device=weight.device) * 3 / 7
    taps = torch.stack([x * (x - 1) / 2, 1 - x * x, x * (x + 1) / 2]).to(weight.dtype)  # (3 pixels, 7 taps)
    return torch.einsum("ai,ocij,bj->ocab", taps, weight, taps)


def load_backbone(model: nn.Module, state: dict, arch: str, cifar_stem: bool) -> None:
    """Load every pretrained tensor except the new head; with `cifar_stem`, conv1 is derived from the 7x7 one.

    bn1 keeps its pretrained affine parameters and running statistics: the derived conv1 reproduces the
    responses that shaped them (see cifar_conv1_from_imagenet).
    """
    head = {"fc.weight", "fc.bias"}
    state = {k: v for k, v in state.items() if k not in head}
    expected = {k: v.shape for k, v in model.state_dict().items() if k not in head}
    if cifar_stem:  # the pretrained kernel conv1 is derived from
        expected["conv1.weight"] = (model.conv1.out_channels, 3, 7, 7)
    bad = [k for k, v in state.items() if k not in expected or expected[k] != v.shape]
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    if bad or missing:
        raise UserError(
            f"the weights do not fit torchvision's {arch} ({len(bad)} unexpected and {len(missing)} missing keys, "
            f"e.g. {(bad or missing)[0]}): pass a state_dict saved from torchvision.models.{arch}, or --weights none"
        )
    if cifar_stem:
        state["conv1.weight"] = cifar_conv1_from_imagenet(state["conv1.weight"])
    model.load_state_dict(state, strict=False)


def weight_choices(arch: str) -> dict[str, object]:
    """'imagenet' is torchvision's DEFAULT (IMAGENET1K_V2 for resnet50); each named version is selectable."""
    enum = torchvision.models.get_model_weights(arch)
    choices = {"imagenet": enum.DEFAULT}
    choices.update({m.lower(): getattr(enum, m) for m in enum.__members__ if m != "DEFAULT"})
    return choices


def pretrained_state_dict(arch: str, stem: str, weights: str) -> tuple[dict, bool]:
    """The pretrained tensors, and whether they are in torchvision's ImageNet layout (a 7x7 conv1 that the CIFAR
    stem derives its kernel from) rather than a distill checkpoint of this very model."""
    choices = weight_choices(arch)
    if weights.lower() in choices:
        cached = cached_torchvision_weights(choices[weights.lower()])
        return state_dict_of(read_file(cached), cached), True
    path = Path(weights).expanduser()
    if not path.is_file():
        raise UserError(
            f"--weights '{weights}' is neither a file nor one of: none, {', '.join(choices)}"
        )
    content = read_file(path)
    if not is_distill_checkpoint(content):
        return state_dict_of(content, path), True
    from distill.engine.checkpoint import eval_state_dict, load_checkpoint

    ck = load_checkpoint(path)  # its metadata checked as any checkpoint's
    have = (ck["spec"]["arch"], ck["spec"].get("stem"))
    if ck["spec"]["family"] != "teacher":
        raise UserError(f"--weights {path} holds the student {have[0]}: pass the checkpoint of a teacher arch "
                        f"({', '.join(TEACHER_ARCHS)})")
    if have != (arch, stem):
        raise UserError(f"--weights {path} holds a {have[0]} with the {have[1]} stem, not the {arch} with the {stem} "
                        f"stem this run builds: pass --arch {have[0]} --stem {have[1]}, or other --weights")
    return eval_state_dict(ck), False


def imagenet_layout(weights: str) -> bool:
    """Whether --weights (not none) names torchvision's ImageNet weights or a file in their layout, not a distill
    checkpoint: the CIFAR stem is then derived from them, and trains at the full rate."""
    path = Path(weights).expanduser()
    return not path.is_file() or not is_distill_checkpoint(read_file(path))  # a name: torchvision's


def cached_torchvision_weights(entry) -> Path:
    """The file torchvision's weights API caches under $TORCH_HOME/hub/checkpoints, downloaded if missing."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    target = folder / Path(entry.url).name
    if target.is_file():
        return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(entry.url, str(target), progress=False)
    except Exception as exc:  # offline, proxy, disk: all have the same fix
        raise UserError(
            f"ImageNet weights are not cached and could not be downloaded ({type(exc).__name__}): "
            f"put {target.name} from {entry.url} into {folder}, or use --weights none"
        ) from None
    return target


def read_file(path: Path) -> object:
    from distill.engine.checkpoint import read_torch_file  # one place decides how hostile files are refused

    return read_torch_file(path)


def is_distill_checkpoint(content: object) -> bool:
    from distill.engine.checkpoint import FORMAT

    return isinstance(content, dict) and content.get("format") == FORMAT


def state_dict_of(content: object, path: Path) -> dict:
    """A torchvision-format state_dict (also under a 'state_dict' key), or a one-line refusal."""
    if isinstance(content, dict) and "state_dict" in content and isinstance(content["state_dict"], dict):
        content = content["state_dict"]
    if not isinstance(content, dict) or not all(isinstance(v, torch.Tensor) for v in content.values()):
        raise UserError(f"{path} is neither a state_dict (a dict of tensors in torchvision's key format) nor a "
                        f"distill checkpoint")
    return content


for _arch in TEACHER_ARCHS:  # declared in distill/front/names.py, where the CLI reads them without torch
    TEACHERS.register(_arch)(partial(build_torchvision, _arch))


def forward_features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits and [stem output, layer1-4 outputs, pooled feature] of a torchvision ResNet: the same layers
    as its forward, in the layout students' `forward_features` return (for feature distillation)."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    feats = [x]
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        feats.append(layer(feats[-1]))
    pooled = torch.flatten(model.avgpool(feats[-1]), 1)
    feats.append(pooled)
    return model.fc(pooled), feats


def create(arch: str, num_classes: int = 10, stem: str = "cifar", weights: str = "none") -> nn.Module:
    return TEACHERS.create(arch, num_classes=num_classes, stem=stem, weights=weights)
