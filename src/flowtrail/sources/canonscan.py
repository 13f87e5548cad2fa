"""Which flow lines are in Hubble's own spelling, and their projected columns: one pass of a C
scanner guided by flow.proto.

The scanner (``_canonscan.c``) walks each line as JSON, looking every key up in the message it
belongs to and checking every value against what protojson writes for that field (see the C file
for the rules). It answers "canonical" only when the line would be re-printed by ``hubble observe
-o json`` as it is, up to key order, and is valid JSON; every other line takes the exact path.
For the canonical lines it can also hand over the values of the fields a decoder projects, from
which :class:`Extractor` builds the same Arrow table Arrow's JSON reader would.

It is built with the package (a C compiler and Python's headers are needed); without it,
:mod:`.canonical` (an RE2 pattern run by Arrow) and Arrow's JSON reader do the same job in two
slower passes. :data:`AVAILABLE` says which is in use.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from flowtrail.model import enums
from flowtrail.model.schema import ENVELOPE, OTHER_EVENT_KEYS, Message, Repeated, Scalar, Spec

try:
    from flowtrail.sources import _canonscan
except ImportError:  # built without a C compiler: the RE2 + Arrow checks are used instead
    _canonscan = None  # type: ignore[assignment]

# FLOWTRAIL_NO_C_SCANNER=1 selects the Arrow checks (to compare them, or to rule the scanner out)
AVAILABLE = _canonscan is not None and not os.environ.get("FLOWTRAIL_NO_C_SCANNER")

_KINDS = {"str": 1, "u32": 2, "i32": 3, "u64": 4, "i64": 5, "bool": 6, "enum": 8, "ts": 9, "any": 11}
_BOOLVALUE, _MSG, _REJECT, _REPEATED = 7, 10, 12, 0x100
_ENUM_OWNER = 0x80000000
_SLOT = struct.Struct("<7Ii")


@dataclass
class _Node:
    """An output column (or part of one): what the scanner's records for it mean."""

    kind: str  # "str", "int", "bool", "struct", "list"
    type: pa.DataType
    children: list[tuple[str, int]] = field(default_factory=list)  # struct: (name, node)
    item: int = -1  # list: the node of its items (a scalar node, or a struct node of the item's fields)


class _Layout:
    """The scanner's table for one projection: every field of the envelope tree by (message,
    name), the projected ones with their output node."""

    def __init__(self) -> None:
        self.entries: list[tuple[int, bytes, int, int, int, int]] = []  # owner, name, kind, child, index, node
        self.messages = 0
        self.enum_tables = 0
        self.nodes: list[_Node] = []

    def node(self, n: _Node) -> int:
        self.nodes.append(n)
        return len(self.nodes) - 1

    def message(self, spec: Message, path: str, out: pa.StructType | None) -> tuple[int, list[tuple[str, int]]]:
        """The message's id, and the (name, node) of its projected fields (``out`` lists them)."""
        mid = self.messages
        self.messages += 1
        if len(spec) > 64:
            raise ValueError(f"{path or 'envelope'}: more than 64 fields")
        wanted = {f.name: f.type for f in out} if out is not None else {}
        projected: list[tuple[str, int]] = []
        for index, (key, sub) in enumerate(spec.items()):
            sub_path = f"{path}.{key}" if path else key
            kind, child, node = self.field(key, sub, sub_path, wanted.get(key))
            self.entries.append((mid, key.encode(), kind, child, index, node))
            if node >= 0:
                projected.append((key, node))
        if out is not None:
            order = [f.name for f in out]
            missing = set(order) - {k for k, _ in projected}
            if missing:
                raise ValueError(f"{path}: cannot project {sorted(missing)}")
            projected.sort(key=lambda kv: order.index(kv[0]))
        return mid, projected

    def field(self, key: str, spec: Spec, path: str, out: pa.DataType | None) -> tuple[int, int, int]:
        """(kind, child, node) of a field; node -1 when ``out`` (its Arrow type) is None."""
        if isinstance(spec, Repeated):
            if out is None:
                kind, child, _ = self.field(key, spec.item, path, None)
                return kind | _REPEATED, child, -1
            assert pa.types.is_list(out)
            node = self.node(_Node("list", out))
            kind, child, item = self.field(key, spec.item, path, out.value_type)
            self.nodes[node].item = item
            if not isinstance(spec.item, dict) and item != node + 1:
                raise AssertionError("a list of scalars keeps its values in the next node")
            return kind | _REPEATED, child, node
        if isinstance(spec, dict):
            node = self.node(_Node("struct", out)) if out is not None else -1
            mid, projected = self.message(spec, path, out)
            if node >= 0:
                self.nodes[node].children = projected
            return _MSG, mid, node
        assert isinstance(spec, Scalar)
        node = -1
        if out is not None:
            what = "bool" if pa.types.is_boolean(out) else "int" if pa.types.is_integer(out) else "str"
            node = self.node(_Node(what, out))
        if key == "is_reply":
            return _BOOLVALUE, 0, node  # a BoolValue: false is set, and printed
        if spec.kind == "enum":
            table = enums.ENUM_FIELDS.get(path.removeprefix("flow."))
            if table is None:
                return _REJECT, 0, node
            eid = self.enum_tables
            self.enum_tables += 1
            for name, value in table.items():
                if value:  # protojson omits the zero value
                    self.entries.append((_ENUM_OWNER | eid, name.encode(), 0, 0, 0, -1))
            return _KINDS["enum"], eid, node
        return _KINDS[spec.kind], 0, node


@dataclass
class _Table:
    slots: bytes
    names: bytes
    root: int
    nodes: list[_Node]
    columns: list[tuple[str, int]]  # envelope columns the scanner fills: (name, node)


def _build(schema: pa.Schema | None) -> _Table:
    """The scanner's table; with ``schema`` (an envelope schema of the decoder) the nodes that
    produce its columns."""
    assert _canonscan is not None
    lay = _Layout()
    spec: Message = {k: v for k, v in ENVELOPE.items() if k != "lost_events"}
    out = None
    if schema is not None:
        out = pa.struct([f for f in schema if f.name != "lost_events"])
    root, columns = lay.message(spec, "", out)
    # keys that make a line something else than a flow event: the exact path handles them
    for i, key in enumerate(("lost_events", *OTHER_EVENT_KEYS), start=len(ENVELOPE)):
        lay.entries.append((root, key.encode(), _REJECT, 0, i, -1))
    size = 1
    while size < 2 * len(lay.entries):
        size *= 2
    slots: list[tuple[int, ...] | None] = [None] * size
    names = bytearray()
    for owner, name, kind, child, index, node in lay.entries:
        h = _canonscan.slot_hash(name, owner)
        i = h & (size - 1)
        while slots[i] is not None:
            i = (i + 1) & (size - 1)
        slots[i] = (h, owner + 1, kind, child, len(names), len(name), index, node)
        names += name
    packed = b"".join(_SLOT.pack(*(s or (0,) * 7 + (-1,))) for s in slots)
    return _Table(packed, bytes(names), root, lay.nodes, columns)


_CHECK_TABLE: _Table | None = None


def _offsets(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.ascontiguousarray(starts, np.int64), np.ascontiguousarray(ends, np.int64)


def noncanonical(data: Any, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """A boolean per line [starts[i], ends[i]) of ``data``: True where it is not a flow event in
    Hubble's own compact spelling (or not valid JSON)."""
    global _CHECK_TABLE
    if _canonscan is None:
        raise RuntimeError("flowtrail was built without its C scanner")
    if _CHECK_TABLE is None:
        _CHECK_TABLE = _build(None)
    t = _CHECK_TABLE
    out = np.empty(len(starts), np.uint8)
    s, e = _offsets(starts, ends)
    _canonscan.extract(t.slots, t.names, t.root, 0, data, s, e, out)  # no output nodes: only the check
    return out.view(bool)


def index_lines(data: Any, max_line: int, prefix: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(starts, ends, flags) of the lines of ``data``: int64 offsets without the terminator, and
    per line bit 1 "plain" (a '{'...'}' object of at most ``max_line`` bytes with no control or
    non-ASCII byte) and bit 2 "plain and starting with ``prefix``"."""
    assert _canonscan is not None
    starts, ends, flags = _canonscan.index(data, max_line, prefix)
    return np.frombuffer(starts, np.int64), np.frombuffer(ends, np.int64), np.frombuffer(flags, np.uint8)


class Extractor:
    """The canonical lines of a block as a table of ``schema`` (a decoder's projected envelope
    schema), equal to what Arrow's JSON reader makes of them."""

    def __init__(self, schema: pa.Schema) -> None:
        if _canonscan is None:
            raise RuntimeError("flowtrail was built without its C scanner")
        self.schema = schema
        self._t = _build(schema)

    def extract(self, data: Any, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, pa.Table]:
        """(noncanonical, table): a boolean per line as :func:`noncanonical` gives, and the table
        of the other lines, in order."""
        assert _canonscan is not None
        t = self._t
        bad = np.empty(len(starts), np.uint8)
        s, e = _offsets(starts, ends)
        recs = _canonscan.extract(t.slots, t.names, t.root, len(t.nodes), data, s, e, bad)
        rows = len(starts) - int(bad.sum())
        build = _Builder(data, t.nodes, recs)
        by_name = dict(t.columns)
        arrays = [build.array(by_name[f.name], rows) if f.name in by_name else pa.nulls(rows, f.type)
                  for f in self.schema]
        return bad.view(bool), pa.Table.from_arrays(arrays, schema=self.schema)


# one value of a node (rec_t in the C file): a, the instance, b (a string's length)
_RECORD = np.dtype([("a", "<i8"), ("inst", "<i4"), ("b", "<u4")])


class _Builder:
    def __init__(self, data: Any, nodes: list[_Node], recs: list[tuple[bytes, bytes]]) -> None:
        self.data = data
        self.nodes = nodes
        self.recs = recs

    def records(self, node: int) -> np.ndarray:
        return np.frombuffer(self.recs[node][0], _RECORD)

    def array(self, node: int, n: int, all_valid: bool = False) -> pa.Array:
        """Node ``node`` as an array of ``n`` instances (rows, or items of the enclosing list)."""
        spec = self.nodes[node]
        rec = self.records(node)
        inst = rec["inst"]
        valid: np.ndarray | None = None
        if not all_valid:
            valid = np.zeros(n, bool)
            valid[inst] = True
        # a validity bitmap made here: Arrow's from_arrays(mask=) inverts a mask with
        # pyarrow.compute, whose import costs every command's start-up ~70 ms (util.compute)
        validity = None if valid is None or len(inst) == n else pa.py_buffer(np.packbits(valid, bitorder="little"))
        if spec.kind == "struct":
            children = [self.array(child, n) for _, child in spec.children]
            return pa.Array.from_buffers(spec.type, n, [validity], null_count=0 if validity is None else n - len(inst),
                                         children=children)
        if spec.kind == "list":
            counts = np.zeros(n, np.int64)
            counts[inst] = rec["a"]
            offsets = np.zeros(n + 1, np.int32)
            np.cumsum(counts, out=offsets[1:])
            items = int(offsets[-1])
            values = self.array(spec.item, items, all_valid=True)
            return pa.Array.from_buffers(spec.type, n, [validity, pa.py_buffer(offsets)],
                                         null_count=0 if validity is None else n - len(inst), children=[values])
        if spec.kind == "str":
            # the values follow each other in the node's bytes: record i starts at its offset
            blob = self.recs[node][1]
            if len(blob) > np.iinfo(np.int32).max:
                raise OverflowError("string values of one block over 2 GiB")
            if len(inst) == n:
                offs = np.empty(n + 1, np.int32)
                offs[:-1] = rec["a"]
                offs[-1] = len(blob)
                return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offs), pa.py_buffer(blob)])
            lengths = np.zeros(n, np.int32)
            lengths[inst] = rec["b"]
            dense = np.zeros(n + 1, np.int32)
            np.cumsum(lengths, out=dense[1:])
            assert valid is not None
            bitmap = np.packbits(valid, bitorder="little")
            return pa.Array.from_buffers(pa.string(), n, [pa.py_buffer(bitmap), pa.py_buffer(dense), pa.py_buffer(blob)],
                                         null_count=n - len(inst))
        values = np.zeros(n, np.int64)
        values[inst] = rec["a"]
        if spec.kind == "bool":
            return pa.array(values.astype(bool), pa.bool_(), mask=None if valid is None else ~valid)
        return pa.array(values, spec.type, mask=None if valid is None else ~valid)


def gather_lines(data: Any, starts: np.ndarray, ends: np.ndarray) -> bytes:
    """Spans [starts[i], ends[i]) of ``data``, each followed by a newline, as one bytes object."""
    starts = np.ascontiguousarray(starts, np.int64)
    ends = np.ascontiguousarray(ends, np.int64)
    if _canonscan is not None:
        return _canonscan.gather(data, starts, ends)
    view = memoryview(data)
    return b"".join([bytes(view[a:b]) + b"\n" for a, b in zip(starts.tolist(), ends.tolist(), strict=True)])


def count_newlines(data: Any) -> int:
    """Newline bytes in ``data`` (bytes, bytearray or a memoryview): the C scanner's count (~10x
    bytes.count here, without holding the GIL) where it is built."""
    if _canonscan is not None:
        return _canonscan.newlines(data)
    return bytes(data).count(b"\n") if isinstance(data, memoryview) else data.count(b"\n")
