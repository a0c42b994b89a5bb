"""Optimizers, learning-rate schedules and the weight EMA of the public recipes, on torch's own classes.

Parameter groups (:func:`param_groups`) split the trainable parameters into a decayed and a no-decay
group, as mmcv's ``paramwise_cfg`` (``norm_decay_mult=0``, ``bias_decay_mult=0``, ``custom_keys`` with
``decay_mult=0``, e.g. Swin's ``absolute_pos_embed`` / ``relative_position_bias_table`` / ``norm``) does.
:func:`build_optimizer` makes ``torch.optim.SGD`` / ``AdamW`` / ``Adam`` from them.

Learning rate (:func:`build_scheduler`): the lr at iteration t (0-based; the scheduler is stepped once
per iteration, after ``optimizer.step()``) is ``lr · w(t) · g(t)``, with mmcv's 'linear' warm-up

    w(t) = r + (1 − r)·t/W   for t < W,   else 1          (r = warmup_ratio, W = warmup_iters)

applied as a factor on top of the regular schedule g(t) (T = total_iters, m = min_lr_ratio):

    step:    g(t) = γ^{#{milestones m_i ≤ t}}
    cosine:  g(t) = m + (1 − m)·(1 + cos(π·t/T))/2      (mmcv CosineAnnealing, YOLOv6 with m = lrf)
    poly:    g(t) = (1 − m)·(1 − t/T)^p + m              (mmseg poly, m = min_lr / lr)

It is one ``torch.optim.lr_scheduler.LambdaLR`` whose lambda is the picklable :class:`LrFactor`, a
closed form in t. Not ``ChainedScheduler`` / ``SequentialLR`` of ``LinearLR`` with
``CosineAnnealingLR`` / ``PolynomialLR``: torch's chainable schedulers update the *current* lr
recursively (lr_t = f(lr_{t−1})), so when two of them act at once, each sees the other's factor in the
lr it starts from. With a floor (CosineAnnealingLR's ``eta_min``, i.e. YOLOv6's lrf or mmseg's min_lr)
the recursion is affine rather than multiplicative, and the warm-up factor leaks into the floor term:
the chain drifts from mmcv's closed form w(t)·g(t) (tests/test_optim.py shows it numerically; with
eta_min = 0 the two agree). ``SequentialLR`` instead runs the schedulers one after the other and
restarts the second one's count at the switch, so the cosine/poly would span T − W iterations from the
end of warm-up rather than being multiplied by the warm-up from t = 0. ``PolynomialLR`` has no floor at all.

EMA (:func:`build_ema`): ``torch.optim.swa_utils.AveragedModel`` with ``use_buffers=True`` and
:class:`RampedEMA` as its ``multi_avg_fn``: for the k-th update (k = 1, 2, …)

    d_k = decay·(1 − exp(−k/ramp))      (YOLOv6's ModelEMA; ramp=None: d_k = decay)
    ema ← d_k·ema + (1 − d_k)·param     for floating-point parameters and buffers,
    ema ← param                         for integer buffers (BatchNorm's num_batches_tracked).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler
from torch.optim.swa_utils import AveragedModel

OPTIMIZERS = ("sgd", "adamw", "adam")
POLICIES = ("step", "cosine", "poly")

# Every normalisation layer: _NormBase covers BatchNorm*, SyncBatchNorm, InstanceNorm* and their Lazy forms.
NORM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    nn.CrossMapLRN2d,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


# ----------------------------------------------------------------------------- parameter groups


def _named_trainable(modules: Iterable[nn.Module] | nn.Module) -> list[tuple[str, nn.Module, nn.Parameter]]:
    """(full name, owning module, parameter) of each trainable parameter, once, in named_parameters order.

    Walking named_modules() and each module's own parameters is exactly how nn.Module.named_parameters()
    orders them; it also tells which module owns each one. A parameter shared between modules (or between
    the given modules) is kept at its first occurrence.
    """
    if isinstance(modules, nn.Module):
        modules = [modules]
    seen: set[int] = set()
    out = []
    for root in modules:
        for mod_name, mod in root.named_modules():
            for p_name, p in mod.named_parameters(recurse=False):
                if id(p) in seen or not p.requires_grad:
                    continue
                seen.add(id(p))
                out.append((f"{mod_name}.{p_name}" if mod_name else p_name, mod, p))
    return out


def param_groups(modules: Iterable[nn.Module] | nn.Module, *, weight_decay: float, no_decay_norm_bias: bool = False,
                 no_decay_keys: Sequence[str] = ()) -> list[dict]:
    """The trainable parameters of ``modules`` in a ``"decay"`` and a ``"no_decay"`` (weight_decay 0) group.

    A parameter goes to no_decay when ``no_decay_norm_bias`` and it belongs to a normalisation layer
    (:data:`NORM_LAYERS`) or is a bias (its own name is ``bias``), or when its full name (as in
    ``named_parameters()`` of the module that holds it) contains one of ``no_decay_keys``. Only
    parameters with requires_grad, each once; empty groups are left out; order is named_parameters order.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, mod, p in _named_trainable(modules):
        norm_or_bias = isinstance(mod, NORM_LAYERS) or name.rsplit(".", 1)[-1] == "bias"
        skip = (no_decay_norm_bias and norm_or_bias) or any(k in name for k in no_decay_keys)
        (no_decay if skip else decay).append(p)
    groups = [{"name": "decay", "params": decay, "weight_decay": float(weight_decay)},
              {"name": "no_decay", "params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(groups, *, name: str, lr: float, momentum: float = 0.9, nesterov: bool = False,
                    betas: Sequence[float] = (0.9, 0.999), weight_decay: float) -> torch.optim.Optimizer:
    """``torch.optim.SGD`` (momentum, nesterov), ``AdamW`` or ``Adam`` (betas) over ``groups``.

    ``groups`` is what torch optimizers take (parameters or param-group dicts, e.g. :func:`param_groups`);
    ``weight_decay`` is the default for groups that set none. Adam's decay is L2 added to the gradient,
    AdamW's is decoupled (lr·wd·θ), as in torch.
    """
    key = name.lower()
    if key == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    if key == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    if key == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    raise ValueError(f"schedule.optimizer={name!r} is not one of {', '.join(OPTIMIZERS)}")


def current_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Group name (or its index) → current lr, for logging."""
    return {str(g.get("name", i)): float(g["lr"]) for i, g in enumerate(optimizer.param_groups)}


# ----------------------------------------------------------------------------- learning-rate schedule


@dataclass
class LrFactor:
    """Multiplier of the base lr at iteration t: w(t)·g(t) (module docstring), a closed form in t.

    A plain picklable object so that LambdaLR.state_dict() saves its numbers (LambdaLR keeps the
    ``__dict__`` of callable objects, not of functions or lambdas). Past T, t is clamped to T.
    """

    policy: str
    total_iters: int
    warmup_iters: int
    warmup_ratio: float
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    min_lr_ratio: float = 0.0
    power: float = 1.0

    def warmup(self, t: int) -> float:
        """w(t) = r + (1 − r)·t/W for t < W, else 1."""
        if t < self.warmup_iters:
            return self.warmup_ratio + (1.0 - self.warmup_ratio) * t / self.warmup_iters
        return 1.0

    def regular(self, t: int) -> float:
        """g(t): step γ^{#{m ≤ t}}; cosine m + (1 − m)(1 + cos(πt/T))/2; poly (1 − m)(1 − t/T)^p + m."""
        if self.policy == "step":
            return self.gamma ** sum(t >= m for m in self.milestones)
        x = min(t, self.total_iters) / self.total_iters
        m = self.min_lr_ratio
        if self.policy == "cosine":
            return m + (1.0 - m) * (1.0 + math.cos(math.pi * x)) / 2.0
        if self.policy == "poly":
            return (1.0 - m) * (1.0 - x) ** self.power + m
        raise ValueError(f"schedule.policy={self.policy!r} is not one of {', '.join(POLICIES)}")

    def __call__(self, t: int) -> float:
        """w(t)·g(t)."""
        return self.warmup(t) * self.regular(t)


def build_scheduler(optimizer: torch.optim.Optimizer, *, policy: str, total_iters: int, warmup_iters: int,
                    warmup_ratio: float, milestones: Sequence[int] = (), gamma: float = 0.1, min_lr_ratio: float = 0.0,
                    power: float = 1.0) -> LRScheduler:
    """A LambdaLR giving every group lr_group · w(t)·g(t) at iteration t; call ``step()`` once per iteration.

    w(t) = r + (1 − r)·t/W for t < W else 1 (r = ``warmup_ratio``, W = ``warmup_iters``; mmcv's linear
    warm-up as a factor on the regular lr). g(t), with T = ``total_iters`` and m = ``min_lr_ratio``:
    ``step`` γ^{#{m_i ∈ milestones : m_i ≤ t}}; ``cosine`` m + (1 − m)·(1 + cos(π·t/T))/2;
    ``poly`` (1 − m)·(1 − t/T)^p + m (p = ``power``). Milestones are iterations, not epochs.
    Resume by loading the optimizer's and then the scheduler's state_dict into freshly built ones.
    """
    if policy not in POLICIES:
        raise ValueError(f"schedule.policy={policy!r} is not one of {', '.join(POLICIES)}")
    if total_iters < 1 or warmup_iters < 0:
        raise ValueError(f"need total_iters ≥ 1 and warmup_iters ≥ 0, got {total_iters} and {warmup_iters}")
    if not 0.0 <= warmup_ratio <= 1.0 or not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"warmup_ratio={warmup_ratio} and min_lr_ratio={min_lr_ratio} must lie in [0, 1]")
    factor = LrFactor(policy, int(total_iters), int(warmup_iters), float(warmup_ratio), tuple(int(m) for m in milestones),
                      float(gamma), float(min_lr_ratio), float(power))
    return LambdaLR(optimizer, factor)


# ----------------------------------------------------------------------------- EMA of the weights


@dataclass
class RampedEMA:
    """``multi_avg_fn`` of AveragedModel: ema ← d_k·ema + (1 − d_k)·param, d_k = decay·(1 − exp(−k/ramp)).

    AveragedModel (torch 2.x, 2.11 and 2.14 alike) copies the model on the first update_parameters() call
    (n_averaged = 0) and from then on calls this once per (device, dtype) group of parameters and, with
    use_buffers=True, buffers, passing ``num_averaged`` = the number of earlier calls as a 0-dim long
    tensor. :func:`build_ema` spends that first copying call at construction, so the k-th training
    update arrives with num_averaged = k. ``ramp=None``: d_k = decay. Integer tensors are copied.
    """

    decay: float
    ramp: float | None = 2000.0

    def factor(self, k: int) -> float:
        """d_k = decay·(1 − exp(−k/ramp)), or decay when ramp is None."""
        return self.decay if self.ramp is None else self.decay * (1.0 - math.exp(-k / self.ramp))

    @torch.no_grad()
    def __call__(self, ema: list[Tensor], current: list[Tensor], num_averaged: Tensor | int) -> None:
        """Update ``ema`` in place from ``current``."""
        d = self.factor(int(num_averaged))
        floats = [(e, c) for e, c in zip(ema, current) if e.is_floating_point() or e.is_complex()]
        if floats:
            torch._foreach_lerp_([e for e, _ in floats], [c for _, c in floats], 1.0 - d)
        for e, c in zip(ema, current):
            if not (e.is_floating_point() or e.is_complex()):
                e.copy_(c)


def build_ema(model: nn.Module, *, decay: float, ramp: float | None = 2000.0) -> AveragedModel:
    """An AveragedModel of ``model`` (pass the unwrapped module, not DDP) holding its EMA, on model's device.

    ``ema.update_parameters(model)`` after each optimizer step applies, for the k-th call (k ≥ 1),
    ema ← d_k·ema + (1 − d_k)·model with d_k = decay·(1 − exp(−k/ramp)) (YOLOv6: decay 0.9999, ramp
    2000; ``ramp=None``: constant decay) to every parameter and floating-point buffer (BatchNorm
    statistics), and copies integer buffers. The EMA starts as a copy of ``model`` now, and
    ``ema.n_averaged`` = updates + 1. Its parameters do not require grad. Resume with
    ``ema.load_state_dict(saved)`` on a freshly built one; evaluate ``ema.module`` (or ``ema(...)``).
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"EMA decay={decay} must lie in [0, 1]")
    if ramp is not None and ramp <= 0:
        raise ValueError(f"EMA ramp={ramp} must be positive (or None for a constant decay)")
    ema = AveragedModel(model, multi_avg_fn=RampedEMA(float(decay), None if ramp is None else float(ramp)), use_buffers=True)
    ema.module.requires_grad_(False)
    ema.update_parameters(model)  # the copying call (n_averaged 0 → 1): update k then sees num_averaged = k
    return ema
