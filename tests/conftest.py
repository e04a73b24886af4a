"""Shared test set-up. Fixtures live in tests/fixtures/<area>.py, loaded here as plugins.

One real local Ray instance serves the whole session (`ray_local`), on 127.0.0.1 only; tests that
run `spd` in a subprocess join it through RAY_ADDRESS instead of starting their own.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytest_plugins = sorted(
    f"tests.fixtures.{p.stem}" for p in (ROOT / "tests" / "fixtures").glob("*.py") if p.stem != "__init__"
)

# Tests never reach out: no MLflow/DVC telemetry, no Ray usage stats.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(scope="session")
def project_root() -> Path:
    return ROOT
