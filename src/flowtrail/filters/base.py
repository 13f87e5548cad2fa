"""Shared pieces of the filter families: the predicate type and column access on a batch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from flowtrail.util import compute as pc
from flowtrail.util.arrays import one_array

Mask = np.ndarray


class FilterError(ValueError):
    """A FlowFilter that hubble would refuse to build."""


class Columns:
    """Read access to the ``flow`` struct of a decoded batch by dotted proto path, cached."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table
        self.n = table.num_rows
        flow = table.column("flow")
        self._flow = one_array(flow)
        self._cache: dict[str, pa.Array] = {}

    def get(self, path: str) -> pa.Array:
        arr = self._cache.get(path)
        if arr is None:
            arr = pc.struct_field(self._flow, path.split("."))
            arr = one_array(arr)
            self._cache[path] = arr
        return arr

    def valid(self, path: str) -> Mask:
        return np.asarray(pc.is_valid(self.get(path)).to_numpy(zero_copy_only=False), dtype=bool)

    def is_flow(self) -> Mask:
        """Rows that are flows; the others are lost events, which hubble filters as a nil flow."""
        return np.asarray(pc.is_valid(self._flow).to_numpy(zero_copy_only=False), dtype=bool)

    def top(self, name: str) -> pa.Array:
        return one_array(self.table.column(name))


def to_mask(arr: pa.Array | pa.ChunkedArray) -> Mask:
    """Boolean Arrow array to numpy, null counting as no match."""
    filled = pc.fill_null(arr, False)
    return np.asarray(filled.to_numpy(zero_copy_only=False), dtype=bool)


def list_any(lists: pa.Array, item_mask: Callable[[pa.Array], Mask], n: int) -> Mask:
    """Per row: does any element of the list satisfy ``item_mask`` (evaluated on all elements)?"""
    values = pc.list_flatten(lists)
    if len(values) == 0:
        return np.zeros(n, dtype=bool)
    parents = np.asarray(pc.list_parent_indices(lists).to_numpy(zero_copy_only=False))
    hits = item_mask(values)
    out = np.zeros(n, dtype=bool)
    out[parents[hits]] = True
    return out


def per_unique(arr: pa.Array, fn: Callable[[Any], bool]) -> Mask:
    """Evaluate a Python predicate once per distinct value (nulls → ``fn(None)``)."""
    enc = pc.dictionary_encode(arr)
    if isinstance(enc, pa.ChunkedArray):
        enc = enc.combine_chunks()
    dict_vals = enc.dictionary.to_pylist()
    table = np.array([bool(fn(v)) for v in dict_vals] + [bool(fn(None))], dtype=bool)
    idx = pc.fill_null(enc.indices, len(dict_vals)).to_numpy(zero_copy_only=False)
    return table[np.asarray(idx, dtype=np.int64)] if len(idx) else np.zeros(0, dtype=bool)


@dataclass(frozen=True)
class Predicate:
    """One FlowFilter field compiled: the paths it reads, its batch function, and its needles.

    ``needles``: byte strings of which every line this predicate can match contains at least one
    (None when no such set is known). They let the reader skip lines without decoding them.
    """

    field: str
    paths: tuple[str, ...]
    fn: Callable[[Columns], Mask]
    needles: tuple[bytes, ...] | None = None


def str_list(field: str, values: Any) -> list[str]:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise FilterError(f"{field}: expected a list of strings")
    return values


def key_needles(keys: Sequence[str], encoded_values: Sequence[str]) -> tuple[bytes, ...]:
    """``"key":value`` and ``"key": value`` for every key spelling and encoded value (for values
    too short to be needles on their own, e.g. enum numbers)."""
    return tuple(f'"{k}":{sep}{v}'.encode() for k in keys for v in encoded_values for sep in ("", " "))


def quoted(values: Sequence[str], prefix: bool = False) -> tuple[bytes, ...]:
    """A string value as it appears in JSON whatever the spacing: ``"value"`` (or ``"prefix``)."""
    return tuple(f'"{v}{"" if prefix else chr(34)}'.encode() for v in values)


def digits(values: Sequence[int]) -> tuple[bytes, ...]:
    """A number as it appears in JSON whatever the spacing or quoting: its decimal digits."""
    return tuple(str(v).encode() for v in values)
