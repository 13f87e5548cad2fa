"""The prefilters' line matcher: which lines hold a match of which pattern set.

Two backends compute it (the C extension on the system's Hyperscan, the PyPI wheel with a Python
callback per match): both must name the same lines as a plain per-line regex search, on real
Hubble lines and on blocks built to stress the line bookkeeping (matches at line starts and ends,
a last line without a newline, lines with several matches of several sets)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowtrail.detect.engine import Engine
from flowtrail.detect.features import Enrichment
from flowtrail.detect.rules import load_rules
from flowtrail.sources import linematch
from flowtrail.sources.batches import NONCANONICAL
from flowtrail.sources.linematch import LineMatcher
from tests.conftest import SAMPLES_DIR

BACKENDS = [pytest.param(True, id="system-hyperscan"), pytest.param(False, id="wheel")]


def _backend(native: bool) -> None:
    if native and linematch._hsmatch is None:
        pytest.skip("built without the system's Hyperscan")
    if not native:
        pytest.importorskip("hyperscan")


def _starts(data: bytes) -> np.ndarray:
    nl = [i + 1 for i, c in enumerate(data) if c == 10 and i + 1 < len(data)]
    return np.asarray([0, *nl], np.int64)


def _reference(data: bytes, patterns: list[bytes], ids: list[int]) -> set[tuple[int, int]]:
    """(line, set) by searching each line with Python's re (same syntax for these patterns)."""
    out = set()
    for n, line in enumerate(data.split(b"\n")[: len(_starts(data))]):
        for p, i in zip(patterns, ids, strict=True):
            if re.search(p, line):
                out.add((n, i))
    return out


def _pairs(m: LineMatcher, data: bytes) -> set[tuple[int, int]]:
    line, which = m.lines(data, _starts(data))
    assert list(line) == sorted(line)
    return set(zip(line.tolist(), which.tolist(), strict=True))


def _samples() -> bytes:
    return b"".join(p.read_bytes() for p in sorted(Path(SAMPLES_DIR).glob("*.jsonl")))


@pytest.mark.parametrize("native", BACKENDS)
def test_detect_prefilter_patterns_on_real_samples(native: bool) -> None:
    _backend(native)
    engine = Engine(load_rules(), Enrichment())
    patterns = [p.encode() for p in engine.prefilter() or []]
    patterns += [re.escape(m.decode("latin-1")).encode() for m in NONCANONICAL]
    ids = [i % 5 for i in range(len(patterns))]  # several patterns per set
    data = _samples()
    m = LineMatcher.compile(patterns, ids, native=native)
    assert m is not None and m.native == native
    got = _pairs(m, data)
    assert got == _reference(data, patterns, ids)
    assert got  # the samples hold drops, DNS and world traffic: something must match


@pytest.mark.parametrize("native", BACKENDS)
@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet="ab\nxyz", max_size=30), min_size=1, max_size=12))
def test_lines_at_block_edges(native: bool, chunks: list[str]) -> None:
    _backend(native)
    data = "".join(chunks).encode()
    if not data:
        return
    patterns, ids = [b"ab", b"x", b"a[^\\n]*y", b"z"], [0, 1, 1, 2]
    m = LineMatcher.compile(patterns, ids, native=native)
    assert m is not None
    assert _pairs(m, data) == _reference(data, patterns, ids)


@pytest.mark.parametrize("native", BACKENDS)
def test_mask_and_empty_input(native: bool) -> None:
    _backend(native)
    m = LineMatcher.compile([b'"verdict":"DROPPED"', b"lost_events"], [0, 1], native=native)
    assert m is not None and m.nsets == 2
    data = b'{"flow":{"verdict":"DROPPED"}}\n{"flow":{}}\n{"lost_events":{}}'
    assert m.mask(data, _starts(data)).tolist() == [True, False, True]
    line, which = m.lines(b"", np.zeros(0, np.int64))
    assert len(line) == len(which) == 0


@pytest.mark.parametrize("native", BACKENDS)
def test_refused_pattern_gives_no_matcher(native: bool) -> None:
    _backend(native)
    assert LineMatcher.compile([b"(?<=a)b"], [0], native=native) is None  # lookbehind: not Hyperscan
    assert LineMatcher.compile([], [], native=native) is None


def test_system_hyperscan_is_used_where_installed() -> None:
    """setup.py builds the matcher on the system's Hyperscan whenever its header is there: the
    wheel's SSE-only copy scans 1.5-3x slower."""
    if os.path.exists("/usr/include/hs/hs.h") and not os.environ.get("FLOWTRAIL_NO_SYSTEM_HYPERSCAN"):
        assert linematch._hsmatch is not None and linematch.NATIVE


def test_compiled_databases_are_cached_and_a_bad_file_is_compiled_again(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    if linematch._hsmatch is None:
        pytest.skip("built without the system's Hyperscan")
    monkeypatch.setenv("FLOWTRAIL_CACHE_DIR", str(tmp_path))
    patterns, ids = [b'"verdict":"DROPPED"', b"lost_events", b'"query":"[^"\\n]*\\.com\\.?"'], [0, 1, 1]
    data = _samples()
    fresh = LineMatcher.compile(patterns, ids, native=True)
    assert fresh is not None
    files = list((tmp_path / "hyperscan").glob("*.hsdb"))
    assert len(files) == 1
    cached = LineMatcher.compile(patterns, ids, native=True)
    assert cached is not None and _pairs(cached, data) == _pairs(fresh, data) == _reference(data, patterns, ids)
    files[0].write_bytes(b"not a database")
    again = LineMatcher.compile(patterns, ids, native=True)
    assert again is not None and _pairs(again, data) == _pairs(fresh, data)
    assert files[0].read_bytes() != b"not a database"  # rewritten
    monkeypatch.setenv("FLOWTRAIL_CACHE_DIR", "")
    assert linematch.cache_dir() is None
    assert LineMatcher.compile([b"x"], [0], native=True) is not None


@settings(max_examples=120, deadline=None)
@given(st.lists(st.sampled_from([b"ab", b"x", b"\n", b"\r\n", b"{", b"}", b'{"flow":', b"z\x01", b"\xc3\xa9", b"y"]),
                max_size=40),
       st.sampled_from([1, 2, 3, 7, 64, 128 << 10]))
def test_one_pass_index_and_search_equal_the_two_passes(parts: list[bytes], chunk: int) -> None:
    """scan_lines (the index made a chunk at a time, each chunk searched first) gives what the
    index and the search give apart, wherever the chunks end: in a line, on its newline, at a
    CR, or past a line longer than a chunk."""
    if linematch._hsmatch is None:
        pytest.skip("built without the system's Hyperscan")
    from flowtrail.sources import canonscan
    from flowtrail.sources.decode import FLOW_PREFIX

    data = b"".join(parts)
    patterns, ids = [b"ab", b"x", b"a[^\\n]*y", b"z"], [0, 1, 1, 2]
    m = LineMatcher.compile(patterns, ids, native=True)
    assert m is not None
    for max_line in (1 << 20, 4):
        starts, ends, flags = canonscan.index_lines(data, max_line, FLOW_PREFIX)
        if not data:
            assert m.scan_lines(data, max_line, FLOW_PREFIX) is None
            continue
        line, which = m.lines(data, starts)
        raw = m._db.scan_lines(data, max_line, FLOW_PREFIX, m.nsets, chunk)
        got_line, got_which = m._pairs(np.frombuffer(raw[3], np.int64), np.frombuffer(raw[4], np.int32).astype(np.int64))
        assert np.frombuffer(raw[0], np.int64).tolist() == starts.tolist()
        assert np.frombuffer(raw[1], np.int64).tolist() == ends.tolist()
        assert np.frombuffer(raw[2], np.uint8).tolist() == flags.tolist()
        assert got_line.tolist() == line.tolist() and got_which.tolist() == which.tolist()
