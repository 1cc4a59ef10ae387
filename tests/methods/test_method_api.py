"""What every method shares: the registry and its discovery, options (one meaning per flag, each method's own
range, defaults filled in), float32 losses under bf16 autocast, label smoothing, detached parts, the README's
example method, and every method through a real student run."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

from distill.engine.checkpoint import load_checkpoint
from distill.errors import UserError
from distill.methods import METHODS, Batch, Outputs, create, soft_cross_entropy
from methodhelpers import C, call, logits, make, mixed_targets, one_hot, seeded, total  # noqa: F401
from runhelpers import run_args

B = 16

@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_soft_ce_matches_cross_entropy_for_one_hot(eps):
    s, labels = logits(), torch.randint(C, (B,))
    expected = F.cross_entropy(s, labels, label_smoothing=eps)
    torch.testing.assert_close(soft_cross_entropy(s, one_hot(labels), eps), expected)


def test_soft_ce_of_mixed_targets_is_weighted_sum():
    s, a, b, lam = logits(), torch.randint(C, (B,)), torch.randint(C, (B,)), 0.3
    y = lam * one_hot(a) + (1 - lam) * one_hot(b)
    expected = lam * F.cross_entropy(s, a) + (1 - lam) * F.cross_entropy(s, b)
    torch.testing.assert_close(soft_cross_entropy(s, y), expected)


def test_registry_names_and_unknown_name():
    assert list(METHODS) == ["none", "kd", "at", "crd", "dist", "dkd", "fitnet"]
    with pytest.raises(UserError, match="none, kd, at, crd, dist, dkd, fitnet"):
        make("rkd")


def test_a_method_file_dropped_into_the_folder_is_found_without_editing_an_import_line(tmp_path, monkeypatch):
    import distill.methods as methods

    (tmp_path / "zero.py").write_text(
        "from distill.methods import register\nfrom distill.methods.base import Method\n\n\n@register\n"
        "class Zero(Method):\n    name = 'zero'\n    summary = 'a test method'\n\n"
        "    def loss(self, student, teacher, batch):\n        return 0 * student.logits.sum(), {}\n")
    monkeypatch.setattr(methods, "__path__", [*methods.__path__, str(tmp_path)])
    monkeypatch.setattr(methods, "METHODS", dict(methods.METHODS))  # the registry as it was, after the test
    methods.discover()
    assert list(methods.METHODS)[:2] == ["none", "kd"] and "zero" in methods.METHODS
    monkeypatch.delitem(sys.modules, "distill.methods.zero")


def test_a_method_without_a_teacher_is_set_up_with_the_training_set(monkeypatch):
    """`setup` is every method's, not only a distilling one's: a teacher-free method that keeps a memory bank (one
    row per training image) gets the TrainingSet and the student's output shapes, and no teacher."""
    import dataclasses

    from distill.engine.build import Probe, make_learner
    from distill.front import config
    from distill.methods import TrainingSet
    from distill.methods.base import Method
    from distill.models import make_spec

    seen = {}

    class Bank(Method):
        name, summary, needs_teacher = "bank", "a test method: the student's logits kept per training image", False

        def setup(self, student, teacher, data):
            seen.update(student=student, teacher=teacher, data=data)
            self.modules = torch.nn.Module()
            self.modules.register_buffer("bank", torch.zeros(data.size, student.logits.shape[1], device=data.device))
            return self.modules

        def loss(self, student, teacher, batch):
            self.modules.bank[batch.indices] = student.logits.detach()
            ce = self.ce(student.logits, batch.targets)
            return ce, {"ce": ce}

    monkeypatch.setitem(METHODS, "bank", Bank)
    baseline = config.resolve(config.StudentConfig, {}, {"arch": "resnet8", "no_teacher": True, "device": "cpu"})
    cfg = dataclasses.replace(baseline, no_teacher=False, method="bank")  # no teacher: the method needs none
    data = TrainingSet(42, torch.arange(42) % C, torch.device("cpu"))
    probe = Probe(torch.rand(2, 3, 16, 16), None, False, data)
    learner = make_learner(cfg, "bank", make_spec("resnet8", C, 16), ((0.5,) * 3, (0.25,) * 3), torch.device("cpu"),
                           False, 5, pretrained=True, probe=probe)
    assert seen["data"] is data and seen["teacher"] is None and seen["student"].logits.shape == (2, C)
    assert learner.method.modules.bank.shape == (42, C)
    z, rows = logits(batch=3), torch.tensor([4, 0, 41])
    learner.method(Outputs(z), None, Batch(one_hot(torch.arange(3)), 0.5, rows))
    torch.testing.assert_close(learner.method.modules.bank[rows], z)  # its rows, by dataset position


def test_a_flag_shared_by_methods_means_the_same_thing_in_each():
    """--alpha once meant KD's weight in kd and TCKD's in dkd: a name two methods declare must share its help."""
    import dataclasses

    declared: dict[str, set[str]] = {}
    for cls in METHODS.values():
        for f in dataclasses.fields(cls.Options):
            declared.setdefault(f.name, set()).add(f.metadata["help"])
    assert {name: helps for name, helps in declared.items() if len(helps) > 1} == {}
    assert len([cls for cls in METHODS.values() if "temperature" in cls.Options.__dataclass_fields__]) >= 3


def test_a_method_refuses_options_it_does_not_take_and_fills_the_rest_with_its_defaults():
    with pytest.raises(UserError, match=r"--nckd-weight does not apply to --method kd \(it takes --temperature, "
                                        r"--kd-weight\)"):
        make("kd", nckd_weight=4.0)
    assert make("kd", temperature=2.0).option_values() == {"temperature": 2.0, "kd_weight": 0.9}
    assert make("dkd").option_values() == {"temperature": 4.0, "tckd_weight": 1.0, "nckd_weight": 8.0,
                                           "kd_warmup": 0.0833}
    needs = {name: (cls.needs_teacher, cls.needs_features) for name, cls in METHODS.items()}
    assert needs == {"none": (False, False), "kd": (True, False), "dkd": (True, False), "dist": (True, False),
                     "fitnet": (True, True), "at": (True, True), "crd": (True, True)}


def test_parts_are_detached():
    s = logits().requires_grad_()
    loss, parts = call(make("dkd"), s, logits(), mixed_targets(), 1.0)
    assert loss.requires_grad and not any(v.requires_grad for v in parts.values())


@pytest.mark.parametrize(
    "name,kw,word",
    [
        ("kd", {"temperature": 0.0}, "temperature"),
        ("kd", {"kd_weight": 1.5}, "kd-weight"),
        ("kd", {"kd_weight": -0.1}, "kd-weight"),
        ("dkd", {"temperature": -1.0}, "temperature"),
        ("dkd", {"tckd_weight": -1.0}, "tckd-weight"),
        ("dkd", {"nckd_weight": -1.0}, "nckd-weight"),
    ],
)
def test_bad_hyperparameters_raise_user_error(name, kw, word):
    with pytest.raises(UserError, match=word):
        make(name, **kw)


@pytest.mark.parametrize("name", ["none", "kd", "dkd", "dist"])
def test_bf16_autocast_computes_in_float32(name):
    s, t, y = logits(), logits(), mixed_targets()
    reference = total(name, s, t, y, progress=0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = total(name, s.bfloat16(), t.bfloat16(), y, progress=0.5)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, reference, rtol=2e-2, atol=1e-2)


@pytest.mark.parametrize(("name", "ce_weight", "kw"), [("kd", 1 - 0.9, {"kd_weight": 0.9}), ("dkd", 1.0, {}),
                                                       ("dist", 1.0, {})])
def test_the_students_ce_term_honours_the_configured_label_smoothing(name, ce_weight, kw):
    """The KD term is unchanged and the CE term is exactly F.cross_entropy with that smoothing."""
    s, t, labels = logits(), logits(), torch.randint(C, (B,))
    plain = total(name, s, t, one_hot(labels), **kw)
    smoothed, parts = call(make(name, label_smoothing=0.2, **kw), s, t, one_hot(labels))
    torch.testing.assert_close(parts["ce"], F.cross_entropy(s, labels, label_smoothing=0.2))
    expected = plain + ce_weight * (F.cross_entropy(s, labels, label_smoothing=0.2) - F.cross_entropy(s, labels))
    torch.testing.assert_close(smoothed, expected)


@pytest.mark.parametrize("method", ["fitnet", "at", "dist"])
def test_every_method_trains_a_student_end_to_end(cli, tiny_teacher, tmp_path, method):
    data, best = tiny_teacher
    out = tmp_path / method
    result = cli(*run_args("student", data, out, 1, "--teacher", best, "--any-teacher", "--method", method))
    assert result.code == 0, result.err
    ck = load_checkpoint(out / "last.pt")
    assert (ck["method_state"] is not None) == (method == "fitnet")  # the connector is saved with the run
    assert not any(k.startswith("module.") for k in ck["model"])  # the plain student's keys, not the wrapper's


def test_the_readmes_example_method_registers_and_computes_its_loss():
    """README, "Add a method": the example file, run as written, is a working method."""
    import re
    import sys
    import types
    from pathlib import Path

    from distill.methods import METHODS

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("### Add a method"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    module = types.ModuleType("distill.methods.cosine")  # a real module, as the file would be
    sys.modules[module.__name__] = module
    try:
        exec(compile(code, "README example", "exec"), module.__dict__)
        method = create("cosine", {"cosine_weight": 2.0})
        z = torch.randn(B, C)
        loss, parts = method(Outputs(z), Outputs(z.clone()), Batch(one_hot(torch.randint(C, (B,))).float(), 1.0))
        assert parts["cosine"].abs() < 1e-6 and torch.allclose(loss, parts["ce"])  # a perfect copy costs only CE
        assert method.option_values() == {"temperature": 4.0, "cosine_weight": 2.0}
    finally:
        METHODS.pop("cosine", None)
        sys.modules.pop(module.__name__, None)
