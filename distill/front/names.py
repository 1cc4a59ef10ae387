"""Every model name a user can type, without importing torch (methods: distill/methods/, torch-free too).

The command line checks --arch and --method against these before torch is imported, so a typo answers
in a fraction of a second instead of after 5-25 s of imports and data decoding. The registries that
build the models (teachers/, students/) accept only names declared here
(`Registry(kind, declared=...)`), and tests/front/test_cli.py checks that every name declared here is
registered: a name added on one side only fails at import or in that test.
"""

from __future__ import annotations

# torchvision ResNets (teachers/__init__.py builds them by these names).
TEACHER_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "wide_resnet50_2")
# The pretrained weights `--weights` may name for each teacher besides a file: torchvision's, lower-case, `imagenet`
# being its DEFAULT (teachers/__init__.py's weight_choices reads them from torchvision; tests/front/test_cli.py
# checks that the two agree). Named here so that a typo answers before torch is imported.
TEACHER_WEIGHTS = {"resnet18": ("imagenet", "imagenet1k_v1"), "resnet34": ("imagenet", "imagenet1k_v1"),
                   "resnet50": ("imagenet", "imagenet1k_v1", "imagenet1k_v2"),
                   "resnet101": ("imagenet", "imagenet1k_v1", "imagenet1k_v2"),
                   "wide_resnet50_2": ("imagenet", "imagenet1k_v1", "imagenet1k_v2")}
# CIFAR ResNets of He et al. (parameter-free shortcuts), RepDistiller's thin ones (1x1 projection shortcuts: the
# "b" names) and its 4x-wide ones (students/resnet_cifar.py), and the other students of RepDistiller's /
# mdistiller's CIFAR tables (students/wrn.py, vgg.py, mobilenetv2.py, shufflenet.py).
STUDENT_ARCHS = ("resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
                 "resnet8b", "resnet14b", "resnet20b", "resnet32b", "resnet44b", "resnet56b", "resnet110b",
                 "resnet8x4", "resnet32x4", "wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg8", "vgg13",
                 "mobilenetv2", "shufflenetv1", "shufflenetv2")
# A teacher (a torchvision ResNet) from the bottom, stage by stage, each named by its top-level modules, the head
# last: what fine-tuning schedules freeze and unfreeze and layer-wise decay scales (teachers/__init__.py), and what
# the command line counts to check that --unfreeze gradual reaches every stage within --epochs.
TEACHER_STAGES = (("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",), ("fc",))
# Teachers' first layers: cifar (3x3 stride 1, no max-pool) or torchvision's imagenet stem.
STEMS = ("cifar", "imagenet")
# Either family can be trained by `distill teach` or `distill student`, and any trained model can teach.
ARCHS = TEACHER_ARCHS + STUDENT_ARCHS

# The official data sets --dataset names, the default first (distill/data/cifar.py knows each one's files).
DATASETS = ("cifar10", "cifar100")
