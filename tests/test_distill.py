"""The DFD equations against hand-computed examples, and the gradient rules."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dfd.distill import (
    DFDLoss,
    DistillContext,
    FeatureDistillation,
    FeatureMSELoss,
    PKDParams,
    Threshold,
    channel_attention,
    disparity_map,
    masked_squared_error,
    parse_threshold,
    pkd_loss,
    region_mask,
    spatial_attention,
    threshold_value,
)

LN5 = math.log(5.0)


def _pair() -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher with mean|F| = [0, 0, 0, ln5] (A = [.5, .5, .5, 2.5]); student uniform (A = 1) -> D = [.5, .5, .5, 1.5]."""
    t = torch.zeros(1, 2, 2, 2)
    t[0, 0, 1, 1] = 2 * LN5
    s = torch.ones(1, 2, 2, 2)
    return s, t


def test_spatial_attention_by_hand() -> None:
    f = torch.tensor([0.0, math.log(3.0)]).reshape(1, 1, 1, 2)
    assert torch.allclose(spatial_attention(f), torch.tensor([0.5, 1.5]).reshape(1, 1, 1, 2))
    # T = 0.5 squares the odds: softmax([0, 2 ln 3]) = [1, 9] / 10
    assert torch.allclose(spatial_attention(f, temperature=0.5), torch.tensor([0.2, 1.8]).reshape(1, 1, 1, 2))
    # mean over channels of |F|: [|1|+|3|, |-3|+|1|] / 2 = [2, 2] -> uniform
    g = torch.tensor([[1.0, -3.0], [3.0, 1.0]]).reshape(1, 2, 1, 2)
    assert torch.allclose(spatial_attention(g), torch.ones(1, 1, 1, 2))


def test_attention_sums_to_hw() -> None:
    a = spatial_attention(torch.randn(3, 5, 4, 6))
    assert a.shape == (3, 1, 4, 6)
    assert torch.allclose(a.sum(dim=(1, 2, 3)), torch.full((3,), 24.0))


def test_channel_attention_by_hand() -> None:
    f = torch.zeros(1, 2, 1, 1)
    f[0, 1] = math.log(3.0)
    assert torch.allclose(channel_attention(f), torch.tensor([[0.5, 1.5]]))


def test_disparity_by_hand() -> None:
    s, t = _pair()
    d = disparity_map(s, t)
    assert torch.allclose(d, torch.tensor([0.5, 0.5, 0.5, 1.5]).reshape(1, 1, 2, 2), atol=1e-6)


def test_disparity_allows_different_widths_not_sizes() -> None:
    assert disparity_map(torch.randn(2, 3, 4, 4), torch.randn(2, 7, 4, 4)).shape == (2, 1, 4, 4)
    with pytest.raises(ValueError, match="spatial size"):
        disparity_map(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 5))


@pytest.mark.parametrize(
    "threshold, expected",
    [
        ("mean", [0, 0, 0, 1]),  # P = 0.75
        ("median", [1, 1, 1, 1]),  # P = 0.5 (lower median); D >= P everywhere
        ("quantile:0.9", [0, 0, 0, 1]),  # P = 0.5 + 0.7 * 1.0 = 1.2
        (0.6, [0, 0, 0, 1]),
        (2.0, [0, 0, 0, 0]),
    ],
)
def test_region_mask_thresholds(threshold, expected) -> None:
    d = torch.tensor([0.5, 0.5, 0.5, 1.5]).reshape(1, 1, 2, 2)
    assert region_mask(d, threshold).flatten().tolist() == expected


def test_threshold_values_by_hand() -> None:
    d = torch.tensor([0.5, 0.5, 0.5, 1.5]).reshape(1, 1, 2, 2)
    assert threshold_value(d, "mean").item() == pytest.approx(0.75)
    assert threshold_value(d, "quantile:0.9").item() == pytest.approx(1.2)


def test_threshold_is_per_image() -> None:
    d = torch.stack([torch.tensor([0.0, 1.0]), torch.tensor([10.0, 30.0])]).reshape(2, 1, 1, 2)
    assert region_mask(d).flatten().tolist() == [0, 1, 0, 1]


@pytest.mark.parametrize("value", [0.1, 1.0 / 3.0, 7.0, 0.0])
def test_mask_uniform_map_is_all_high_disparity(value: float) -> None:
    d = torch.full((2, 1, 7, 9), value)
    assert region_mask(d).eq(1).all()
    assert region_mask(d, "median").eq(1).all()


def test_mask_single_position() -> None:
    assert region_mask(torch.tensor([[[[0.3]]]])).item() == 1.0


@pytest.mark.parametrize("bad", ["avg", "quantile:1.5", "quantile:x", -0.1, True])
def test_bad_threshold_rejected(bad) -> None:
    with pytest.raises(ValueError, match="threshold|quantile"):
        region_mask(torch.rand(1, 1, 2, 2), bad)


@pytest.mark.parametrize("mask", ["binary", "soft", None])
def test_masked_squared_error_value_and_gradients_match_the_formula(mask: str | None) -> None:
    """The three-pass autograd Function against the formula: value, and gradients for target and prediction."""
    g = torch.Generator().manual_seed(0)
    t = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    p = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    m = {"binary": (torch.rand(2, 1, 4, 5, generator=g) > 0.5).double(), "soft": torch.rand(2, 1, 4, 5, generator=g, dtype=torch.float64),
         None: None}[mask]
    expected = ((t - p) ** 2 * (1.0 if m is None else m)).sum() / 2
    got = masked_squared_error(t, p, m)
    assert got.dtype == torch.float32  # computed in float32 whatever the inputs
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    want = torch.autograd.grad(expected, (t, p))
    have = torch.autograd.grad(masked_squared_error(t, p, m), (t, p))
    for w, h in zip(want, have):
        assert torch.allclose(w, h.double(), rtol=1e-5, atol=1e-6)


def test_dfd_loss_mse_by_hand() -> None:
    s, t = _pair()
    loss = DFDLoss(2, 2, hd="mse", ld="mse", alpha=1.0, beta=1.0)
    out = loss(s, t)
    assert set(out) == {"hd", "ld"}
    # HD = the position with D = 1.5: (2 ln5 - 1)^2 + (0 - 1)^2 ; LD = 3 positions x 2 channels x 1^2
    assert out["hd"].item() == pytest.approx((2 * LN5 - 1) ** 2 + 1, rel=1e-5)
    assert out["ld"].item() == pytest.approx(6.0, rel=1e-6)
    assert loss.hd_fraction.item() == pytest.approx(0.25)


def test_dfd_loss_divides_by_batch_and_applies_weights() -> None:
    s, t = _pair()
    loss = DFDLoss(2, 2, hd="mse", ld="mse", alpha=0.5, beta=3.0)
    out = loss(torch.cat([s, s]), torch.cat([t, t]))
    assert out["hd"].item() == pytest.approx(0.5 * ((2 * LN5 - 1) ** 2 + 1), rel=1e-5)
    assert out["ld"].item() == pytest.approx(18.0, rel=1e-6)


def _doubling_transform(loss: DFDLoss) -> None:
    loss.transform = nn.Conv2d(2, 2, 1, bias=False)
    with torch.no_grad():
        loss.transform.weight.copy_(2 * torch.eye(2).reshape(2, 2, 1, 1))


def test_dfd_loss_transform_constraints_by_hand() -> None:
    s, t = _pair()
    loss = DFDLoss(2, 2, hd="tf", ld="tf+mse", alpha=1.0, beta=1.0, transform="conv1x1")
    _doubling_transform(loss)
    out = loss(s, t)
    # HD under f_trans(F^S) = 2: (2 ln5 - 2)^2 + (0 - 2)^2
    assert out["hd"].item() == pytest.approx((2 * LN5 - 2) ** 2 + 4, rel=1e-5)
    # LD under tf+mse: 3 positions x 2 channels x (2^2 + 1^2)
    assert out["ld"].item() == pytest.approx(30.0, rel=1e-6)


def test_region_none_is_zero_and_transform_only_when_used() -> None:
    s, t = _pair()
    loss = DFDLoss(2, 2, hd="none", ld="mse", alpha=1.0, beta=1.0)
    assert loss.transform is None
    out = loss(s, t)
    assert out["hd"].item() == 0.0 and out["ld"].item() == pytest.approx(6.0)


def test_unsplit_equals_plain_mse() -> None:
    s, t = torch.randn(2, 4, 5, 5), torch.randn(2, 4, 5, 5)
    dfd = DFDLoss(4, 4, hd="mse", ld="mse", alpha=0.3, beta=0.3)(s, t)
    mse = FeatureMSELoss(4, 4, weight=0.3)(s, t)["mse"]
    assert (dfd["hd"] + dfd["ld"]).item() == pytest.approx(mse.item(), rel=1e-5)


@pytest.mark.parametrize("hd, ld", [("tf", "mse"), ("tf+mse", "tf"), ("mse", "tf+mse")])
def test_gradients_reach_student_and_transform_never_teacher(hd: str, ld: str) -> None:
    s = torch.randn(2, 8, 6, 6, requires_grad=True)
    t = torch.randn(2, 16, 6, 6, requires_grad=True)  # different widths: 1x1 alignment
    loss = DFDLoss(8, 16, hd=hd, ld=ld, alpha=1.0, beta=1.0)
    sum(loss(s, t).values()).backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in loss.transform.parameters())
    assert isinstance(loss.align, nn.Conv2d) and loss.align.weight.grad is not None


def test_selection_carries_no_gradient() -> None:
    """Only the squared errors carry gradient: the same loss with a constant mask gives the same student gradient."""
    s = torch.randn(1, 3, 4, 4, requires_grad=True)
    t = torch.randn(1, 3, 4, 4)
    DFDLoss(3, 3, hd="mse", ld="mse", alpha=1.0, beta=2.0)(s, t)["hd"].backward()
    mask = region_mask(disparity_map(s.detach(), t))
    s2 = s.detach().clone().requires_grad_(True)
    ((t - s2).pow(2) * mask).sum().backward()
    assert torch.allclose(s.grad, s2.grad)


@pytest.mark.parametrize("kw, key", [({"hd": "tff"}, "hd"), ({"ld": "l2"}, "ld"), ({"alpha": -1.0}, "alpha"), ({"beta": -1e-5}, "beta"), ({"threshold": "avg"}, "threshold")])
def test_bad_arguments_name_the_key(kw, key) -> None:
    with pytest.raises(ValueError, match=key):
        DFDLoss(4, 4, **kw)


def test_bf16_autocast_returns_float32() -> None:
    loss = DFDLoss(4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss(torch.randn(2, 4, 5, 5), torch.randn(2, 4, 5, 5))
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in out.values())


def test_feature_distillation_sums_levels_and_names_terms() -> None:
    fd = FeatureDistillation({"dfd": {"hd": "mse", "ld": "mse", "alpha": 1.0, "beta": 1.0}, "mse": {"weight": 1.0}},
                             {"p3": (4, 4), "p4": (4, 4)})
    fs = {"p3": torch.randn(2, 4, 6, 6), "p4": torch.randn(2, 4, 3, 3)}
    ft = {"p3": torch.randn(2, 4, 6, 6), "p4": torch.randn(2, 4, 3, 3)}
    out = fd(DistillContext(fs, ft))
    assert set(out) == {"dfd/hd", "dfd/ld", "mse/mse"}
    per_level = sum(FeatureMSELoss(4, 4, 1.0)(fs[k], ft[k])["mse"] for k in fs)
    assert out["mse/mse"].item() == pytest.approx(per_level.item(), rel=1e-5)
    assert (out["dfd/hd"] + out["dfd/ld"]).item() == pytest.approx(per_level.item(), rel=1e-5)


def test_unknown_method_rejected() -> None:
    with pytest.raises(ValueError, match="unknown distillation method 'kd'"):
        FeatureDistillation({"kd": {}}, {"p3": (4, 4)})


def test_each_method_distils_its_own_levels_and_gets_only_what_it_declares() -> None:
    fd = FeatureDistillation({"pkd": PKDParams(weight=1.0, levels=["p3"]), "fgd": {"levels": ["p4"]}},
                             {"p3": (4, 4), "p4": (4, 4)})
    assert fd.levels == ["p3", "p4"] and fd.inputs == {"boxes", "image_sizes"}
    assert list(fd.losses["pkd"]) == ["p3"] and list(fd.losses["fgd"]) == ["p4"]
    fs = {"p3": torch.randn(2, 4, 6, 6), "p4": torch.randn(2, 4, 3, 3)}
    ft = {k: torch.randn_like(v) for k, v in fs.items()}
    with pytest.raises(ValueError, match="'fgd' needs 'boxes'"):
        fd(DistillContext(fs, ft))
    boxes = [torch.tensor([[0.0, 0.0, 8.0, 8.0]]), torch.zeros(0, 4)]
    out = fd(DistillContext(fs, ft, boxes=boxes, image_sizes=[(24, 24), (20, 24)]))
    assert out["pkd/pkd"].item() == pytest.approx(pkd_loss(fs["p3"], ft["p3"]).item(), rel=1e-6)
    assert set(out) == {"pkd/pkd", "fgd/fg", "fgd/bg", "fgd/attention", "fgd/global"}
    with pytest.raises(ValueError, match=r"levels \['p5'\]"):
        FeatureDistillation({"pkd": {"levels": ["p5"]}}, {"p3": (4, 4)})


def test_threshold_is_parsed_once_when_the_loss_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    import dfd.distill.threshold as threshold_module

    loss = DFDLoss(4, 4, threshold="quantile:0.6")
    assert loss.threshold == Threshold("quantile", 0.6)
    monkeypatch.setattr(threshold_module, "parse_threshold", lambda *_: pytest.fail("parsed again"))
    loss(torch.randn(2, 4, 5, 5), torch.randn(2, 4, 5, 5))
    assert parse_threshold(Threshold("fixed", 2)) == Threshold("fixed", 2.0)
    with pytest.raises(ValueError, match="quantile"):
        parse_threshold(Threshold("quantile", 1.5))
