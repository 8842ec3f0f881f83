"""Fixtures for the offline checks of the deployment files (no Docker, Kafka or MongoDB)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def helm_bin() -> Path:
    """The pinned Helm CLI: `./crm test` builds it before the tests (deploy/scripts/ensure-helm.sh);
    a bare pytest run builds it here on first use (about 2 min)."""
    script = REPO_ROOT / "deploy" / "scripts" / "ensure-helm.sh"
    result = subprocess.run(["bash", str(script)], check=True, capture_output=True, text=True, timeout=1200)
    return Path(result.stdout.strip().splitlines()[-1])
