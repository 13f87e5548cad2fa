"""Arrow ↔ numpy conversions the columnar stages share."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from flowtrail.util import compute as pc


def one_array(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    """A column as one Array: a single chunk as it is (combine_chunks copies even then: ~12 ms
    for the flow struct of a 65k-row batch), several combined."""
    if not isinstance(arr, pa.ChunkedArray):
        return arr
    return arr.chunk(0) if arr.num_chunks == 1 else arr.combine_chunks()


def bool_mask(arr: pa.Array | pa.ChunkedArray, null: bool = False) -> np.ndarray:
    """A boolean Arrow column as a numpy mask, nulls read as ``null``."""
    return np.asarray(pc.fill_null(arr, null).to_numpy(zero_copy_only=False), dtype=bool)


def string_bytes(arr: pa.Array) -> tuple[np.ndarray, np.ndarray] | None:
    """A (large) string array's value offsets (int64, one more than values) and its bytes, read
    in place; None for other types. For byte-level tests over many short strings, where a
    compute kernel per test would cost more than the test."""
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        return None
    bufs = arr.buffers()
    wide = pa.types.is_large_string(arr.type)
    raw = np.frombuffer(bufs[1], np.int64 if wide else np.int32)[arr.offset:arr.offset + len(arr) + 1]
    data = np.frombuffer(bufs[2], np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    return raw.astype(np.int64), data


def list_parents(lists: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """The flattened elements of a list column and, per element, the row it belongs to."""
    flat = pc.list_flatten(lists)
    parents = np.asarray(pc.list_parent_indices(lists).to_numpy(zero_copy_only=False), dtype=np.int64)
    return flat, parents


def _first_positions(lists: pa.Array) -> tuple[pa.Array, pa.Array] | None:
    """For a (large) list array: its values child and, per row, the position of the row's first
    element in it (null for null or empty lists), read from the offsets. None for other layouts."""
    if not isinstance(lists, (pa.ListArray, pa.LargeListArray)):
        return None
    offsets = np.asarray(lists.offsets.to_numpy(zero_copy_only=False), dtype=np.int64)
    none = offsets[1:] == offsets[:-1]
    if lists.null_count:
        none |= ~np.asarray(lists.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    return lists.values, pa.array(offsets[:-1], mask=none)


def first_item(lists: pa.Array, n: int, field: str | None = None) -> pa.Array:
    """First element of each list (its ``field``, for a list of messages); null for null or
    empty lists. Only that field is taken, not the whole elements."""
    found = _first_positions(lists)
    if found is not None:
        values, at = found
        return pc.take(values if field is None else pc.struct_field(values, field), at)
    flat, parents = list_parents(lists)
    if field is not None:
        flat = pc.struct_field(flat, field)
    if len(flat) == 0:
        return pa.nulls(n, flat.type)
    # parents are in row order: a row's first element is where its parent changes
    starts = np.flatnonzero(np.concatenate(([True], parents[1:] != parents[:-1])))
    idx = np.full(n, -1, dtype=np.int64)
    idx[parents[starts]] = starts
    return pc.take(flat, pa.array(idx, mask=idx < 0))
