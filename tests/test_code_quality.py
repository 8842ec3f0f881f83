"""The code stays typed and tidy: ruff (lint and format) and mypy --strict over every package,
the same checks as ``./crm lint``, so CI enforces them."""

from __future__ import annotations

import glob
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [
    "shared/contracts/src",
    "shared/runtime/src",
    "deploy/local/src",
    *sorted(str(Path(p).relative_to(ROOT)) for p in glob.glob(str(ROOT / "services/*/src"))),
    "tests/load",  # the benchmarks: their figures are only as good as their code
]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )


def test_ruff_finds_nothing() -> None:
    result = run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_code_is_formatted() -> None:
    result = run("ruff", "format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean() -> None:
    assert len(SOURCES) == 8
    result = run("mypy", *SOURCES)
    assert result.returncode == 0, result.stdout + result.stderr
