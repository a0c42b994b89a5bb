"""Export the distilled student of a run for use elsewhere.

    python scripts/export.py runs/.../checkpoints/last.pth student.pth

Writes ``student.pth`` (a state dict torchvision's own builder of the model loads) and ``student.pth.json``.
"""
from __future__ import annotations

import logging
import sys

from dfd.engine.export import export_student


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s", datefmt="%H:%M:%S")
    if len(argv) != 2:
        raise SystemExit("usage: export.py CHECKPOINT OUT")
    meta = export_student(argv[0], argv[1])
    logging.info("wrote %s and %s.json: %s with %s classes", argv[1], argv[1], meta["family"], meta["num_classes"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
