"""Convert an mmdetection 2.x checkpoint into one this repository's teachers load.

    python scripts/convert_mmdet.py IN.pth OUT.pth model=retinanet_x101_64x4d [teacher.KEY=VALUE ...]

``model`` is the option of ``conf/teacher/`` the checkpoint is (its architecture options must be the
ones the mmdetection model was trained with; mmdetection's are the full-scale defaults). Then:

    python scripts/train.py scale=full teacher=retinanet_x101_64x4d teacher.checkpoint=OUT.pth ...
    python scripts/evaluate.py checkpoint=OUT.pth data.root=/data/coco
"""
from __future__ import annotations

import logging
import sys

from omegaconf import OmegaConf

from dfd.engine.config import compose_config
from dfd.engine.convert import convert_mmdet_checkpoint

USAGE = "usage: convert_mmdet.py IN OUT model=<conf/teacher option> [teacher.KEY=VALUE ...]"


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s", datefmt="%H:%M:%S")
    paths = [a for a in argv if "=" not in a]
    pairs = dict(a.split("=", 1) for a in argv if "=" in a)
    if len(paths) != 2 or "model" not in pairs:
        raise SystemExit(USAGE)
    extra = [f"{k}={v}" for k, v in pairs.items() if k != "model"]
    if any(not k.startswith("teacher.") for k in pairs if k != "model"):
        raise SystemExit(f"convert_mmdet.py: only teacher.* options may be given, got {extra}\n{USAGE}")
    cfg = compose_config(["scale=full", "train=teacher", "data=coco", f"teacher={pairs['model']}", *extra])
    record = convert_mmdet_checkpoint(paths[0], paths[1], OmegaConf.to_object(cfg))
    logging.info("wrote %s: %s with %d classes (from %s)", paths[1], record["family"], record["num_classes"], paths[0])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
