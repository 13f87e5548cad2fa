"""`flowtrail observe` against what the real hubble 1.19.4 CLI printed (../shared/data/hubble-golden)."""

from __future__ import annotations

import io
import json
from typing import Any

import orjson
import pytest

from flowtrail.cli.observe import observe_main
from tests.conftest import GOLDEN_DIR

GOLDEN = json.loads((GOLDEN_DIR / "public-samples.golden.json").read_text())
INPUT = str(GOLDEN_DIR / "public-samples.input.jsonl")


def _id(case: dict[str, Any]) -> str:
    return f"{case['format']}:{' '.join(case['args']) or '(none)'}"


def _argv(case: dict[str, Any]) -> list[str]:
    if case["format"] == "raw-filters":
        return [*case["args"], "--print-raw-filters"]
    sel = [] if any(a in ("--first", "--last") for a in case["args"]) else ["--all"]
    return ["--input-file", INPUT, *sel, *case["args"], "-o", case["format"], "--color", "never"]


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=_id)
def test_matches_hubble(case: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    out = io.BytesIO()
    rc = observe_main(_argv(case), stdout=out)
    err = capsys.readouterr().err
    assert rc == case["exit_code"], err
    if rc != 0:
        assert err.splitlines()[0] == case["stderr_first_line"]
        return
    got = out.getvalue().decode()
    if case["format"] == "json":
        assert [orjson.loads(x) for x in got.splitlines()] == [orjson.loads(x) for x in case["stdout"].splitlines()]
    else:
        assert got == case["stdout"]
