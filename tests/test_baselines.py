"""Baseline distillation losses (PKD, CWD, MGD, FGD): hand-computed values, masks, gradients, training."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dfd.distill.cwd import CWDLoss, cwd_loss
from dfd.distill.fgd import (
    FGDGlobalContext,
    FGDLoss,
    fgd_attention_loss,
    fgd_focal_loss,
    fgd_global_loss,
    fgd_masks,
    fgd_masks_reference,
)
from dfd.distill.mgd import MGDLoss, mgd_loss, mgd_random_mask
from dfd.distill.pkd import PKDLoss, pkd_loss, pkd_normalize


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is faster and immune to a busy machine; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

# ---------------------------------------------------------------------------
# PKD
# ---------------------------------------------------------------------------


def test_pkd_hand_values():
    # Perfectly anti-correlated pair of 2 values: normalized ±1/√2 against ∓1/√2
    # -> diff² = 2 each, mean 2, /2 = 1.
    s = torch.tensor([0.0, 2.0]).reshape(1, 1, 1, 2)
    t = torch.tensor([1.0, 0.0]).reshape(1, 1, 1, 2)
    assert pkd_loss(s, t).item() == pytest.approx(1.0, abs=1e-5)
    # Channel 0: s=[1,2,3] -> [-1,0,1] (unbiased std 1); t=[1,3,2] -> [-1,1,0]; squared diffs sum to 2.
    # Channel 1 identical -> 0. Mean over 6 elements = 2/6, halved = 1/6.
    s = torch.tensor([[1.0, 2.0, 3.0], [5.0, -1.0, 2.0]]).reshape(1, 2, 1, 3)
    t = torch.tensor([[1.0, 3.0, 2.0], [5.0, -1.0, 2.0]]).reshape(1, 2, 1, 3)
    assert pkd_loss(s, t).item() == pytest.approx(1.0 / 6.0, abs=1e-5)


def test_pkd_normalize_statistics_over_batch_and_positions():
    feat = torch.randn(3, 4, 5, 6) * torch.tensor([1.0, 2.0, 0.5, 10.0]).reshape(1, 4, 1, 1) + 3.0
    z = pkd_normalize(feat)
    assert torch.allclose(z.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-5)
    assert torch.allclose(z.std(dim=(0, 2, 3)), torch.ones(4), atol=1e-4)


def test_pkd_invariant_to_positive_per_channel_affine_teacher():
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(2, 4, 5, 5, generator=gen)
    t = torch.randn(2, 4, 5, 5, generator=gen)
    scale = torch.tensor([0.1, 2.0, 7.0, 1.5]).reshape(1, 4, 1, 1)
    shift = torch.tensor([-3.0, 0.0, 10.0, 0.5]).reshape(1, 4, 1, 1)
    assert pkd_loss(s, scale * t + shift).item() == pytest.approx(pkd_loss(s, t).item(), rel=1e-4)
    assert pkd_loss(s, s).item() == pytest.approx(0.0, abs=1e-8)


# ---------------------------------------------------------------------------
# CWD
# ---------------------------------------------------------------------------


def test_cwd_identical_inputs_give_zero():
    x = torch.randn(2, 3, 4, 5)
    assert cwd_loss(x, x.clone(), tau=1.0).item() == pytest.approx(0.0, abs=1e-6)
    assert cwd_loss(x, x.clone(), tau=4.0).item() == pytest.approx(0.0, abs=1e-6)


def test_cwd_hand_values():
    # Teacher [0, 0] -> (1/2, 1/2); student [0, ln 3] -> (1/4, 3/4).
    # KL = 1/2·ln(2) + 1/2·ln(2/3) = 1/2·ln(4/3).
    t = torch.zeros(1, 1, 1, 2)
    s = torch.tensor([0.0, math.log(3.0)]).reshape(1, 1, 1, 2)
    assert cwd_loss(s, t, tau=1.0).item() == pytest.approx(0.5 * math.log(4 / 3), rel=1e-5)
    # τ = 2 on student [0, 2 ln 3]: same distributions, times τ² = 4.
    s2 = torch.tensor([0.0, 2 * math.log(3.0)]).reshape(1, 1, 1, 2)
    assert cwd_loss(s2, t, tau=2.0).item() == pytest.approx(2.0 * math.log(4 / 3), rel=1e-5)
    # A second, identical channel adds 0 to the sum and doubles N·C: half the value.
    s3 = torch.stack([s[0, 0], t[0, 0]]).unsqueeze(0)  # [1, 2, 1, 2]
    t3 = torch.zeros(1, 2, 1, 2)
    assert cwd_loss(s3, t3).item() == pytest.approx(0.25 * math.log(4 / 3), rel=1e-5)


# ---------------------------------------------------------------------------
# MGD
# ---------------------------------------------------------------------------


def test_mgd_loss_hand_value():
    generated = torch.tensor([[1.0, 2.0], [0.0, 1.0]]).reshape(2, 1, 1, 2)
    teacher = torch.zeros(2, 1, 1, 2)
    assert mgd_loss(generated, teacher).item() == pytest.approx((1 + 4 + 0 + 1) / 2)


def test_mgd_random_mask():
    gen = torch.Generator().manual_seed(0)
    m = mgd_random_mask(4, 64, 64, 0.65, generator=gen)
    assert m.shape == (4, 1, 64, 64)
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    assert m.mean().item() == pytest.approx(0.35, abs=0.02)  # a fraction λ is dropped
    assert torch.equal(m, mgd_random_mask(4, 64, 64, 0.65, generator=torch.Generator().manual_seed(0)))
    assert mgd_random_mask(2, 8, 8, 0.0).min().item() == 1.0


def test_mgd_module_hand_value_with_zero_generator():
    # With the generation block's weights and biases at 0, G(·) = 0 and the loss is α·Σ T² / N.
    module = MGDLoss(3, 3, alpha=0.5)
    for p in module.generation.parameters():
        nn.init.zeros_(p)
    teacher = torch.ones(2, 3, 2, 2)
    out = module(torch.randn(2, 3, 2, 2), teacher)
    assert set(out) == {"mgd"}
    assert out["mgd"].item() == pytest.approx(0.5 * 24 / 2)


# ---------------------------------------------------------------------------
# FGD masks
# ---------------------------------------------------------------------------


def test_fgd_masks_tiny_hand_example():
    q, n9, t12 = 1 / 4, 1 / 9, 1 / 12
    boxes = [
        # 8x8 input, 4x4 map (scale 1/2):
        #   (0,0,2,2) -> rows 0..1, cols 0..1, 4 cells
        #   (2.5,4,8,8) -> rows 2..4, cols 1..4 (4 is off the map), 3·4 = 12 cells
        #   (0,0,4,4) -> rows 0..2, cols 0..2, 9 cells
        torch.tensor([[0.0, 0.0, 2.0, 2.0], [2.5, 4.0, 8.0, 8.0], [0.0, 0.0, 4.0, 4.0]]),
        torch.tensor([[0.0, 0.0, 8.0, 8.0]]),  # the whole image: rows/cols 0..4 -> 25 cells, nothing is background
        torch.zeros(0, 4),  # no boxes
        torch.tensor([[0.0, 0.0, 4.0, 2.0]]),  # 8 (h) x 16 (w) input: x·4/16, y·4/8 -> rows 0..1, cols 0..1
    ]
    sizes = [(8, 8), (8, 8), (8, 8), (8, 16)]
    fg, bg = fgd_masks(boxes, sizes, (4, 4))
    expected_fg = torch.zeros(4, 4, 4)
    expected_fg[0] = torch.tensor(
        [[q, q, n9, 0.0], [q, q, n9, 0.0], [n9, n9, n9, t12], [0.0, t12, t12, t12]]
    )
    expected_fg[1] = 1 / 25
    expected_fg[3, :2, :2] = q
    expected_bg = torch.zeros(4, 4, 4)
    expected_bg[0, 0, 3] = expected_bg[0, 1, 3] = expected_bg[0, 3, 0] = 1 / 3
    expected_bg[2] = 1 / 16
    expected_bg[3] = (expected_fg[3] == 0).float() / 12
    assert torch.allclose(fg, expected_fg, atol=1e-7)
    assert torch.allclose(bg, expected_bg, atol=1e-7)
    assert bg[1].abs().sum() == 0
    ref_fg, ref_bg = fgd_masks_reference(boxes, sizes, (4, 4))
    assert torch.equal(fg, ref_fg) and torch.equal(bg, ref_bg)


def _random_boxes(k: int, h: int, w: int, gen: torch.Generator) -> torch.Tensor:
    scale = torch.tensor([w, h], dtype=torch.float32)
    size = torch.rand(k, 2, generator=gen) * scale * 0.6
    corner = torch.rand(k, 2, generator=gen) * scale * 1.1 - 0.1 * scale
    boxes = torch.cat([corner, corner + size], dim=1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    return boxes


@pytest.mark.parametrize("feat_hw", [(100, 167), (25, 42), (7, 11), (1, 1), (13, 5)])
def test_fgd_masks_match_reference_on_random_boxes(feat_hw):
    gen = torch.Generator().manual_seed(sum(feat_hw))
    sizes = [(800, 1333), (600, 1000), (800, 1333), (512, 512), (800, 1200), (333, 500)]
    boxes = [_random_boxes(30, *sizes[0], gen)]
    b1 = _random_boxes(10, *sizes[1], gen)
    b1[0] = torch.tensor([0.0, 0.0, 1000.0, 600.0])  # the whole image
    b1[1] = torch.tensor([990.0, 590.0, 1000.0, 600.0])  # bottom-right corner
    b1[2] = torch.tensor([0.0, 300.0, 0.0, 310.0])  # zero width on the left border
    boxes.append(b1)
    boxes.append(torch.zeros(0, 4))  # no boxes
    b3 = torch.tensor([[100.0, 100.0, 300.0, 300.0], [150.0, 150.0, 350.0, 350.0], [100.0, 100.0, 300.0, 300.0]])
    boxes.append(b3)  # overlapping and duplicated
    boxes.append(torch.tensor([[-50.0, -20.0, 30.0, 40.0], [1300.0, 700.0, 1500.0, 900.0]]))  # outside the input
    boxes.append(_random_boxes(300, *sizes[5], gen))  # more boxes than a uint8 rank holds
    fg, bg = fgd_masks(boxes, sizes, feat_hw)
    ref_fg, ref_bg = fgd_masks_reference(boxes, sizes, feat_hw)
    assert fg.shape == bg.shape == (len(boxes), *feat_hw)
    assert torch.equal(fg, ref_fg)
    assert torch.equal(bg, ref_bg)
    assert fg[2].abs().sum() == 0 and torch.allclose(bg[2], torch.full(feat_hw, 1 / (feat_hw[0] * feat_hw[1])))
    assert bg[1].abs().sum() == 0  # the whole-image box covers every cell
    for i in range(len(boxes)):
        total = bg[i].sum().item()
        assert total == pytest.approx(1.0, abs=1e-5) or total == 0.0


def test_fgd_masks_all_images_empty_and_integer_boxes():
    fg, bg = fgd_masks([torch.zeros(0, 4), torch.zeros(0, 4)], [(32, 32), (32, 32)], (2, 4))
    assert fg.abs().sum() == 0 and torch.allclose(bg, torch.full((2, 2, 4), 1 / 8))
    fg_int, _ = fgd_masks([torch.tensor([[0, 0, 16, 16]])], [(32, 32)], (4, 4))
    fg_float, _ = fgd_masks([torch.tensor([[0.0, 0.0, 16.0, 16.0]])], [(32, 32)], (4, 4))
    assert torch.equal(fg_int, fg_float) and fg_float[0, 0, 0].item() == pytest.approx(1 / 9)


def test_fgd_masks_validation():
    with pytest.raises(ValueError, match="image sizes"):
        fgd_masks([torch.zeros(1, 4)], [(8, 8), (8, 8)], (2, 2))
    with pytest.raises(ValueError, match=r"\[K, 4\]"):
        fgd_masks([torch.zeros(3)], [(8, 8)], (2, 2))


# ---------------------------------------------------------------------------
# FGD losses
# ---------------------------------------------------------------------------


def test_fgd_focal_loss_hand_values():
    # Uniform teacher |F| -> both attentions are 1 everywhere; (F^T − F^S)² = 1 at each of 2 channels × 2 positions.
    t = torch.ones(1, 2, 1, 2)
    s = torch.zeros(1, 2, 1, 2)
    fg = torch.tensor([[[0.5, 0.0]]])
    bg = torch.tensor([[[0.0, 1.0]]])
    fg_loss, bg_loss = fgd_focal_loss(s, t, fg, bg, temperature=0.5)
    assert fg_loss.item() == pytest.approx(2 * 0.5)
    assert bg_loss.item() == pytest.approx(2 * 1.0)
    # Non-uniform teacher [1, 3] (C = 1): A^S = 2·softmax([1, 3] / 0.5), A^C = 1.
    t = torch.tensor([1.0, 3.0]).reshape(1, 1, 1, 2)
    s = torch.zeros(1, 1, 1, 2)
    ones = torch.ones(1, 1, 2)
    e4 = math.exp(4.0)
    expected = 2 / (1 + e4) * 1.0 + 2 * e4 / (1 + e4) * 9.0
    fg_loss, bg_loss = fgd_focal_loss(s, t, ones, torch.zeros(1, 1, 2), temperature=0.5)
    assert fg_loss.item() == pytest.approx(expected, rel=1e-5)
    assert bg_loss.item() == 0.0
    # Batch of two identical images: the sum doubles and is divided by N = 2.
    fg_loss2, _ = fgd_focal_loss(s.repeat(2, 1, 1, 1), t.repeat(2, 1, 1, 1), ones.repeat(2, 1, 1), torch.zeros(2, 1, 2))
    assert fg_loss2.item() == pytest.approx(expected, rel=1e-5)


def test_fgd_attention_loss_hand_value():
    # Teacher all ones: A^S = A^C = 1. Student channels [0, 0] and [2, 2]: spatial attention uniform (= 1),
    # channel attention 2·softmax([0, 4]) -> L1 = 2·(e⁴ − 1)/(e⁴ + 1) = 2·tanh(2).
    t = torch.ones(1, 2, 1, 2)
    s = torch.tensor([[0.0, 0.0], [2.0, 2.0]]).reshape(1, 2, 1, 2)
    assert fgd_attention_loss(s, t, temperature=0.5).item() == pytest.approx(2 * math.tanh(2.0), rel=1e-5)
    assert fgd_attention_loss(t, t).item() == 0.0


def test_fgd_global_block_and_loss():
    block = FGDGlobalContext(4)
    x = torch.randn(2, 4, 3, 5)
    assert torch.equal(block(x), x)  # last conv zero-initialised: identity at the start
    nn.init.zeros_(block.conv_mask.weight)
    assert torch.allclose(block.context(x), x.mean(dim=(2, 3), keepdim=True), atol=1e-6)  # uniform softmax
    a = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(2, 1, 1, 2)
    b = torch.zeros(2, 1, 1, 2)
    assert fgd_global_loss(a, b).item() == pytest.approx((1 + 4 + 9 + 16) / 2)
    with pytest.raises(ValueError):
        FGDGlobalContext(1)


def test_fgd_module_zero_for_identical_maps_and_declares_its_inputs():
    module = FGDLoss(8, 8)
    assert FGDLoss.inputs == ("boxes", "image_sizes")
    assert PKDLoss.inputs == CWDLoss.inputs == MGDLoss.inputs == ()
    x = torch.randn(2, 8, 6, 6)
    boxes = [torch.tensor([[0.0, 0.0, 20.0, 20.0]]), torch.zeros(0, 4)]
    out = module(x, x.clone(), boxes=boxes, image_sizes=[(48, 48), (48, 48)])
    assert set(out) == {"fg", "bg", "attention", "global"}
    for value in out.values():
        assert value.item() == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="boxes"):
        module(x, x)
    with pytest.raises(ValueError, match="boxes"):
        module(x, x, boxes=boxes)


def test_fgd_module_terms_are_weighted():
    module = FGDLoss(4, 4, alpha_fgd=2.0, beta_fgd=3.0, gamma_fgd=5.0, lambda_fgd=7.0)
    s, t = torch.randn(2, 4, 5, 5), torch.randn(2, 4, 5, 5)
    boxes, sizes = [torch.tensor([[0.0, 0.0, 10.0, 10.0]])] * 2, [(20, 20)] * 2
    out = module(s, t, boxes=boxes, image_sizes=sizes)
    fg, bg = fgd_masks(boxes, sizes, (5, 5))
    fg_loss, bg_loss = fgd_focal_loss(s, t, fg, bg)
    assert out["fg"].item() == pytest.approx(2.0 * fg_loss.item(), rel=1e-5)
    assert out["bg"].item() == pytest.approx(3.0 * bg_loss.item(), rel=1e-5)
    assert out["attention"].item() == pytest.approx(5.0 * fgd_attention_loss(s, t).item(), rel=1e-5)
    assert out["global"].item() == pytest.approx(7.0 * fgd_global_loss(s, t).item(), rel=1e-5)  # blocks are identity


# ---------------------------------------------------------------------------
# All modules: gradients, channel alignment, training
# ---------------------------------------------------------------------------

MODULES = {
    "pkd": (PKDLoss, {}),
    "cwd": (CWDLoss, {}),
    "mgd": (MGDLoss, {}),
    "fgd": (FGDLoss, {}),
}
N, H, W = 2, 8, 8
IMAGE_SIZES = [(64, 64), (64, 48)]


def _boxes() -> list[torch.Tensor]:
    return [torch.tensor([[4.0, 4.0, 30.0, 40.0], [20.0, 10.0, 64.0, 64.0]]), torch.tensor([[0.0, 0.0, 16.0, 16.0]])]


def _call(module: nn.Module, s: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
    if module.inputs:
        return module(s, t, boxes=_boxes(), image_sizes=IMAGE_SIZES)
    return module(s, t)


@pytest.mark.parametrize("channels", [(6, 6), (3, 6)], ids=["same", "aligned"])
@pytest.mark.parametrize("name", list(MODULES))
def test_gradients_reach_student_and_module_not_teacher(name, channels):
    cs, ct = channels
    cls, kwargs = MODULES[name]
    torch.manual_seed(0)
    module = cls(cs, ct, **kwargs)
    s = torch.randn(N, cs, H, W, requires_grad=True)
    t = torch.randn(N, ct, H, W, requires_grad=True)
    out = _call(module, s, t)
    assert out and all(v.dim() == 0 and torch.isfinite(v) for v in out.values())
    sum(out.values()).backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0
    params = list(module.parameters())
    if cs != ct:
        assert module.align.weight.grad is not None and module.align.weight.grad.abs().sum() > 0
    for p in params:
        assert p.grad is not None
    if params:
        assert any(p.grad.abs().sum() > 0 for p in params)


def test_fgd_every_parameter_trains_after_one_step():
    # channel_add's last conv starts at zero, so conv_mask and the first layers get their first
    # non-zero gradients once it has moved (after one step).
    torch.manual_seed(0)
    module = FGDLoss(8, 16)
    s, t = torch.randn(N, 8, H, W), torch.randn(N, 16, H, W)
    opt = torch.optim.Adam(module.parameters(), lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        sum(_call(module, s, t).values()).backward()
        opt.step()
    for name, p in module.named_parameters():
        assert p.grad is not None, name
        if name.endswith("conv_mask.bias"):
            continue  # a constant shift before a softmax: its gradient is 0 in exact arithmetic (also in FGD)
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("name", list(MODULES))
def test_training_decreases_loss(name):
    cls, kwargs = MODULES[name]
    torch.manual_seed(0)
    kwargs = dict(kwargs)
    if name == "mgd":
        kwargs["generator"] = torch.Generator().manual_seed(0)
    module = cls(4, 6, **kwargs)
    teacher = torch.randn(N, 6, H, W) * 2 + 1
    student = nn.Parameter(torch.randn(N, 4, H, W))

    def evaluate() -> float:
        if name == "mgd":
            module.generator.manual_seed(123)  # the same mask before and after training
        with torch.no_grad():
            return sum(_call(module, student, teacher).values()).item()

    before = evaluate()
    opt = torch.optim.Adam([student, *module.parameters()], lr=0.05)
    for _ in range(50):
        opt.zero_grad()
        sum(_call(module, student, teacher).values()).backward()
        opt.step()
    after = evaluate()
    assert after < 0.75 * before, (before, after)
