"""Shared fixtures: paths to ../shared reference data, UTC like the golden recordings."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
GOLDEN_DIR = SHARED / "data" / "hubble-golden"
SAMPLES_DIR = SHARED / "data" / "hubble-samples"
# The bundled copy keeps tests and the demo working when ../shared is absent.
BUNDLED = REPO / "src" / "flowtrail" / "data"


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Compiled prefilters are cached under the user's home; the tests (and the CLIs they start)
    keep theirs in a temporary directory."""
    before = os.environ.get("FLOWTRAIL_CACHE_DIR")
    os.environ["FLOWTRAIL_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if before is None:
        del os.environ["FLOWTRAIL_CACHE_DIR"]
    else:
        os.environ["FLOWTRAIL_CACHE_DIR"] = before


@pytest.fixture(autouse=True)
def _utc() -> None:
    os.environ["TZ"] = "UTC"
    time.tzset()


@pytest.fixture
def servers() -> Iterator[list[Any]]:
    """Servers a test starts (anything with stop()), stopped after it whatever its outcome."""
    made: list[Any] = []
    yield made
    for s in made:
        s.stop()
