#!/usr/bin/env python
"""Convert an mmdetection checkpoint for this repository; see ``dfd/cli/convert_mmdet.py``.

    python scripts/convert_mmdet.py IN.pth OUT.pth model=retinanet_x101_64x4d
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout works without installing

from dfd.cli.convert_mmdet import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
