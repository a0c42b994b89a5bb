"""f_trans evaluated only on its region (dfd.distill.sparse) equals the dense computation."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dfd.distill import DFDLoss, build_transform
from dfd.distill.constraint import masked_squared_error
from dfd.distill.sparse import conv_stack, required_masks, sparse_region_error, sparse_work_fraction


def _grads(loss: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, inputs, allow_unused=False))


def _masks(n: int, h: int, w: int, g: torch.Generator) -> list[torch.Tensor]:
    blob = (torch.rand(n, 1, max(1, h // 3), max(1, w // 3), generator=g) < 0.3).float()
    blob = nn.functional.interpolate(blob, size=(h, w), mode="nearest")
    return [
        torch.zeros(n, 1, h, w),  # empty
        torch.ones(n, 1, h, w),  # full
        (torch.rand(n, 1, h, w, generator=g) < 0.3).float(),  # scattered
        blob,  # blobs
        torch.cat([torch.zeros(1, 1, h, w), torch.ones(n - 1, 1, h, w)]),  # one image empty, the other full
    ]


@pytest.mark.parametrize("structure", ["generation", "conv1x1", "conv3x3", "mlp"])
@pytest.mark.parametrize("hw", [(1, 1), (2, 5), (7, 9), (12, 10)])
def test_sparse_region_error_equals_dense(structure: str, hw: tuple[int, int]) -> None:
    g = torch.Generator().manual_seed(hash((structure, hw)) % 2**31)
    torch.manual_seed(0)
    f = build_transform(structure, 6).double()
    stack = conv_stack(f)
    assert stack is not None
    params = list(f.parameters())
    for mask in _masks(2, *hw, g):
        x = torch.randn(2, 6, *hw, generator=g, dtype=torch.float64, requires_grad=True)
        t = torch.randn(2, 6, *hw, generator=g, dtype=torch.float64)
        dense = masked_squared_error(t, f(x), mask.double())
        sparse = sparse_region_error(stack, t, x, mask)
        torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-6)
        for a, b in zip(_grads(sparse, [x, *params]), _grads(dense, [x, *params])):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_required_masks_dilate_by_each_kernel() -> None:
    f = build_transform("generation", 2)
    mask = torch.zeros(1, 1, 7, 7)
    mask[0, 0, 3, 3] = 1
    first, last = required_masks(conv_stack(f), mask)
    assert last.sum() == 1 and first.sum() == 9 and first[0, 2:5, 2:5].all()
    # work: (9 + 1) positions of 3x3 convs against 2 * 49
    assert sparse_work_fraction(conv_stack(f), [first, last]).item() == pytest.approx(10 / 98)


def test_conv_stack_refuses_what_it_cannot_evaluate() -> None:
    assert conv_stack(nn.Conv2d(2, 2, 3, stride=2, padding=1)) is None
    assert conv_stack(nn.Conv2d(2, 2, 3, padding=0)) is None
    assert conv_stack(nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2))) is None
    assert conv_stack(nn.ReLU()) is None
    assert len(conv_stack(nn.Sequential(nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.ReLU()), nn.Conv2d(2, 2, 1)))) == 3


def _losses(**kw) -> tuple[DFDLoss, DFDLoss]:
    dense = DFDLoss(4, 6, sparse_max_fraction=0.0, alpha=1.0, beta=1.0, **kw)
    sparse = DFDLoss(4, 6, sparse_max_fraction=1.0, alpha=1.0, beta=1.0, **kw)
    sparse.load_state_dict(dense.state_dict())
    return dense, sparse


@pytest.mark.parametrize("hd, ld", [("tf", "mse"), ("tf+mse", "none"), ("mse", "tf"), ("tf", "tf")])
def test_dfd_loss_sparse_and_dense_agree(hd: str, ld: str) -> None:
    g = torch.Generator().manual_seed(1)
    dense, sparse = _losses(hd=hd, ld=ld)
    s = torch.randn(2, 4, 9, 11, generator=g)
    t = torch.randn(2, 6, 9, 11, generator=g)
    results = []
    for loss in (dense, sparse):
        x = s.clone().requires_grad_()
        out = loss(x, t)
        total = out["hd"] + out["ld"]
        results.append((out, _grads(total, [x, *loss.parameters()])))
    for key in ("hd", "ld"):
        torch.testing.assert_close(results[1][0][key], results[0][0][key], rtol=1e-4, atol=1e-5)
    for a, b in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert dense.last_path == "dense"
    assert sparse.last_path == ("dense" if (hd, ld) == ("tf", "tf") else "sparse")  # both regions: f_trans everywhere


def test_dfd_loss_falls_back_to_dense_above_the_threshold() -> None:
    loss = DFDLoss(4, 4, sparse_max_fraction=0.05)
    s, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    loss(s, t)
    assert loss.last_path == "dense"  # R_HD plus its neighbourhood is far more than 5% of the map
    with pytest.raises(ValueError, match="sparse_max_fraction"):
        DFDLoss(4, 4, sparse_max_fraction=1.5)


def test_dfd_loss_without_transform_has_no_path() -> None:
    loss = DFDLoss(4, 4, hd="mse", ld="mse")
    loss(torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3))
    assert loss.last_path == ""
