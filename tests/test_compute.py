"""flowtrail.util.compute calls Arrow's kernels as pyarrow.compute does, without importing it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as real
import pytest

from flowtrail.util import compute as pc
from tests.conftest import GOLDEN_DIR

STRINGS = pa.array(["kube-system", None, "app", "App", "payments"])
INTS = pa.array([5, None, 80, 443, 53], pa.int64())


@pytest.mark.parametrize("call", [
    lambda m: m.equal(STRINGS, "app"),
    lambda m: m.is_in(STRINGS, value_set=pa.array(["app", "payments"])),
    lambda m: m.is_in(STRINGS, pa.array(["app"])),  # options by position
    lambda m: m.is_in(STRINGS, options={"value_set": pa.array(["app"])}),
    lambda m: m.match_substring_regex(STRINGS, "^[a-z]+$", ignore_case=True),
    lambda m: m.starts_with(STRINGS, pattern="kube"),
    lambda m: m.utf8_lower(STRINGS),
    lambda m: m.and_(m.greater(INTS, 50), m.less(INTS, 100)),
    lambda m: m.or_(m.is_valid(INTS), m.equal(INTS, 5)),
    lambda m: m.if_else(m.greater(INTS, 60), INTS, pa.scalar(0, pa.int64())),
    lambda m: m.coalesce(INTS, 0),
    lambda m: m.binary_join_element_wise(STRINGS, STRINGS, "/"),
    lambda m: m.fill_null(INTS, 7),
    lambda m: m.fill_null(STRINGS, pa.scalar("x")),
    lambda m: m.cast(INTS, pa.string()),
    lambda m: m.cast(pa.array([300]), pa.int8(), safe=False),
    lambda m: m.take(STRINGS, pa.array([4, 0, 1])),
    lambda m: m.filter(INTS, pa.array([True, False, True, None, True])),
    lambda m: m.dictionary_encode(STRINGS),
    lambda m: m.unique(pa.chunked_array([STRINGS, STRINGS])),
    lambda m: m.sum(INTS),
    lambda m: m.list_value_length(pa.array([[1, 2], None, []])),
])
def test_same_results_as_pyarrow_compute(call: Any) -> None:
    assert call(pc).equals(call(real))


def test_errors_are_pyarrows() -> None:
    with pytest.raises(pa.ArrowInvalid):
        pc.cast(pa.array([300]), pa.int8())
    with pytest.raises(TypeError):
        pc.equal(STRINGS)  # one argument short
    with pytest.raises(TypeError):
        pc.is_in(STRINGS, pa.array(["a"]), options={"value_set": pa.array(["a"])})
    with pytest.raises(AttributeError):
        pc.no_such_kernel  # noqa: B018


def test_expressions_build_as_with_pyarrow_compute() -> None:
    import pyarrow.dataset as ds

    assert str(pc.equal(ds.field("a"), 1)) == str(real.equal(ds.field("a"), 1))


def test_observe_never_imports_pyarrow_compute() -> None:
    """The point of the module: ~70 ms off every start-up. Arrow's own methods (Array.is_valid,
    StructArray.from_arrays(mask=), …) import pyarrow.compute behind the caller's back."""
    flows = GOLDEN_DIR / "public-samples.input.jsonl"
    code = (
        "import sys, io\n"
        "from flowtrail.cli.observe import observe_main\n"
        "for args in (['--verdict', 'DROPPED'], ['--namespace', 'kube-system', '--protocol', 'udp'],\n"
        "             ['--not', '--label', 'k8s:app=web', '--http-path', '/api'], ['--to-fqdn', '*.com'],\n"
        "             ['-o', 'compact'], ['--since', '2021-01-01T00:00:00Z']):\n"
        f"    observe_main(['--input-file', {str(flows)!r}, '--all', *args], stdout=io.BytesIO())\n"
        "print('pyarrow.compute' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parent)
    assert out.stdout.strip() == "False", out.stderr
