"""Property: flowtrail's vectorized filters select exactly what hubble's per-flow filters select.

For random batches of realistic Hubble lines (tests/strategies.py) and random allow/deny lists:

* ``FilterSet.mask`` over the decoded table equals tests/reference_filter.py per row;
* the prefilter path (``decode_block`` with needle groups and the non-canonical markers) selects
  exactly the same lines as the full decode;
* every row decodes back to the canonical response, whatever spelling the line used.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowtrail.filters import FilterError, FilterSet
from flowtrail.filters.compile import NONCANONICAL_MARKERS
from flowtrail.sources.decode import Decoder
from tests import strategies as S
from tests.reference_filter import Reference, ReferenceFilterError

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _compile(allow: list[dict[str, Any]], deny: list[dict[str, Any]]) -> tuple[FilterSet | None, Reference | None]:
    try:
        ref: Reference | None = Reference(allow, deny)
    except ReferenceFilterError:
        ref = None
    try:
        fs: FilterSet | None = FilterSet.compile(allow, deny)
    except FilterError:
        fs = None
    assert (fs is None) == (ref is None), f"build error mismatch: src={fs is not None} reference={ref is not None}"
    return fs, ref


def _check(batch: list[tuple[dict[str, Any], str]], allow: list[dict[str, Any]], deny: list[dict[str, Any]]) -> None:
    fs, ref = _compile(allow, deny)
    if fs is None or ref is None or not batch:
        return
    lines = [S.render(resp, spelling) for resp, spelling in batch]
    dec = Decoder(fs.paths)

    full = dec.decode_lines(lines, source="batch")
    assert not full.errors, [str(e) for e in full.errors]
    row_lines = list(full.line_numbers)
    assert row_lines == [i + 1 for i, (resp, _) in enumerate(batch) if S.is_row(resp)]
    for raw, n in zip(full.raw, row_lines, strict=True):
        if batch[n - 1][1] != "numbers":  # known src bug: test_decode.py::test_numeric_enums_are_canonicalised_*
            assert orjson.loads(raw) == batch[n - 1][0], f"line {n} ({batch[n - 1][1]}) decoded differently"
    got = fs.mask(full.table).tolist()
    want = [ref(batch[n - 1][0]) for n in row_lines]
    assert got == want, {n: (batch[n - 1][1], g, w) for n, g, w in zip(row_lines, got, want, strict=True) if g != w}
    matched = [n for n, w in zip(row_lines, want, strict=True) if w]

    block = b"\n".join(lines) + b"\n"
    pre = dec.decode_block(block, source="batch", needle_groups=fs.needle_groups(), markers=NONCANONICAL_MARKERS)
    assert not pre.errors
    selected = sorted(pre.line_numbers[i] for i in np.flatnonzero(fs.mask(pre.table)))
    assert selected == matched, f"prefilter selected {selected}, full decode {matched}"


@SETTINGS
@given(scenario=S.scenarios())
def test_filters_match_reference_and_prefilter(scenario: tuple[Any, list[dict[str, Any]], list[dict[str, Any]]]) -> None:
    _check(*scenario)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(scenario=S.scenarios(max_size=12, min_allow=1, max_allow=1, max_deny=0), negate=st.booleans())
def test_single_filter_as_allow_or_deny(scenario: tuple[Any, list[dict[str, Any]], Any], negate: bool) -> None:
    """One filter alone: in the allowlist it selects exactly its matches, in the denylist the rest."""
    batch, filters, _ = scenario
    _check(batch, [] if negate else filters, filters if negate else [])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(scenario=S.scenarios(max_size=12, min_allow=2, max_allow=3, max_deny=0))
def test_allowlist_is_union_of_its_filters(scenario: tuple[Any, list[dict[str, Any]], Any]) -> None:
    batch, filters, _ = scenario
    try:
        each = [FilterSet.compile([f]) for f in filters]
        union = FilterSet.compile(filters)
    except FilterError:
        return
    lines = [S.render(resp, spelling) for resp, spelling in batch]
    dec = Decoder(union.paths)
    table = dec.decode_lines(lines).table
    expected = np.zeros(table.num_rows, dtype=bool)
    for fs in each:
        expected |= fs.mask(table)
    assert union.mask(table).tolist() == expected.tolist()
