"""Loading weights into a model: a torchvision weights name or a checkpoint file."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from .backbones import resolve_torchvision_weights
from .errors import WeightsError


def read_checkpoint(path: str | os.PathLike, key: str = "checkpoint") -> dict:
    """Read a checkpoint file written by ``torch.save``; errors name ``key`` and the file."""
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"{key}: file {str(p)!r} does not exist")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a truncated or foreign file
        raise WeightsError(f"{key}: {str(p)!r} is not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{key}: {str(p)!r} holds a {type(obj).__name__}, not a checkpoint dictionary")
    return dict(obj)


def state_dict_of(checkpoint: Mapping, key: str = "checkpoint", source: str = "") -> dict[str, Tensor]:
    """The model weights inside a checkpoint: ``checkpoint["model"]``, or the dict itself if it is a state dict."""
    if "model" in checkpoint and isinstance(checkpoint["model"], Mapping):
        state = checkpoint["model"]
    elif checkpoint and all(isinstance(v, Tensor) for v in checkpoint.values()):
        state = checkpoint
    else:
        raise WeightsError(
            f"{key}: {source or 'the checkpoint'} has no 'model' state dict (keys: {sorted(checkpoint)[:8]}); "
            "checkpoints of other frameworks (e.g. mmdetection's 'state_dict') need converting first"
        )
    return dict(state)


def fit_state_dict(model: nn.Module, state: Mapping[str, Tensor], key: str = "weights", source: str = "") -> None:
    """Load ``state`` into ``model`` strictly, with an error listing what does not fit."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if mismatched:
            k = mismatched[0]
            parts.append(f"{len(mismatched)} with other shapes (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})")
        raise WeightsError(f"{key}: {source or 'the weights'} do not fit the model: " + "; ".join(parts))
    model.load_state_dict(state)


def load_weights(model: nn.Module, weights: str, key: str = "weights") -> None:
    """Load ``weights`` into ``model``: a path to a checkpoint file, or a torchvision weights name
    (e.g. ``"RetinaNet_ResNet50_FPN_Weights.COCO_V1"``, downloaded into ``$TORCH_HOME``)."""
    if os.path.sep in weights or weights.endswith((".pth", ".pt", ".ckpt")) or Path(weights).exists():
        state = state_dict_of(read_checkpoint(weights, key), key, repr(weights))
    else:
        state = resolve_torchvision_weights(weights, key=key).get_state_dict(progress=False)
    fit_state_dict(model, state, key, repr(weights))


def inherit_matching(dst: nn.Module, src_state: Mapping[str, Tensor], prefixes: tuple[str, ...]) -> list[str]:
    """Copy the tensors of ``src_state`` under ``prefixes`` into ``dst`` where names and shapes match.

    Returns the names copied. Used to initialise a student's neck and head from its teacher.
    """
    own = dst.state_dict()
    take = {k: v for k, v in src_state.items() if k.startswith(prefixes) and k in own and own[k].shape == v.shape}
    own.update(take)
    dst.load_state_dict(own)
    return sorted(take)
