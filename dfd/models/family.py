"""Model families as plug-ins: the one interface the engine speaks to.

A *family* (RetinaNet, Faster R-CNN, ...) is one module of ``dfd/models`` that calls
:func:`register_family` once with a :class:`Family`: its options (a dataclass: the schema
of ``teacher.*`` / ``student.*`` for that family), its builder, its task (which picks the
evaluators), the names of its distillable maps and which are distilled by default, the
state-dict prefixes of its neck and head (for ``distill.inherit``) and the target fields
its training needs from the data.

What a builder returns is a :class:`TaskModel`: an ``nn.Module`` that

- prepares a batch (:meth:`TaskModel.prepare`: normalise, pad, move to the device),
- trains on it (:meth:`TaskModel.train_step` → task losses and every distillable map),
- gives the maps a teacher is asked for (:meth:`TaskModel.distill_maps`, no task loss),
- predicts (:meth:`TaskModel.predict`, in the coordinates of the input it saw).

The engine never names a family: it looks one up by ``<role>.family`` and calls these.
``dfd.models`` never imports ``dfd.engine``.
"""
from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

import torch
from torch import Tensor, nn

from dfd.errors import ComponentNotImplemented

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class OptionError(ValueError):
    """A model option is invalid. ``key`` is relative to the model node (``backbone``, not ``student.backbone``)."""

    def __init__(self, key: str, value: Any, expected: str) -> None:
        super().__init__(f"{key}={value!r} is invalid: {expected}")
        self.key, self.value, self.expected = key, value, expected

    def qualified(self, prefix: str) -> str:
        """The message with the key under ``prefix`` (e.g. ``student.backbone=...``)."""
        return f"{prefix}.{self.key}={self.value!r} is invalid: {self.expected}"


def check_choice(key: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise OptionError(key, value, f"expected one of {', '.join(map(str, choices))}")


def check_positive(key: str, value: Any) -> None:
    if value is None or isinstance(value, bool) or value <= 0:
        raise OptionError(key, value, "expected a positive number")


def arch(default: Any = dataclasses.MISSING, *, factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field that defines the architecture: a teacher checkpoint must agree on it."""
    if factory is not None:
        return field(default_factory=factory, metadata={"arch": True})
    return field(default=default, metadata={"arch": True})


def _looks_like_path(value: str) -> bool:
    return os.path.sep in value or value.endswith((".pth", ".pt", ".ckpt"))


@dataclass
class PublicCheckpoint:
    """A model's published checkpoint: its address, the sha256 prefix its file name carries
    (OpenMMLab's ``<name>-<first 8 hex of the sha256>.pth``; None where the name carries none), and
    ``metric``: its published value of the task's primary metric (box AP for a detector, keypoint AP
    for pose, mIoU for segmentation), in percent as the evaluators report it."""

    url: Optional[str] = None
    sha256: Optional[str] = None
    metric: Optional[float] = None

    # ``metric`` was ``box_ap`` before the pose and segmentation teachers were pinned: configs and
    # checkpoints written then still name it so (dfd.rundir.RENAMED_KEYS keeps their digests).
    OLD_NAMES: ClassVar[dict[str, str]] = {"box_ap": "metric"}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "PublicCheckpoint":
        """From plain values, old names (:attr:`OLD_NAMES`) read as their new ones."""
        return cls(**{cls.OLD_NAMES.get(k, k): v for k, v in values.items()})


@dataclass
class ModelOptions:
    """Options every family has. Families subclass it and set ``family`` to their name.

    ``weights``: the whole model's weights, a torchvision weights name or a checkpoint file.
    ``checkpoint``: (teacher) the ``checkpoints/last.pth`` of a ``train=teacher`` run, a converted
    checkpoint, or ``auto``: the ``public`` checkpoint, fetched and converted.
    ``verify``: (teacher) evaluate it before distilling; refuse it more than ``verify_tolerance`` below
    ``public.metric`` (in the task's primary metric).
    """

    family: str = ""
    weights: Optional[str] = None
    checkpoint: Optional[str] = None
    public: PublicCheckpoint = field(default_factory=PublicCheckpoint)
    verify: bool = False
    verify_tolerance: float = 1.0

    def check(self) -> None:
        """Raise :class:`OptionError` for the first invalid value; families extend it."""
        for name in ("weights", "checkpoint"):
            value = getattr(self, name)
            if value and _looks_like_path(value) and not Path(value).is_file():
                raise OptionError(name, value, "file does not exist")


def without_pretrained(options: Any) -> Any:
    """The options with no pretrained weights to fetch (``weights``, ``checkpoint``, and ``backbone_weights``
    where the family has it): for a model whose every weight is about to come from a checkpoint."""
    names = {f.name for f in dataclasses.fields(options)}
    cleared = {k: None for k in ("weights", "checkpoint", "backbone_weights") if k in names}
    return dataclasses.replace(options, **cleared)


def arch_options(options: Any) -> dict[str, Any]:
    """The options marked :func:`arch`, as plain values (lists for sequences)."""
    out = {}
    for f in dataclasses.fields(options):
        if f.metadata.get("arch"):
            value = getattr(options, f.name)
            out[f.name] = list(value) if isinstance(value, (list, tuple)) else value
    return out


# ----------------------------------------------------------------------------- batches


@dataclass(frozen=True)
class InputSpec:
    """How a model wants its input: per-channel normalisation of [0, 1] images, then padding.

    Images are normalised first and padded after with ``pad_value`` (0: the mean colour), at the
    bottom and right, to a multiple of ``size_divisible`` (mmdetection's ``Pad(size_divisor=32)``
    after ``Normalize``; torchvision's ``GeneralizedRCNNTransform`` does the same).
    """

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    size_divisible: int = 32
    pad_value: float = 0.0

    def serves(self, other: "InputSpec") -> bool:
        """Whether a batch prepared with this spec is a valid input for a model wanting ``other``."""
        return (self.mean, self.std, self.pad_value) == (other.mean, other.std, other.pad_value) and (
            self.size_divisible % other.size_divisible == 0
        )


@dataclass
class Batch:
    """A prepared batch.

    images: [N, 3, H, W] normalised and padded, on the device.
    image_sizes: (h, w) of each image inside the padding (the unpadded size).
    targets: per image, its tensor fields (boxes, labels, masks, ...) on the device, as plain tensors.
    meta: per image, the dataset's target dict as it came (on the CPU): image_id, size, orig_size, ...
    """

    images: Tensor
    image_sizes: list[tuple[int, int]]
    targets: list[dict[str, Tensor]]
    meta: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.image_sizes)


def prepare_batch(images: Sequence[Tensor], targets: Sequence[Mapping[str, Any]], spec: InputSpec,
                  device: torch.device | str) -> Batch:
    """Normalise each [3, h, w] image in [0, 1], pad them into one [N, 3, H, W] tensor, move targets.

    H and W are the largest h and w rounded up to ``spec.size_divisible``.
    """
    if not images:
        raise ValueError("a batch needs at least one image")
    mean = torch.tensor(spec.mean, device=device).view(3, 1, 1)
    std = torch.tensor(spec.std, device=device).view(3, 1, 1)
    d = spec.size_divisible
    sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    height = math.ceil(max(h for h, _ in sizes) / d) * d
    width = math.ceil(max(w for _, w in sizes) / d) * d
    batch = torch.full((len(images), 3, height, width), spec.pad_value, dtype=torch.float32, device=device)
    for i, (im, (h, w)) in enumerate(zip(images, sizes)):
        batch[i, :, :h, :w] = (im.as_subclass(Tensor).to(device, torch.float32, non_blocking=True) - mean) / std
    moved = [{k: v.as_subclass(Tensor).to(device, non_blocking=True) for k, v in t.items() if isinstance(v, Tensor)}
             for t in targets]
    return Batch(batch, sizes, moved, [dict(t) for t in targets])


@dataclass
class StepOutput:
    """What a training step gives: task loss terms (summed into the loss) and every distillable map."""

    losses: dict[str, Tensor]
    maps: dict[str, Tensor]


class TaskModel:
    """Mixin for the models families build (put it first among the bases of an ``nn.Module``)."""

    input_spec: InputSpec = InputSpec()

    def prepare(self, images: Sequence[Tensor], targets: Sequence[Mapping[str, Any]], device: torch.device | str) -> Batch:
        return prepare_batch(images, targets, self.input_spec, device)

    def train_step(self, batch: Batch) -> StepOutput:
        """Task losses on ``batch`` (training mode) and every distillable map by name."""
        raise NotImplementedError

    def distill_maps(self, batch: Batch, names: Sequence[str]) -> dict[str, Tensor]:
        """The maps ``names`` for ``batch``, computing no more of the model than they need."""
        raise NotImplementedError

    def predict(self, batch: Batch) -> list[dict[str, Tensor]]:
        """Predictions (eval mode) in the coordinates of ``batch.images``, one dict per image."""
        raise NotImplementedError


def select_maps(maps: Mapping[str, Tensor], names: Sequence[str]) -> dict[str, Tensor]:
    """Pick ``names`` from ``maps``, with an error naming the unknown ones."""
    unknown = [n for n in names if n not in maps]
    if unknown:
        raise KeyError(f"maps {unknown} are not produced by the model (it has {list(maps)})")
    return {n: maps[n] for n in names}


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Family:
    """One model family, declared in one place.

    name: the value of ``<role>.family`` (and of the options' ``family`` field).
    options: its options dataclass (a :class:`ModelOptions` subclass): the config schema.
    build: ``build(options, num_classes) -> TaskModel``; ``num_classes`` counts the dataset's
        categories (a family adds a background class itself where its heads need one).
    task: what its predictions are, which picks the evaluators (``detection``, ``instance``, ...).
    levels: every distillable map, in order, and ``default_levels`` the ones ``distill.levels``
        means when unset (the baselines' public configs).
    inherit_prefixes: state-dict prefixes of the neck and head, copied by ``distill.inherit``.
    target_keys: the target fields its training needs from the data (``masks`` asks the
        dataset to decode instance masks).
    pipeline: the data pipeline it trains on (``detection``, ``yolo``, ``topdown``, ``segmentation``:
        ``dfd/data/registry.py``); ``data.kind`` must serve it.
    from_mmdet: ``from_mmdet(state_dict, options) -> state_dict``: an OpenMMLab checkpoint's weights as
        this family's (``scripts/convert_mmdet.py``; the library follows the task: mmdetection 2.x for
        detection and instance, mmpose 0.x for keypoints, mmsegmentation 0.x for semantic); None where
        not written yet.
    mmdet_options: the options (``{name: value}``) a model must have to take the family's OpenMMLab
        checkpoints where they are not its defaults (PSPNet: mmseg's ResNetV1c stem); ``teacher.checkpoint=auto``
        asks for them before fetching anything.
    convert_by_hand: where ``from_mmdet`` is None, how to turn the family's published checkpoint
        (``public.url``) into weights by hand; ``teacher.checkpoint=auto`` refuses with it.
    channels_last: whether ``trainer.channels_last`` (weights and activations channels-last) is allowed:
        set where a test found the same losses and gradients (``tests/test_engine.py``). Not for every family:
        with torch 2.14.1 on the CPU, the backward of a 1×1 stride-2 convolution of 3 channels at 640×640
        (YOLOv6's RepVGG stem) aborts under it in oneDNN ("free(): invalid next size"; fine with mkldnn off),
        and two-stage losses move with the proposals a rounding difference reorders.
    protocol_amp: the precision its public recipe trains and tests in on a GPU, what ``trainer.amp=auto``
        means there: ``off`` (fp32) for the OpenMMLab configs, which set no ``fp16``; ``fp16`` for YOLOv6's
        release (autocast with a gradient scaler).
    """

    name: str
    options: type
    build: Callable[[Any, int], nn.Module]
    task: str
    levels: tuple[str, ...]
    default_levels: tuple[str, ...]
    inherit_prefixes: tuple[str, ...] = ()
    target_keys: tuple[str, ...] = ("boxes", "labels")
    pipeline: str = "detection"
    from_mmdet: Optional[Callable[[Mapping[str, Tensor], Any], dict[str, Tensor]]] = None
    mmdet_options: Mapping[str, Any] = field(default_factory=dict)
    convert_by_hand: Optional[str] = None
    protocol_amp: str = "off"
    channels_last: bool = False

    def __post_init__(self) -> None:
        missing = [lvl for lvl in self.default_levels if lvl not in self.levels]
        if missing:
            raise ValueError(f"family {self.name!r}: default levels {missing} are not among its levels {self.levels}")
        default = self.options().family if dataclasses.is_dataclass(self.options) else None
        if default != self.name:
            raise ValueError(f"family {self.name!r}: its options' `family` default is {default!r}")


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    if family.name in FAMILIES:
        raise ValueError(f"model family {family.name!r} is registered twice")
    FAMILIES[family.name] = family
    return family


def get_family(name: str, key: str = "model") -> Family:
    """The registered family ``name``; a name not built yet raises ComponentNotImplemented naming ``key``."""
    if name not in FAMILIES:
        raise ComponentNotImplemented(f"{key}.family={name!r} is not implemented (available: {', '.join(FAMILIES)})")
    return FAMILIES[name]


def options_from_dict(values: Mapping[str, Any], key: str = "model") -> Any:
    """A model node given as plain values (e.g. read from a checkpoint) as its family's options dataclass."""
    family = get_family(str(values.get("family")), key)
    values = dict(values)
    if isinstance(values.get("public"), Mapping):
        values["public"] = PublicCheckpoint.from_dict(values["public"])
    try:
        return family.options(**values)
    except TypeError as err:
        raise OptionError("family", family.name, f"the values do not fit {family.options.__name__} ({err})") from err


def freeze(model: nn.Module) -> nn.Module:
    """Teacher mode: eval, no parameter requires grad."""
    model.eval()
    model.requires_grad_(False)
    return model
