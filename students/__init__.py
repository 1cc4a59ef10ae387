"""Student architectures, created by name: the CIFAR ResNets and the students of the KD tables (WRN, VGG,
MobileNetV2, ShuffleNetV1/V2).

Every architecture module registers its constructors in `STUDENTS` (students/registry.py) when it is imported.
To add an architecture, declare its name in distill/front/names.py (the CLI checks names there before
importing torch), add one file here that decorates its constructors with `@STUDENTS.register()` (each taking
`num_classes`), and add it to the import line below.
"""

from __future__ import annotations

from distill.students import mobilenetv2, resnet_cifar, shufflenet, vgg, wrn  # noqa: F401  (they register)
from distill.students.registry import STUDENTS, create  # noqa: F401
