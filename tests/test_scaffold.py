"""`mmcore plugin new` writes a distribution that installs and passes its own tests as generated."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmcore.cli import main


@pytest.mark.parametrize("kind", ["projector", "encoder", "head"])
def test_scaffold_installs_and_passes(kind: str, tmp_path: Path) -> None:
    """The generated plugin installs with pip and its conformance tests pass."""
    target = tmp_path / f"mmcore-plugin-demo-{kind}"
    assert main(["plugin", "new", f"demo-{kind}", "--kind", kind, "-o", str(target)]) == 0
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(target)], check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(target / "tests")],
                          env=env, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "6 passed" in done.stdout


def test_scaffold_refuses_a_bad_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A name that makes no valid package is a one-line error, exit 2."""
    assert main(["plugin", "new", "Bad_Name", "--kind", "projector", "-o", str(tmp_path / "x")]) == 2
    assert "lower-case words" in capsys.readouterr().err
