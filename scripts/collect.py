#!/usr/bin/env python
"""Collect a paper table from finished runs; see ``dfd/cli/collect.py``.

    python scripts/collect.py table=5 scale=smoke
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout works without installing

from dfd.cli.collect import main  # noqa: E402

if __name__ == "__main__":
    main()
