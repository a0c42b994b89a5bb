#!/usr/bin/env python
"""Train a teacher or a (distilled) student; see ``dfd/cli/train.py``.

    python scripts/train.py train=teacher
    python scripts/train.py teacher.checkpoint=PATH
    python scripts/train.py -m distill=dfd region.hd=mse,tf region.ld=mse,none teacher.checkpoint=PATH
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout works without installing

from dfd.cli.train import main  # noqa: E402

if __name__ == "__main__":
    main()
