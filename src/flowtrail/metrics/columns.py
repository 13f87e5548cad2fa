"""Column helpers for the metric handlers: one batch of decoded flows seen as Arrow columns.

:class:`FlowView` reads dotted Hubble JSON paths out of the decoder's ``flow`` struct (a null
parent makes the child null), fills absent values the way protojson's zero values read in Go
(absent enum = its zero name, absent string = ""), and offers the few list operations the
handlers need (join, first element matching a condition) without a Python loop per row.

:func:`group_counts` turns label columns plus a row mask into ``(label tuple, count)`` pairs:
each column is dictionary-encoded, the codes are combined into one key per row and counted with
numpy, so a handler makes one ``counter.labels(...).inc(n)`` call per distinct label tuple.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from flowtrail.util import compute as pc
from flowtrail.util.arrays import first_item, list_parents, one_array, string_bytes

STRING = pa.string()


class FlowView:
    """The ``flow`` column of one decoded table, with cached column lookups."""

    def __init__(self, flow: pa.Array | pa.ChunkedArray, parent: FlowView | None = None,
                 keep: np.ndarray | None = None) -> None:
        """``parent``/``keep`` (from :meth:`select`): a view of the parent's rows where ``keep``
        holds, each column filtered from the parent's when it is first read."""
        self.flow: pa.Array = one_array(flow)
        self._parent = parent
        self._keep_np = keep
        self._keep = None if keep is None else pa.array(keep, pa.bool_())
        self.n = len(self.flow) if keep is None else int(np.count_nonzero(keep))
        self.valid: np.ndarray = _np_bool(self.flow.is_valid()) if keep is None else np.ones(self.n, bool)
        self._cache: dict[tuple[str, str], Any] = {}

    def select(self, rows: np.ndarray) -> tuple[FlowView, np.ndarray]:
        """The view to compute labels on for the rows where ``rows`` holds, and its row mask.

        Most handlers count a minority of flows (drops, DNS, HTTP, policy verdicts, egress to
        the world), and their label columns cost per row they are computed for: when fewer than
        half the rows are wanted, a view of only those rows (each column filtered when it is
        first read) and an all-true mask; otherwise this view and ``rows``."""
        if np.count_nonzero(rows) * 2 > self.n:
            return self, rows
        sub = FlowView(self.flow, self, rows)
        return sub, sub.valid

    # -- raw columns -------------------------------------------------------------------------
    def col(self, path: str) -> pa.Array:
        """The field at dotted ``path`` (null where it or a parent is absent)."""
        key = ("col", path)
        got = self._cache.get(key)
        if got is None and self._parent is not None:
            got = self._parent.col(path).filter(self._keep)
            self._cache[key] = got
        elif got is None:
            try:
                got = pc.struct_field(self.flow, path.split("."))
            except (KeyError, pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise ValueError(f"flow column lacks {path!r}: decode with HubbleMetrics.paths ({exc})") from None
            self._cache[key] = got
        return got

    def present(self, path: str) -> np.ndarray:
        """True where the field (a message, usually) is set, even if empty (``"ICMPv4":{}``)."""
        key = ("present", path)
        got = self._cache.get(key)
        if got is None:
            got = _np_bool(self.col(path).is_valid())
            self._cache[key] = got
        return got

    def text(self, path: str, default: str = "") -> pa.Array:
        """A string field with ``default`` where absent (enums: pass their zero value's name)."""
        key = ("text", path + "\0" + default)
        got = self._cache.get(key)
        if got is None:
            arr = self.col(path)
            if arr.type != STRING:
                arr = pc.cast(arr, STRING)
            got = pc.fill_null(arr, default)
            self._cache[key] = got
        return got

    def integer(self, path: str) -> np.ndarray:
        """An integer field as int64 numpy (absent = 0, as proto3 reads it). 64-bit fields are
        JSON strings in Hubble's output; they are parsed here."""
        key = ("int", path)
        got = self._cache.get(key)
        if got is None:
            arr = self.col(path)
            if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
                try:
                    arr = pc.cast(arr, pa.int64())
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    # a value over int64's range: only possible for a u64 near its top
                    arr = pa.array([_to_int(x) for x in arr.to_pylist()], pa.int64())
            got = pc.fill_null(arr, 0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
            self._cache[key] = got
        return got

    def flag(self, path: str) -> np.ndarray:
        """A bool field: True only where set to true."""
        key = ("flag", path)
        got = self._cache.get(key)
        if got is None:
            got = _np_bool(pc.fill_null(self.col(path), False))
            self._cache[key] = got
        return got

    def equals(self, path: str, value: str, default: str = "") -> np.ndarray:
        return _np_bool(pc.equal(self.text(path, default), value))

    # -- lists ---------------------------------------------------------------------------------
    def joined(self, path: str, sep: str = ",") -> pa.Array:
        """A list of strings joined with ``sep`` ("" for an absent or empty list)."""
        key = ("join", path + "\0" + sep)
        got = self._cache.get(key)
        if got is None:
            got = pc.fill_null(pc.binary_join(self.col(path), sep), "")
            self._cache[key] = got
        return got

    def list_len(self, path: str) -> np.ndarray:
        return pc.fill_null(pc.list_value_length(self.col(path)), 0).to_numpy(zero_copy_only=False)

    def contains(self, path: str, value: str) -> np.ndarray:
        """Rows whose list of strings holds exactly ``value``."""
        lists = self.col(path)
        flat = pc.list_flatten(lists)
        parents = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False)
        hit = _np_bool(pc.equal(flat, value))
        out = np.zeros(self.n, bool)
        out[parents[hit]] = True
        return out

    def first_where(self, path: str, flat_mask: np.ndarray | None = None, field: str | None = None) -> pa.Array:
        """Per row, the first element of list ``path`` (its ``field`` for a list of messages) for
        which ``flat_mask`` (over the flattened elements) holds; "" where there is none."""
        if flat_mask is None:
            key = ("first", path + "\0" + (field or ""))
            got = self._cache.get(key)
            if got is None:
                if self._parent is not None:
                    # every handler asks for the first workload: taken once over the batch, then
                    # filtered, instead of filtering the list column for each handler's rows
                    got = self._parent.first_where(path, None, field).filter(self._keep)
                else:
                    got = _as_text(first_item(self.col(path), self.n, field))
                self._cache[key] = got
            return got
        lists = self.col(path)
        flat, parents = list_parents(lists)
        values = pc.struct_field(flat, [field]) if field is not None else flat
        pick = np.flatnonzero(flat_mask)
        owners = parents[pick]
        # parents are non-decreasing: each row's first element starts a run
        first = np.ones(len(owners), bool)
        first[1:] = owners[1:] != owners[:-1]
        idx = np.full(self.n, -1, np.int64)
        idx[owners[first]] = pick[first]
        return _as_text(values.take(pa.array(idx, mask=idx < 0)))

    def list_sets(self, path: str) -> tuple[np.ndarray, list[list[str]]] | None:
        """Per row, the index of its list of strings at ``path`` among the batch's distinct lists,
        and those lists (an absent list reads as ``[""]``, like an empty one; callers derive
        values for which the two are alike). Endpoint labels repeat over a batch (a few hundred
        distinct sets in 65k flows), so values derived from them are computed once per set.
        None where an element is null or holds the separator: then derive row-wise."""
        key = ("sets", path)
        if key in self._cache:
            got: tuple[np.ndarray, list[list[str]]] | None = self._cache[key]
            return got
        if self._parent is not None:
            assert self._keep_np is not None
            whole = self._parent.list_sets(path)
            got = None if whole is None else (whole[0][self._keep_np], whole[1])
        else:
            got = _distinct_lists(self.col(path))
        self._cache[key] = got
        return got

    def flat(self, path: str) -> tuple[pa.Array, np.ndarray]:
        """The flattened elements of list ``path`` and the row each came from."""
        return list_parents(self.col(path))


def _as_text(values: pa.Array) -> pa.Array:
    """A label column: strings, "" where null."""
    return pc.fill_null(values if values.type == STRING else pc.cast(values, STRING), "")


_SEP = "\x1f"  # joins a list's elements into one hashable string; checked not to occur in them


def _distinct_lists(lists: pa.Array) -> tuple[np.ndarray, list[list[str]]] | None:
    if lists.null_count == len(lists):
        return np.zeros(len(lists), np.int64), [[""]]
    flat = pc.list_flatten(lists)
    if flat.null_count:
        return None
    # two different lists join alike only if an element holds the separator: checked, not assumed
    got = string_bytes(flat)
    if got is None:
        return None
    offsets, data = got
    if np.count_nonzero(data[offsets[0]:offsets[-1]] == ord(_SEP)):
        return None
    joined = pc.fill_null(pc.binary_join(lists, _SEP), "")
    enc = pc.dictionary_encode(joined)
    codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    return codes, [text.split(_SEP) for text in enc.dictionary.to_pylist()]


def per_list(view: FlowView, path: str, name: str, fn: Any) -> pa.Array | None:
    """``fn`` (list of strings -> str) of each row's list at ``path``, computed once per distinct
    list; None when :meth:`FlowView.list_sets` cannot tell the lists apart."""
    sets = view.list_sets(path)
    if sets is None:
        return None
    key = ("per_list", path + "\0" + name)
    got = view._cache.get(key)
    if got is None:
        codes, lists = sets
        got = pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), pa.array([fn(x) for x in lists], STRING))
        view._cache[key] = got
    return got


def unique_codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(values, return_inverse=True)``, by counting instead of sorting when the values
    are small non-negative integers (dictionary codes, enum numbers): a 65k-row sort is ~2 ms."""
    if values.size and values.dtype.kind in "iu":
        lo, hi = int(values.min()), int(values.max())
        if lo >= 0 and hi < max(1 << 16, 4 * values.size):
            present = np.zeros(hi + 1, bool)
            present[values] = True
            uniq = np.flatnonzero(present)
            position = np.cumsum(present) - 1
            return uniq.astype(values.dtype, copy=False), position[values]
    uniq, inverse = np.unique(values, return_inverse=True)
    return uniq, inverse.ravel()


def _to_int(x: Any) -> int | None:
    if x is None:
        return None
    try:
        v = int(x)
    except ValueError:
        return None
    return min(v, (1 << 63) - 1)


def _np_bool(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=bool)


def const(value: str, n: int) -> pa.Array:
    """A string column holding ``value`` n times (dictionary-encodes to one entry)."""
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([value], STRING))


def choose(cond: np.ndarray, a: pa.Array, b: pa.Array) -> pa.Array:
    """Where ``cond``: a, else b. Two dictionary columns (enum names, lookups, constants) give a
    dictionary column, chosen between by their codes: no string is copied, and group_rows reads
    the codes as they are (its dictionary may then hold a value twice, which group_rows merges)."""
    if (isinstance(a, pa.DictionaryArray) and isinstance(b, pa.DictionaryArray) and not a.null_count
            and not b.null_count and a.dictionary.type == b.dictionary.type):
        ia = np.asarray(a.indices.to_numpy(zero_copy_only=False), np.int32)
        ib = np.asarray(b.indices.to_numpy(zero_copy_only=False), np.int32)
        codes = np.where(cond, ia, ib + np.int32(len(a.dictionary)))
        return pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()),
                                              pa.concat_arrays([a.dictionary, b.dictionary]))
    return pc.if_else(pa.array(cond, pa.bool_()), _plain(a), _plain(b))


def _plain(a: pa.Array) -> pa.Array:
    return a.dictionary_decode() if isinstance(a, pa.DictionaryArray) else a


def lookup(codes: np.ndarray, names: dict[int, str], unknown: str | None = None) -> pa.Array:
    """Names for integer codes: a Python lookup per distinct code, not per row. Codes missing
    from ``names`` get ``unknown`` (None: the number itself)."""
    uniq, inverse = unique_codes(codes)
    labels = [names.get(int(c), str(int(c)) if unknown is None else unknown) for c in uniq.tolist()]
    return pa.DictionaryArray.from_arrays(pa.array(inverse.ravel().astype(np.int32)), pa.array(labels, STRING))


def map_text(arr: pa.Array, fn: Any) -> pa.Array:
    """Apply ``fn`` (str -> str) per distinct value of a string column."""
    enc = pc.dictionary_encode(_plain(arr))
    return pa.DictionaryArray.from_arrays(enc.indices, pa.array([fn(x) for x in enc.dictionary.to_pylist()], STRING))


def group_rows(columns: Sequence[pa.Array], rows: np.ndarray) -> tuple[list[tuple[str, ...]], np.ndarray]:
    """Distinct label tuples among ``rows`` (indices) of ``columns`` and, per row, its tuple's
    position in that list."""
    if not len(rows):
        return [], np.zeros(0, np.int64)
    if not columns:
        return [()], np.zeros(len(rows), np.int64)
    take = pa.array(rows, pa.int64())
    codes: list[np.ndarray] = []
    dicts: list[list[str]] = []
    for col in columns:
        sub = col.take(take)
        enc = sub if isinstance(sub, pa.DictionaryArray) else pc.dictionary_encode(sub)
        dictionary = enc.dictionary.to_pylist()
        idx = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        if len(dictionary) > 1 and isinstance(sub, pa.DictionaryArray):
            # a dictionary built from many rows may hold unused or repeated entries: compact it
            used, idx = unique_codes(idx)
            dictionary = [dictionary[i] for i in used.tolist()]
            first: dict[str, int] = {}
            canon = np.asarray([first.setdefault(v, len(first)) for v in dictionary], np.int64)
            if len(first) < len(dictionary):
                idx = canon[idx]
                dictionary = list(first)
        codes.append(idx)
        dicts.append(dictionary)
    sizes = [max(len(d), 1) for d in dicts]
    if float(np.prod(np.asarray(sizes, dtype=float))) < 2.0**62:
        key = np.zeros(len(rows), np.int64)
        for c, size in zip(codes, sizes, strict=True):
            key = key * size + c
        uniq_keys, inverse = unique_codes(key)
        parts = []
        rest = uniq_keys.copy()
        for size in reversed(sizes):
            parts.append(rest % size)
            rest //= size
        uniq = np.stack(parts[::-1], axis=1)
    else:
        uniq, inverse = np.unique(np.stack(codes, axis=1), axis=0, return_inverse=True)
    labels = [tuple(d[i] for d, i in zip(dicts, row, strict=True)) for row in uniq.tolist()]
    return labels, inverse.ravel()


def group_counts(columns: Sequence[pa.Array], mask: np.ndarray,
                 weights: np.ndarray | None = None) -> list[tuple[tuple[str, ...], float]]:
    """``(label tuple, count)`` for the rows where ``mask`` holds (``weights``: sum these instead
    of counting rows)."""
    rows = np.flatnonzero(mask)
    labels, inverse = group_rows(columns, rows)
    if not labels:
        return []
    w = None if weights is None else weights[rows].astype(float)
    sums = np.bincount(inverse, weights=w, minlength=len(labels))
    return [(lab, float(s)) for lab, s in zip(labels, sums.tolist(), strict=True)]
