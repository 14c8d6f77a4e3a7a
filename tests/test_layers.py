"""Imports point down the layers: the import-linter contracts in ``pyproject.toml``.

    consumers | producers  >  ocrstream  >  topology  >  schemas       (devtools: dev only, above all)

``schemas`` imports nothing from the project; consumers and producers never import each other;
the runtime never imports ``devtools``. The composition root ``ocrstream.cli`` is the only
module allowed to reach up (to the stages and the dev commands), and only through the
``ignore_imports`` listed there.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def lint_imports() -> str:
    """The ``lint-imports`` of this interpreter's environment (the test extra installs it)."""
    beside = Path(sys.executable).parent / "lint-imports"
    exe = str(beside) if beside.exists() else shutil.which("lint-imports")
    if not exe:
        pytest.fail("lint-imports is missing: pip install -e '.[test]' (import-linter)")
    return exe


def test_import_layers_hold():
    # --no-cache: writes no .import_linter_cache/ into the checkout (the graph takes well under a second).
    proc = subprocess.run([lint_imports(), "--config", str(REPO / "pyproject.toml"), "--no-cache", "--no-logo"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"import-linter contracts broken:\n{proc.stdout}\n{proc.stderr}"
