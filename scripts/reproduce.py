#!/usr/bin/env python
"""Reproduce one paper table; see ``dfd/cli/reproduce.py``.

    python scripts/reproduce.py table=5 scale=smoke
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout works without installing

from dfd.cli.reproduce import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
