#!/usr/bin/env python
"""Draw the paper's figures from runs and collected tables; see ``dfd/cli/figures.py``.

    python scripts/figures.py                  # the demo's runs (make demo), into experiments/results/figures/
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout works without installing

from dfd.cli.figures import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
