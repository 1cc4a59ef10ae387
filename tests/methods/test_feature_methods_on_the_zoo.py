"""The feature methods (FitNets, AT, CRD) on the students of RepDistiller's and mdistiller's tables against the zoo's
teachers: each sets up on the two networks' real features (the shapes the engine's probe shows it), computes its
loss, and backpropagates finite gradients into every student parameter, its own term reaching the student's stem."""

from __future__ import annotations

import pytest
import torch

from distill.methods import Batch, Outputs, TrainingSet, create
from distill.models import build_model, forward_with_features, make_spec

STUDENTS = ("wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg8", "vgg13", "mobilenetv2", "shufflenetv1", "shufflenetv2")
TEACHERS = ("resnet32x4", "wrn_40_2", "vgg13", "resnet50")  # resnet50: torchvision's, with the CIFAR stem
# Each method's options at a test's size, and the part of its loss that is its own (beside the cross-entropy).
METHODS = {"fitnet": ({}, "hint"), "at": ({}, "attention"),
           "crd": ({"crd_dim": 16, "crd_negatives": 8}, "crd")}
CLASSES, SIZE = 10, 32  # CIFAR's side: every student's stages as in a real run (mobilenetv2's last is 2x2)
DATA = TrainingSet(20, torch.arange(20) % CLASSES, torch.device("cpu"))  # CRD's memory banks: one row per image
INDICES = torch.tensor([3, 7])  # the batch's positions in DATA: two classes, so CRD has negatives of both


def images() -> torch.Tensor:
    return torch.randn(len(INDICES), 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def model(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(make_spec(arch, CLASSES, SIZE))


@pytest.fixture(scope="module")
def teacher_outputs() -> dict[str, Outputs]:
    """Each teacher's logits and features on the batch, as the loop gives them: eval mode, no gradient."""
    with torch.no_grad():
        return {arch: Outputs(*forward_with_features(model(arch).eval(), images())) for arch in TEACHERS}


@pytest.mark.parametrize("method_name", METHODS)
@pytest.mark.parametrize("teacher", TEACHERS)
@pytest.mark.parametrize("student_arch", STUDENTS)
def test_each_feature_method_trains_each_zoo_student_from_each_zoo_teacher(student_arch, teacher, method_name,
                                                                          teacher_outputs):
    options, own_term = METHODS[method_name]
    student, x = model(student_arch), images()
    method = create(method_name, options)
    with torch.no_grad():  # engine/build.py's probe: the student's features in eval mode show their shapes
        method.setup(Outputs(*forward_with_features(student.eval(), x)), teacher_outputs[teacher], DATA)
    student.train()
    targets = torch.eye(CLASSES)[DATA.labels[INDICES]]
    batch = Batch(targets, 0.5, INDICES, torch.Generator().manual_seed(2))
    # Method.loss is what the loop's call runs in float32, with its parts still attached to the graph.
    total, parts = method.loss(Outputs(*forward_with_features(student, x)), teacher_outputs[teacher], batch)
    assert total.isfinite() and parts[own_term].isfinite()
    stem = next(student.parameters())  # the first layer: a term that reaches it crossed the whole student
    [from_term] = torch.autograd.grad(parts[own_term], [stem], retain_graph=True)
    assert from_term.isfinite().all() and from_term.abs().sum() > 0
    trained = list(student.named_parameters()) + list((method.modules or torch.nn.Module()).named_parameters())
    total.backward()
    assert [name for name, p in trained if p.grad is None or not p.grad.isfinite().all()] == []
    if method.modules is not None:  # FitNets' connector, CRD's embedding heads: they learn too
        assert all(p.grad.abs().sum() > 0 for p in method.modules.parameters() if p.ndim > 1)
