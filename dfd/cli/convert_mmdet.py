"""Convert an OpenMMLab checkpoint (mmdetection 2.x, mmpose 0.x, mmsegmentation 0.x) into one this
repository's teachers load.

    python scripts/convert_mmdet.py IN.pth OUT.pth model=retinanet_x101_64x4d [teacher.KEY=VALUE ...]
    python scripts/convert_mmdet.py res50_coco_256x192.pth OUT.pth model=simplebaseline_r50
    python scripts/convert_mmdet.py pspnet_r101-d8.pth OUT.pth model=pspnet_r101 teacher.stem=v1c teacher.backbone_weights=null

``model`` is the option of ``conf/teacher/`` the checkpoint is (its architecture options must be the
ones the OpenMMLab model was trained with; theirs are the full-scale defaults, but mmsegmentation's
ResNetV1c needs ``teacher.stem=v1c``). The family's task picks the library and the data the
converted checkpoint's config names (``dfd.engine.convert.SOURCES``). Then:

    python scripts/train.py scale=full teacher=retinanet_x101_64x4d teacher.checkpoint=OUT.pth ...
    python scripts/evaluate.py checkpoint=OUT.pth data.root=/data/coco
"""
from __future__ import annotations

import logging
import sys

from omegaconf import OmegaConf

from dfd.engine.config import compose_config
from dfd.engine.convert import convert_mmdet_checkpoint, source_of
from dfd.errors import ComponentNotImplemented
from dfd.models import get_family

USAGE = ("usage: convert_mmdet.py IN OUT model=<conf/teacher option> [teacher.KEY=VALUE ...]\n"
         "converts mmdetection 2.x (detectors), mmpose 0.x (top-down pose) and mmsegmentation 0.x (PSPNet) checkpoints")


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s", datefmt="%H:%M:%S")
    paths = [a for a in argv if "=" not in a]
    pairs = dict(a.split("=", 1) for a in argv if "=" in a)
    if len(paths) != 2 or "model" not in pairs:
        raise SystemExit(USAGE)
    extra = [f"{k}={v}" for k, v in pairs.items() if k != "model"]
    if any(not k.startswith("teacher.") for k in pairs if k != "model"):
        raise SystemExit(f"convert_mmdet.py: only teacher.* options may be given, got {extra}\n{USAGE}")
    overrides = ["scale=full", "train=teacher", f"teacher={pairs['model']}", *extra]
    family = get_family(str(compose_config(overrides).teacher.family), f"model={pairs['model']}: teacher")
    try:
        source = source_of(family)
    except ComponentNotImplemented as err:
        raise SystemExit(f"convert_mmdet.py: model={pairs['model']}: {err}") from err
    cfg = compose_config([*overrides, f"data={source.data}"])
    record = convert_mmdet_checkpoint(paths[0], paths[1], OmegaConf.to_object(cfg))
    logging.info("wrote %s: %s with %d classes (from %s, %s)", paths[1], record["family"], record["num_classes"], paths[0],
                 record["converted_from"]["format"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
