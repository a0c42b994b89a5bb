"""dfd.engine.optim: parameter groups, optimizers, lr schedules against their formulas, EMA, resumption."""
from __future__ import annotations

import copy
import io
import math
import pickle
import warnings

import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import ChainedScheduler, CosineAnnealingLR, LinearLR, SequentialLR

from dfd.engine.optim import (
    LrFactor,
    RampedEMA,
    build_ema,
    build_optimizer,
    build_scheduler,
    current_lrs,
    param_groups,
)


class Block(nn.Module):
    """Swin-like pieces: a position embedding, a bias table, a LayerNorm, a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.absolute_pos_embed = nn.Parameter(torch.zeros(1, 4))
        self.relative_position_bias_table = nn.Parameter(torch.zeros(3, 2))
        self.norm1 = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 4)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=True)
        self.bn = nn.BatchNorm2d(4)
        self.gn = nn.GroupNorm(2, 4)
        self.block = Block()
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)
        self.head = nn.Linear(4, 4, bias=False)
        self.tied = self.head  # the same module (and parameters) under a second name
        self.shared_weight = self.block.fc.weight  # a parameter registered twice


def _ids(group: dict) -> list[int]:
    return [id(p) for p in group["params"]]


def _named(net: nn.Module, *names: str) -> list[int]:
    params = dict(net.named_parameters())
    return [id(params[n]) for n in names]


# ----------------------------------------------------------------------------- parameter groups


def test_param_groups_all_decayed_without_options() -> None:
    net = Net()
    groups = param_groups(net, weight_decay=1e-4)
    assert [g["name"] for g in groups] == ["decay"]  # the empty no_decay group is left out
    trainable = [p for p in net.parameters() if p.requires_grad]
    assert _ids(groups[0]) == [id(p) for p in trainable]  # once each, named_parameters order
    assert groups[0]["weight_decay"] == 1e-4


def test_param_groups_norm_bias_and_keys() -> None:
    net = Net()
    groups = param_groups(net, weight_decay=0.05, no_decay_norm_bias=True)
    by = {g["name"]: g for g in groups}
    assert _ids(by["no_decay"]) == _named(net, "conv.bias", "bn.weight", "bn.bias", "gn.weight", "gn.bias",
                                          "block.norm1.weight", "block.norm1.bias", "block.fc.bias")
    # The root's own parameters come first; block.fc.weight is already there as shared_weight.
    assert _ids(by["decay"]) == _named(net, "shared_weight", "conv.weight", "block.absolute_pos_embed",
                                       "block.relative_position_bias_table", "head.weight")
    assert by["no_decay"]["weight_decay"] == 0.0 and by["decay"]["weight_decay"] == 0.05

    swin = param_groups(net, weight_decay=0.05, no_decay_keys=("absolute_pos_embed", "relative_position_bias_table", "norm"))
    by = {g["name"]: g for g in swin}
    assert _ids(by["no_decay"]) == _named(net, "block.absolute_pos_embed", "block.relative_position_bias_table",
                                          "block.norm1.weight", "block.norm1.bias")
    assert len(by["decay"]["params"]) + len(by["no_decay"]["params"]) == len([p for p in net.parameters() if p.requires_grad])


def test_param_groups_several_modules_share_parameters() -> None:
    a = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    b = nn.Sequential(a[0], nn.InstanceNorm1d(2, affine=True), nn.Linear(2, 2, bias=False))
    groups = param_groups([a, b], weight_decay=1e-4, no_decay_norm_bias=True)
    by = {g["name"]: g for g in groups}
    assert _ids(by["decay"]) == [id(a[0].weight), id(b[2].weight)]
    assert _ids(by["no_decay"]) == [id(a[0].bias), id(a[1].weight), id(a[1].bias), id(b[1].weight), id(b[1].bias)]


# ----------------------------------------------------------------------------- optimizers


def test_build_optimizer_kinds_and_groups() -> None:
    net = Net()
    groups = param_groups(net, weight_decay=5e-4, no_decay_norm_bias=True)
    sgd = build_optimizer(groups, name="sgd", lr=0.01, momentum=0.937, nesterov=True, weight_decay=5e-4)
    assert type(sgd) is torch.optim.SGD
    assert sgd.param_groups[0]["nesterov"] and sgd.param_groups[0]["momentum"] == 0.937
    assert [g["weight_decay"] for g in sgd.param_groups] == [5e-4, 0.0]
    assert current_lrs(sgd) == {"decay": 0.01, "no_decay": 0.01}

    adamw = build_optimizer(param_groups(net, weight_decay=0.05), name="AdamW", lr=1e-4, betas=(0.9, 0.99), weight_decay=0.05)
    assert type(adamw) is torch.optim.AdamW and adamw.param_groups[0]["betas"] == (0.9, 0.99)
    adam = build_optimizer(net.parameters(), name="adam", lr=5e-4, weight_decay=0.0)
    assert type(adam) is torch.optim.Adam and current_lrs(adam) == {"0": 5e-4}

    with pytest.raises(ValueError, match=r"schedule\.optimizer.*sgd, adamw, adam"):
        build_optimizer(net.parameters(), name="lamb", lr=0.1, weight_decay=0.0)


# ----------------------------------------------------------------------------- learning-rate schedules


def _lrs(policy: str, n: int, lr: float = 1.0, **kw) -> list[float]:
    """The lr of iteration t = 0 … n−1 (read before the step, as the loop uses it)."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    sched = build_scheduler(opt, policy=policy, **kw)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_step_policy_by_hand() -> None:
    # mmdet 1x at 1000 iterations an epoch: lr 0.02, warm-up 500 at ratio 0.001, steps at epochs 8 and 11.
    lrs = _lrs("step", 11002, lr=0.02, total_iters=12000, warmup_iters=500, warmup_ratio=0.001, milestones=[8000, 11000])
    expect = {0: 0.02 * 0.001, 1: 0.02 * (0.001 + 0.999 / 500), 250: 0.02 * (0.001 + 0.999 * 0.5), 499: 0.02 * (0.001 + 0.999 * 499 / 500),
              500: 0.02, 7999: 0.02, 8000: 0.002, 10999: 0.002, 11000: 0.0002, 11001: 0.0002}
    for t, v in expect.items():
        assert lrs[t] == pytest.approx(v, rel=1e-12), t


def test_cosine_policy_by_hand() -> None:
    # YOLOv6: cosine to lrf 0.01 of lr0 0.01, with a warm-up.
    T, W = 1000, 100
    lrs = _lrs("cosine", T + 3, lr=0.01, total_iters=T, warmup_iters=W, warmup_ratio=0.1, min_lr_ratio=0.01)
    expect = {0: 0.01 * 0.1 * 1.0,
              50: 0.01 * (0.1 + 0.9 * 0.5) * (0.01 + 0.99 * (1 + math.cos(math.pi * 0.05)) / 2),
              100: 0.01 * (0.01 + 0.99 * (1 + math.cos(math.pi * 0.1)) / 2),
              500: 0.01 * (0.01 + 0.99 * 0.5),
              750: 0.01 * (0.01 + 0.99 * (1 + math.cos(math.pi * 0.75)) / 2),
              1000: 0.01 * 0.01, 1002: 0.01 * 0.01}  # clamped at T
    for t, v in expect.items():
        assert lrs[t] == pytest.approx(v, rel=1e-12), t


def test_poly_policy_by_hand() -> None:
    # mmseg 40k: lr 0.01, poly 0.9, min_lr 1e-4 (ratio 0.01); no warm-up there, so W = 0 here.
    T = 40000
    lrs = _lrs("poly", 30001, lr=0.01, total_iters=T, warmup_iters=0, warmup_ratio=0.001, min_lr_ratio=0.01, power=0.9)
    for t in (0, 1, 10000, 20000, 30000):
        assert lrs[t] == pytest.approx(0.01 * (0.99 * (1 - t / T) ** 0.9 + 0.01), rel=1e-12), t
    assert lrs[20000] == pytest.approx(0.01 * (0.99 * 0.5 ** 0.9 + 0.01))
    # With a warm-up the two factors multiply.
    f = LrFactor("poly", 100, 10, 0.001, min_lr_ratio=0.0, power=1.0)
    assert f(5) == pytest.approx((0.001 + 0.999 * 0.5) * 0.95)
    assert f(100) == 0.0 and f(150) == 0.0


def test_unknown_policy_and_bad_numbers() -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match=r"schedule\.policy.*step, cosine, poly"):
        build_scheduler(opt, policy="exp", total_iters=10, warmup_iters=0, warmup_ratio=1.0)
    with pytest.raises(ValueError):
        build_scheduler(opt, policy="cosine", total_iters=0, warmup_iters=0, warmup_ratio=1.0)
    with pytest.raises(ValueError):
        build_scheduler(opt, policy="cosine", total_iters=10, warmup_iters=0, warmup_ratio=1.0, min_lr_ratio=2.0)


def _closed_form(t: int, *, T: int, W: int, r: float, m: float) -> float:
    w = r + (1 - r) * t / W if t < W else 1.0
    return w * (m + (1 - m) * (1 + math.cos(math.pi * t / T)) / 2)


def _torch_chain(T: int, W: int, r: float, m: float, sequential: bool = False) -> list[float]:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if sequential:
            sched = SequentialLR(opt, [LinearLR(opt, start_factor=r, total_iters=W), CosineAnnealingLR(opt, T_max=T, eta_min=m)], milestones=[W])
        else:
            sched = ChainedScheduler([LinearLR(opt, start_factor=r, total_iters=W), CosineAnnealingLR(opt, T_max=T, eta_min=m)])
        out = []
        for _ in range(T):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
    return out


def test_chained_torch_schedulers_drift_from_closed_form_with_a_floor() -> None:
    """The module docstring's claim: LinearLR∘CosineAnnealingLR(eta_min>0) is not w(t)·g(t); ours is."""
    T, W, r = 200, 20, 0.001

    def worst(lrs: list[float], m: float) -> float:
        return max(abs(v - _closed_form(t, T=T, W=W, r=r, m=m)) / _closed_form(t, T=T, W=W, r=r, m=m) for t, v in enumerate(lrs[:-1]))

    # Without a floor the recursive chain is a product of ratios and agrees with the closed form.
    assert worst(_torch_chain(T, W, r, 0.0), 0.0) < 1e-9
    # With a floor it drifts (the warm-up leaks into the affine floor term), and keeps drifting after warm-up.
    m = 0.1
    chained = _torch_chain(T, W, r, m)
    assert worst(chained, m) > 1e-3
    assert abs(chained[100] - _closed_form(100, T=T, W=W, r=r, m=m)) > 1e-4 * _closed_form(100, T=T, W=W, r=r, m=m)
    # SequentialLR restarts the cosine at the end of warm-up: full lr at t = W instead of g(W).
    sequential = _torch_chain(T, W, r, m, sequential=True)
    assert sequential[W] == pytest.approx(1.0) and _closed_form(W, T=T, W=W, r=r, m=m) < 0.98
    # Ours is the closed form.
    ours = _lrs("cosine", T, total_iters=T, warmup_iters=W, warmup_ratio=r, min_lr_ratio=m)
    assert worst(ours + [0.0], m) < 1e-12


@pytest.mark.parametrize("policy", ["step", "cosine", "poly"])
def test_scheduler_resumes_exact_sequence(policy: str) -> None:
    kw = dict(policy=policy, total_iters=60, warmup_iters=10, warmup_ratio=0.001, milestones=[30, 45], gamma=0.1,
              min_lr_ratio=0.05, power=0.9)

    def build():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
        opt = build_optimizer(param_groups(net, weight_decay=1e-4, no_decay_norm_bias=True), name="sgd", lr=0.02, weight_decay=1e-4)
        return net, opt, build_scheduler(opt, **kw)

    def run(net, opt, sched, iters):
        seen = []
        for _ in range(iters):
            seen.append(current_lrs(opt))
            loss = net(torch.ones(4, 3)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        return seen

    full = run(*build(), 60)
    net, opt, sched = build()
    first = run(net, opt, sched, 25)
    buf = io.BytesIO()
    torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)  # the checkpoint holds plain types only
    net2, opt2, sched2 = build()
    net2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["optimizer"])
    sched2.load_state_dict(ckpt["scheduler"])
    assert first + run(net2, opt2, sched2, 35) == full
    assert full[0]["no_decay"] == full[0]["decay"] == pytest.approx(0.02 * 0.001)
    pickle.loads(pickle.dumps(sched2.lr_lambdas[0]))  # the factor is picklable


# ----------------------------------------------------------------------------- EMA


def _tiny() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, step: int) -> None:
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(step))
    loss = model(x).pow(2).mean() + model(x).sum()
    opt.zero_grad()
    loss.backward()
    opt.step()


@pytest.mark.parametrize("ramp", [3.0, None])
def test_ema_matches_hand_recurrence(ramp: float | None) -> None:
    torch.manual_seed(0)
    model = _tiny().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    decay = 0.9
    ema = build_ema(model, decay=decay, ramp=ramp)
    expect = {k: v.clone() for k, v in model.state_dict().items()}  # the EMA starts as the model
    assert all(not p.requires_grad for p in ema.parameters())
    n = 7
    for k in range(1, n + 1):
        _train_step(model, opt, k)
        ema.update_parameters(model)
        d = decay * (1 - math.exp(-k / ramp)) if ramp is not None else decay
        for name, v in model.state_dict().items():
            expect[name] = d * expect[name] + (1 - d) * v if v.is_floating_point() else v.clone()
    got = ema.module.state_dict()
    assert set(got) == set(expect)
    for name, v in expect.items():
        assert torch.allclose(got[name], v, rtol=1e-6, atol=1e-7), name
    assert int(got["1.num_batches_tracked"]) == int(model.state_dict()["1.num_batches_tracked"]) == 2 * n  # copied
    assert not torch.allclose(got["0.weight"], model.state_dict()["0.weight"])  # averaged, not copied
    assert int(ema.n_averaged) == n + 1


def test_ema_first_update_uses_d1() -> None:
    avg = RampedEMA(0.9999, 2000.0)
    e, c = [torch.zeros(2)], [torch.ones(2)]
    avg(e, c, torch.tensor(1))
    d1 = 0.9999 * (1 - math.exp(-1 / 2000))
    assert torch.allclose(e[0], torch.full((2,), 1 - d1))
    i = [torch.tensor(3)]
    avg(i, [torch.tensor(5)], 4)  # integer tensors are copied
    assert int(i[0]) == 5


def test_ema_state_dict_round_trip_and_forward() -> None:
    torch.manual_seed(0)
    model = _tiny().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ema = build_ema(model, decay=0.99, ramp=5.0)
    for k in range(1, 4):
        _train_step(model, opt, k)
        ema.update_parameters(model)
    saved = copy.deepcopy(ema.state_dict())

    torch.manual_seed(1)
    resumed = build_ema(_tiny().train(), decay=0.99, ramp=5.0)
    resumed.load_state_dict(saved)
    assert int(resumed.n_averaged) == 4
    for k in range(4, 7):  # both continue with d_4, d_5, d_6
        _train_step(model, opt, k)
        ema.update_parameters(model)
        resumed.update_parameters(model)
    for (name, a), b in zip(ema.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name

    ema.eval()
    x = torch.randn(5, 3)
    with torch.no_grad():
        y = ema(x)
    assert y.shape == (5, 2) and torch.isfinite(y).all()
    assert torch.equal(y, ema.module(x))
