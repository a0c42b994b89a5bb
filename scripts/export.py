#!/usr/bin/env python
"""Export a run's distilled student; see ``dfd/cli/export.py``.

    python scripts/export.py runs/.../checkpoints/last.pth student.pth
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout works without installing

from dfd.cli.export import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
