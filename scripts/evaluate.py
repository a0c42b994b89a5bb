#!/usr/bin/env python
"""Evaluate a checkpoint a run wrote; see ``dfd/cli/evaluate.py``.

    python scripts/evaluate.py checkpoint=runs/smoke/demo/dfd/checkpoints/last.pth
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout works without installing

from dfd.cli.evaluate import main  # noqa: E402

if __name__ == "__main__":
    main()
