"""The tooling that keeps the code in one shape: ruff's lint, ruff's formatter (``make format`` applies it) and mypy
(with the pydantic plugin) are clean over nisbflow/ and cli/. mypy joined the suite as a per-module ratchet (2026-12-07, 171 errors, mostly region slice tuples
typed as three slices and report fields typed ``object``); issue 38 brought it to none, and a new error fails here.
Where a library's stub cannot say what the code does (numba's dispatcher, numpy's ``savez`` keywords, cc3d), the line
carries a ``type: ignore[code]`` with the reason."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_ruff_finds_nothing_in_the_library_and_the_command_line():
    result = subprocess.run([str(BIN / "ruff"), "check", "nisbflow", "cli"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:]


def test_the_library_and_the_command_line_are_formatted_as_ruff_formats_them():
    result = subprocess.run([str(BIN / "ruff"), "format", "--check", "nisbflow", "cli"], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]


def test_mypy_finds_nothing_in_the_library_and_the_command_line():
    result = subprocess.run([str(BIN / "mypy"), "--no-error-summary"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
