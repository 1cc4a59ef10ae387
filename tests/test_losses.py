import sys

import pytest
import torch
import torch.nn.functional as F

from distill.errors import UserError
from distill.methods import METHODS, Batch, Outputs, create, soft_cross_entropy

B, C = 16, 10


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def logits(scale: float = 3.0, batch: int = B) -> torch.Tensor:
    return torch.randn(batch, C) * scale


def one_hot(labels: torch.Tensor) -> torch.Tensor:
    return F.one_hot(labels, C).float()


def mixed_targets(lam: float = 0.7) -> torch.Tensor:
    return lam * one_hot(torch.randint(C, (B,))) + (1 - lam) * one_hot(torch.randint(C, (B,)))


def make(name: str, label_smoothing: float = 0.0, **options):
    return create(name, options, label_smoothing)


def call(method, s, t, y, progress: float = 1.0):
    """A logits-only method on (student, teacher) logits, as the loop calls it with Outputs."""
    return method(Outputs(s), None if t is None else Outputs(t), Batch(y, progress))


def total(name: str, s, t, y, progress: float = 1.0, **kw) -> torch.Tensor:
    return call(make(name, **kw), s, t, y, progress)[0]


# --- soft_cross_entropy ---------------------------------------------------------------------


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


# --- KD ---------------------------------------------------------------------------------------


def test_kd_matches_hand_formula():
    s, t, y, temp, alpha = logits(), logits(), mixed_targets(), 4.0, 0.9
    p_t = torch.softmax(t / temp, dim=1)
    kl = (p_t * (torch.log_softmax(t / temp, dim=1) - torch.log_softmax(s / temp, dim=1))).sum(1)
    ce = -(y * torch.log_softmax(s, dim=1)).sum(1)
    expected = ((1 - alpha) * ce + alpha * temp**2 * kl).mean()
    torch.testing.assert_close(total("kd", s, t, y, temperature=temp, kd_weight=alpha), expected)


def test_kd_is_zero_when_student_equals_teacher_at_alpha_one():
    s = logits()
    assert total("kd", s, s.clone(), mixed_targets(), kd_weight=1.0).abs() < 1e-6


def test_kd_alpha_zero_is_cross_entropy():
    s, t, y = logits(), logits(), mixed_targets()
    torch.testing.assert_close(total("kd", s, t, y, kd_weight=0.0), soft_cross_entropy(s, y))


def test_kd_is_batchmean():
    s, t, y = logits(), logits(), mixed_targets()
    doubled = total("kd", s.repeat(2, 1), t.repeat(2, 1), y.repeat(2, 1), kd_weight=1.0)
    torch.testing.assert_close(doubled, total("kd", s, t, y, kd_weight=1.0))


def test_kd_t_squared_keeps_gradient_scale():
    # For small logits, d(T^2 KL)/dz_s ~ (z_s - z_t - mean)/C, independent of T;
    # without the T^2 factor the gradient would shrink 4x from T=4 to T=8.
    s, t, y = logits(scale=0.1), logits(scale=0.1), mixed_targets()

    def grad_norm(temp: float) -> float:
        s_ = s.clone().requires_grad_()
        total("kd", s_, t, y, kd_weight=1.0, temperature=temp).backward()
        return s_.grad.norm().item()

    assert grad_norm(8.0) / grad_norm(4.0) == pytest.approx(1.0, rel=0.1)


# --- DKD --------------------------------------------------------------------------------------


def dkd_reference(s, t, y, temp, alpha, beta):
    """The paper's equations, one sample at a time."""
    tckd, nckd = [], []
    for s_i, t_i, y_i in zip(s / temp, t / temp, y):
        g = int(y_i.argmax())
        p_s, p_t = torch.softmax(s_i, 0), torch.softmax(t_i, 0)
        b_s, b_t = torch.stack([p_s[g], 1 - p_s[g]]), torch.stack([p_t[g], 1 - p_t[g]])
        tckd.append((b_t * (b_t.log() - b_s.log())).sum())
        drop = lambda v: torch.cat([v[:g], v[g + 1 :]])  # noqa: E731
        q_s, q_t = torch.softmax(drop(s_i), 0), torch.softmax(drop(t_i), 0)
        nckd.append((q_t * (q_t.log() - q_s.log())).sum())
    kd = temp**2 * (alpha * torch.stack(tckd).mean() + beta * torch.stack(nckd).mean())
    return F.cross_entropy(s, y) + kd


@pytest.mark.parametrize("temp,alpha,beta", [(4.0, 1.0, 8.0), (1.0, 0.5, 2.0)])
def test_dkd_matches_per_sample_reference(temp, alpha, beta):
    s, t, y = logits().double(), logits().double(), mixed_targets().double()
    got = total("dkd", s, t, y, temperature=temp, tckd_weight=alpha, nckd_weight=beta, kd_warmup=0.1)
    torch.testing.assert_close(got.double(), dkd_reference(s, t, y, temp, alpha, beta))


def test_dkd_warmup_is_a_share_of_the_run_linear_then_saturated():
    s, t, y = logits(), logits(), mixed_targets()
    method = make("dkd")  # the paper's 20 of 240 epochs: the first twelfth of any run
    assert method.options.kd_warmup == pytest.approx(20 / 240, abs=1e-4)
    kd_at = {p: call(method, s, t, y, p)[1]["kd"] for p in (0.0, 0.25 / 12, 1 / 12, 0.5)}
    assert kd_at[0.0] == 0
    torch.testing.assert_close(kd_at[0.25 / 12], 0.25 * kd_at[1 / 12], rtol=2e-3, atol=0)
    torch.testing.assert_close(kd_at[0.5], kd_at[1 / 12])


@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_kd_decomposes_into_tckd_and_nckd(temp):
    # Paper eq. (7): KD = TCKD + (1 - p_t^T) * NCKD per sample (all three carry the same T^2).
    for _ in range(5):
        s, t = logits(batch=1).double(), logits(batch=1).double()
        y = one_hot(torch.randint(C, (1,))).double()
        _, parts = call(make("dkd", temperature=temp), s, t, y)
        kd = total("kd", s, t, y, temperature=temp, kd_weight=1.0)
        p_target = torch.softmax(t / temp, dim=1)[0, y.argmax()]
        torch.testing.assert_close(kd, parts["tckd"] + (1 - p_target) * parts["nckd"])


def test_dkd_is_finite_for_confident_logits():
    s, t, y = logits(scale=200.0), logits(scale=200.0), mixed_targets()
    assert torch.isfinite(total("dkd", s, t, y))


# --- registry, validation, dtype -------------------------------------------------------------


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


def test_none_is_label_smoothed_ce_without_teacher():
    s, y = logits(), mixed_targets()
    loss, parts = call(make("none", label_smoothing=0.1), s, None, y, 0.0)
    torch.testing.assert_close(loss, soft_cross_entropy(s, y, 0.1))
    assert set(parts) == {"ce"}


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
