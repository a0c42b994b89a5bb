"""The package works installed (not editable), from any working directory."""
from __future__ import annotations

import json
import os
import subprocess
import sysconfig
import venv
from pathlib import Path

import pytest
from conftest import REPO, TINY


def _fresh_venv(root: Path) -> Path:
    """A new venv whose dependencies (torch, hydra, ...) are this interpreter's, but whose dfd is pip-installed."""
    venv.create(root, with_pip=True)
    python = root / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # a path entry, not a site dir: the editable install's .pth files there are not processed, so `import dfd`
    # can only find the copy installed below
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # the venv's own (older) setuptools would shadow the one the build needs
    subprocess.run([python, "-m", "pip", "uninstall", "--quiet", "--yes", "setuptools"], capture_output=True, check=False)
    return python


@pytest.mark.slow
def test_pip_install_then_train_from_another_directory(tmp_path: Path, data_cache: Path) -> None:
    python = _fresh_venv(tmp_path / "venv")
    pip = subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", str(REPO)],
                         capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "DFD_CACHE": str(data_cache)}
    where = subprocess.run([python, "-c", "import dfd; print(dfd.__file__)"], cwd=elsewhere, capture_output=True, text=True, env=env)
    assert str(tmp_path / "venv") in where.stdout, where.stdout + where.stderr
    run = [*(o for o in TINY if not o.startswith("trainer.max_iters")), "trainer.max_iters=2", "distill=none"]
    for name, cmd in [("module", [python, "-m", "dfd.cli.train"]), ("script", [python, str(REPO / "scripts" / "train.py")])]:
        out = elsewhere / name
        proc = subprocess.run([*cmd, *run, f"hydra.run.dir={out}"], cwd=elsewhere, capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads((out / "metrics.json").read_text())["timings"]["iterations"] == 2
