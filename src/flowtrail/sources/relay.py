"""Hubble Relay as a live source: ``observer.Observer/GetFlows`` over gRPC, as Hubble JSON lines.

Works against Hubble Relay and Retina's Hubble-compatible relay (and a single agent's Hubble
server). The request follows the stream with the server-side allow/deny filters (``whitelist`` /
``blacklist``); TLS and mTLS take the options of ``hubble observe`` (``--tls``,
``--tls-allow-insecure``, ``--tls-ca-cert-files``, ``--tls-client-cert-file``,
``--tls-client-key-file``, ``--tls-server-name``).

Every response becomes one line exactly as ``hubble observe -o json`` prints it (protojson with
proto names, fields in declaration order, enums as names, 64-bit integers as strings, defaults
omitted), so the decoder, filters and detection engine take relay lines and file lines alike.
:func:`response_json` does that conversion with encoders generated from the descriptors;
protobuf's own ``json_format`` gives the same JSON at a third of the speed (measured on simulated
flows: 5.2k against 17k flows per CPU-second, on a busy 2-core machine). Where the C extension
``_wirejson`` is built, responses are received as bytes and written as lines straight from the
wire format (:func:`convert_wire`: 3.8 µs against 15.6 µs per benchmark flow for parsing plus
:func:`response_json`), with the same bytes; whatever it does not reproduce exactly (an ``Any``,
a message field sent twice, invalid UTF-8, ...) takes the Python path.

When the stream breaks (an error, or the server ending a followed stream) the source reconnects
with exponential backoff and jitter and resumes with ``since`` = the last flow time seen minus a
small overlap (the relay's sort buffer may still hold slightly older flows from other nodes).
``since`` is inclusive, so the resumed stream repeats flows already delivered: those are dropped
by uuid (by a hash of the line for flows without one), using a set that holds only the flows of
the overlap window. A reconnect thus neither loses nor repeats what the relay still holds; what
it no longer holds shows up as ``lost_events`` lines and counters.

Reading runs in a thread per source; :meth:`RelaySource.chunks` hands its lines out in batches
(``batch_max_lines`` or ``batch_max_delay_s``, whichever comes first).
"""

from __future__ import annotations

import base64
import functools
import heapq
import logging
import random
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.experimental
import orjson
from google.protobuf import json_format
from google.protobuf import struct_pb2 as _struct_pb2  # noqa: F401  (registers Struct for Any: Retina's extensions)
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError

from flowtrail.model.timeutil import parse_rfc3339_ns, parse_time_arg, protojson_timestamp
from flowtrail.sources.chunk import Chunk
from flowtrail.sources.proto import flow_pb2, observer_pb2, observer_pb2_grpc

log = logging.getLogger("flowtrail.relay")

GET_FLOWS = "/observer.Observer/GetFlows"
_NS = 1_000_000_000
# gRPC's default 4 MiB receive limit is far above one flow (~2 KiB); a relay never sends more per message
_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # GetFlows is unary-stream: reading it on the caller's thread instead of handing each message
    # over from gRPC's polling thread costs ~30% less CPU per flow (measured: 170 -> 120 us)
    (grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1),
]
# Status codes after which retrying the same request cannot help: reported, not retried.
_FATAL = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNIMPLEMENTED}


class RelayError(Exception):
    """A relay source that cannot work as configured (bad option, filter or certificate)."""


# -- protojson ------------------------------------------------------------------------------------


def _ts_ns(ts: Any) -> int:
    return ts.seconds * _NS + ts.nanos


_WRAPPERS = {"google.protobuf.BoolValue", "google.protobuf.Int32Value", "google.protobuf.UInt32Value",
             "google.protobuf.StringValue", "google.protobuf.DoubleValue", "google.protobuf.FloatValue"}
_WRAPPERS_64 = {"google.protobuf.Int64Value", "google.protobuf.UInt64Value"}
_INT64 = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
          FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64}


def _any_json(msg: Any) -> Any:
    # rare (Retina's extensions): json_format resolves the packed type from the descriptor pool
    try:
        return json_format.MessageToDict(msg, preserving_proto_field_name=True)
    except (TypeError, KeyError, json_format.SerializeToJsonError):
        return {"@type": msg.type_url}


def _b64(v: bytes) -> str:
    return base64.b64encode(v).decode()


class _Encoders:
    """One generated Python function per message type, writing protojson's dict of a message.

    Generated rather than driven by ListFields: a straight sequence of attribute reads in
    declaration order (protojson's output order) is ~3x faster than walking ListFields, sorting
    by declaration and dispatching per field, and this runs for every flow of the stream.
    """

    def __init__(self, cached: frozenset[str] = frozenset()) -> None:
        self.ns: dict[str, Any] = {"_ts": protojson_timestamp, "_any": _any_json, "_b64": _b64}
        self.funcs: dict[str, Callable[[Any], dict[str, Any]]] = {}
        # Message types whose dicts are memoised by their wire bytes: endpoints repeat from flow to
        # flow (the same pods talk again and again) and serializing one in C costs a seventh of
        # converting it. The dicts are then shared, so only for output that is not mutated.
        self.cached = cached

    def get(self, desc: Descriptor) -> Callable[[Any], dict[str, Any]]:
        fn = self.funcs.get(desc.full_name)
        if fn is None:
            self._compile(desc)
            fn = self.funcs[desc.full_name]
        return fn

    @staticmethod
    def _fname(desc: Descriptor) -> str:
        return "enc_" + desc.full_name.replace(".", "_")

    def _compile(self, desc: Descriptor) -> None:
        fname = self._fname(desc)
        self.funcs[desc.full_name] = lambda m: self.funcs[desc.full_name](m)  # placeholder for recursion
        body = [f"def {fname}(m):", "    d = {}"]
        for f in desc.fields:
            body += ["    " + line for line in self._field(f)]
        body.append("    return d")
        if desc.full_name in self.cached:
            cache = "C_" + fname
            self.ns[cache] = {}
            body[0] = f"def {fname}_uncached(m):"
            body += [f"def {fname}(m):",
                     "    k = m.SerializeToString()",
                     f"    d = {cache}.get(k)",
                     "    if d is None:",
                     f"        if len({cache}) >= 4096:",
                     f"            {cache}.clear()",
                     f"        d = {cache}[k] = {fname}_uncached(m)",
                     "    return d"]
        code = "\n".join(body)
        exec(compile(code, f"<protojson {desc.full_name}>", "exec"), self.ns)  # generated from our descriptors
        self.funcs[desc.full_name] = self.ns[fname]

    def _value(self, f: FieldDescriptor, x: str) -> str:
        """Expression converting one (non-repeated) value ``x`` of field ``f``."""
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            mt = f.message_type
            if mt.full_name == "google.protobuf.Timestamp":
                return f"_ts({x}.seconds, {x}.nanos)"
            if mt.full_name in _WRAPPERS:
                return f"{x}.value"
            if mt.full_name in _WRAPPERS_64:
                return f"str({x}.value)"
            if mt.full_name == "google.protobuf.Any":
                return f"_any({x})"
            if mt.full_name not in self.funcs:
                self._compile(mt)
            return f"{self._fname(mt)}({x})"
        if f.type == FieldDescriptor.TYPE_ENUM:
            table = "E_" + f.enum_type.full_name.replace(".", "_")
            self.ns[table] = {v.number: v.name for v in f.enum_type.values}
            return f"{table}.get({x}, {x})"  # a number without a name stays a number, as in protojson
        if f.type in _INT64:
            return f"str({x})"
        if f.type == FieldDescriptor.TYPE_BYTES:
            return f"_b64({x})"
        return x

    def _field(self, f: FieldDescriptor) -> list[str]:
        key = repr(f.name)
        if f.is_repeated:
            conv = self._value(f, "x")
            out = "list(v)" if conv == "x" else f"[{conv} for x in v]"
            return [f"v = m.{f.name}", f"if v: d[{key}] = {out}"]
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            # set sub-messages are printed even when empty ("source":{})
            return [f"if m.HasField({key}): d[{key}] = {self._value(f, 'm.' + f.name)}"]
        # proto3 scalars: the zero value is absent (no presence in these protos)
        return [f"v = m.{f.name}", f"if v: d[{key}] = {self._value(f, 'v')}"]


_ENCODERS = _Encoders()
_LINE_ENCODERS = _Encoders(cached=frozenset({"flow.Endpoint"}))


def message_dict(msg: Any) -> dict[str, Any]:
    """``msg`` as protojson's dict: proto names, declaration order, defaults omitted, enums by
    name, 64-bit integers as strings (``protojson.MarshalOptions{UseProtoNames: true}``)."""
    return _ENCODERS.get(msg.DESCRIPTOR)(msg)


_encode_response = _LINE_ENCODERS.get(observer_pb2.GetFlowsResponse.DESCRIPTOR)


def response_json(resp: Any) -> bytes:
    """One GetFlowsResponse as the line ``hubble observe -o json`` prints (without newline)."""
    return orjson.dumps(_encode_response(resp))


# -- wire bytes -> JSON in C (sources/_wirejson.c) ----------------------------------------------------

# the codes of the K_* enum in _wirejson.c (it refuses a table with any other)
_WIRE_KINDS = {
    FieldDescriptor.TYPE_STRING: 1, FieldDescriptor.TYPE_BYTES: 2, FieldDescriptor.TYPE_BOOL: 3,
    FieldDescriptor.TYPE_INT32: 4, FieldDescriptor.TYPE_UINT32: 5, FieldDescriptor.TYPE_INT64: 6,
    FieldDescriptor.TYPE_UINT64: 7, FieldDescriptor.TYPE_ENUM: 8, FieldDescriptor.TYPE_MESSAGE: 9,
}
_WIRE_WELL_KNOWN = {
    "google.protobuf.Timestamp": 10, "google.protobuf.BoolValue": 11, "google.protobuf.Int32Value": 12,
    "google.protobuf.UInt32Value": 13, "google.protobuf.StringValue": 14, "google.protobuf.Int64Value": 15,
    "google.protobuf.UInt64Value": 16, "google.protobuf.Any": 17,
}


def _wire_table(root: Descriptor) -> tuple[list[Any], list[Any]] | None:
    """The descriptors under ``root`` as _wirejson's table (messages, enums), root first; None
    when a field has a type the C converter does not write (then every response takes the Python
    path). Enum names come from the same mapping as the Python encoder's (the last alias wins)."""
    msgs: list[Any] = []
    enums: list[Any] = []
    msg_ids: dict[str, int] = {}
    enum_ids: dict[str, int] = {}

    def add(desc: Descriptor) -> int | None:
        if desc.full_name in msg_ids:
            return msg_ids[desc.full_name]
        msg_ids[desc.full_name] = len(msgs)
        msgs.append(None)
        oneofs = {o.full_name: i for i, o in enumerate(desc.oneofs)}
        fields = []
        for f in desc.fields:
            kind = _WIRE_KINDS.get(f.type)
            child = -1
            if kind is None:
                return None
            if f.type == FieldDescriptor.TYPE_MESSAGE:
                if f.message_type.full_name in _WIRE_WELL_KNOWN:
                    kind = _WIRE_WELL_KNOWN[f.message_type.full_name]
                elif f.message_type.full_name.startswith("google.protobuf.") or f.message_type.GetOptions().map_entry:
                    return None
                else:
                    sub = add(f.message_type)
                    if sub is None:
                        return None
                    child = sub
            elif f.type == FieldDescriptor.TYPE_ENUM:
                et = f.enum_type
                if et.full_name not in enum_ids:
                    enum_ids[et.full_name] = len(enums)
                    enums.append(sorted({v.number: v.name for v in et.values}.items()))
                child = enum_ids[et.full_name]
            if f.is_repeated and kind not in (1, 2) and kind < 9:
                return None  # packed scalars: not in these protos
            oneof = oneofs[f.containing_oneof.full_name] if f.containing_oneof is not None else -1
            fields.append((f.number, f.name, kind, int(f.is_repeated), child, oneof))
        msgs[msg_ids[desc.full_name]] = (len(desc.oneofs), fields)
        return msg_ids[desc.full_name]

    if add(root) is None:
        return None
    return msgs, enums


def _wire_schema() -> tuple[Any, Any] | None:
    """(the _wirejson module, its compiled table for GetFlowsResponse), or None without the C
    extension."""
    try:
        from flowtrail.sources import _wirejson  # type: ignore[attr-defined]
    except ImportError:
        return None
    resp, fl = observer_pb2.GetFlowsResponse.DESCRIPTOR, flow_pb2.Flow.DESCRIPTOR
    table = _wire_table(resp)
    if table is None:
        return None
    fields = resp.fields_by_name
    kinds = resp.oneofs_by_name["response_types"]
    probe = (fields["time"].number, fields["flow"].number, fl.fields_by_name["time"].number,
             fl.fields_by_name["uuid"].number, fields["lost_events"].number,
             flow_pb2.LostEvent.DESCRIPTOR.fields_by_name["num_events_lost"].number, kinds.index)
    return _wirejson, _wirejson.compile(table[0], table[1], 0, probe)


_WIRE = _wire_schema()
# the oneof member numbers of GetFlowsResponse.response_types, by which _wirejson names the kind
_KIND_NAMES = {f.number: f.name for f in observer_pb2.GetFlowsResponse.DESCRIPTOR.oneofs_by_name["response_types"].fields}


def convert_wire(data: bytes) -> tuple[str | None, int, str, int, bytes] | None:
    """A serialized GetFlowsResponse as (kind, time in ns, flow uuid, events lost, JSON line):
    the line is response_json's. None when the C converter is absent or leaves this message to
    the Python path (see _wirejson.c)."""
    if _WIRE is None:
        return None
    got = _WIRE[0].convert(_WIRE[1], data)
    if got is None:
        return None
    number, t_ns, uuid, lost, line = got
    return _KIND_NAMES.get(number), t_ns, uuid, lost, line


# -- JSON -> protobuf (the replay server and filters) -------------------------------------------------


class _Setter:
    __slots__ = ("fields",)

    def __init__(self, desc: Descriptor) -> None:
        # protojson accepts the proto name and the lowerCamelCase JSON name
        self.fields: dict[str, FieldDescriptor] = {}
        for f in desc.fields:
            self.fields[f.name] = f
            self.fields[f.json_name] = f


_SETTERS: dict[str, _Setter] = {}


def _scalar_in(f: FieldDescriptor, v: Any, path: str) -> Any:
    if f.type == FieldDescriptor.TYPE_ENUM:
        if isinstance(v, str):
            ev = f.enum_type.values_by_name.get(v)
            if ev is None:
                raise ValueError(f"{path}: unknown {f.enum_type.name} value {v!r}")
            return ev.number
        return int(v)
    if f.type in _INT64 or f.cpp_type in (FieldDescriptor.CPPTYPE_INT32, FieldDescriptor.CPPTYPE_UINT32):
        if isinstance(v, bool):
            raise ValueError(f"{path}: expected an integer, got {v!r}")
        return int(v)
    if f.type == FieldDescriptor.TYPE_BYTES:
        return base64.b64decode(v)
    return v


def fill_message(msg: Any, obj: Mapping[str, Any], path: str = "") -> Any:
    """Set ``msg`` from a protojson dict (Hubble's JSON); unknown fields are skipped like
    ``hubble observe --input-file`` does on its retry. ValueError names a bad value."""
    desc = msg.DESCRIPTOR
    setter = _SETTERS.get(desc.full_name)
    if setter is None:
        setter = _SETTERS[desc.full_name] = _Setter(desc)
    for key, v in obj.items():
        f = setter.fields.get(key)
        if f is None or v is None:
            continue
        where = f"{path}.{f.name}" if path else f.name
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            mname = f.message_type.full_name
            if f.is_repeated:
                target = getattr(msg, f.name)
                for item in v:
                    fill_message(target.add(), item, where)
            elif mname == "google.protobuf.Timestamp":
                ns = parse_rfc3339_ns(v) if isinstance(v, str) else None
                if ns is None:
                    raise ValueError(f"{where}: not an RFC 3339 timestamp: {v!r}")
                sec, nanos = divmod(ns, _NS)
                ts = getattr(msg, f.name)
                ts.seconds, ts.nanos = sec, nanos
            elif mname in _WRAPPERS or mname in _WRAPPERS_64:
                getattr(msg, f.name).value = _scalar_in(f.message_type.fields_by_name["value"], v, where)
            elif mname == "google.protobuf.Any":
                json_format.ParseDict(v, getattr(msg, f.name), ignore_unknown_fields=True)
            else:
                if not isinstance(v, dict):
                    raise ValueError(f"{where}: expected an object, got {v!r}")
                sub = getattr(msg, f.name)
                sub.SetInParent()  # an empty object is still present ("source":{})
                fill_message(sub, v, where)
        elif f.is_repeated:
            getattr(msg, f.name).extend(_scalar_in(f, x, where) for x in v)
        else:
            setattr(msg, f.name, _scalar_in(f, v, where))
    return msg


def parse_response(line: bytes | str) -> Any:
    """A Hubble JSON line (``{"flow":…}``, ``{"lost_events":…}``…) as a GetFlowsResponse."""
    obj = orjson.loads(line)
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    return fill_message(observer_pb2.GetFlowsResponse(), obj)


def flow_filters(filters: Sequence[Mapping[str, Any]], what: str) -> list[Any]:
    """Hubble FlowFilter dicts (JSON names, as in --allowlist) as protobuf FlowFilters."""
    out = []
    for i, spec in enumerate(filters):
        try:
            out.append(json_format.ParseDict(dict(spec), flow_pb2.FlowFilter()))
        except (json_format.ParseError, TypeError, AttributeError) as exc:
            raise RelayError(f"{what}[{i}]: not a Hubble FlowFilter: {exc}") from None
    return out


# -- the source -------------------------------------------------------------------------------------


@dataclass
class RelayOptions:
    address: str  # host:port, or unix:///path like hubble's --server
    allow: list[dict[str, Any]] = field(default_factory=list)  # FlowFilters sent as whitelist
    deny: list[dict[str, Any]] = field(default_factory=list)  # sent as blacklist
    since: str | None = None  # RFC 3339 or Go duration (like hubble --since); None: follow from now
    tls: bool = False
    tls_allow_insecure: bool = False  # accept any server certificate (hubble's --tls-allow-insecure)
    tls_ca_cert_files: list[str] = field(default_factory=list)
    tls_client_cert_file: str | None = None
    tls_client_key_file: str | None = None
    tls_server_name: str | None = None
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    batch_max_lines: int = 4096
    batch_max_delay_s: float = 0.05
    # resume this much before the last flow time: Hubble Relay orders flows of several nodes through
    # a sort buffer drained every second, so older flows may follow newer ones by up to that much
    resume_overlap_s: float = 1.0
    dedup_max: int = 1_000_000  # bound on the uuids kept for de-duplication


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise RelayError(f"{what} {path}: {exc.strerror or exc}") from None


def _insecure_root(address: str, server_name: str | None) -> tuple[bytes, str]:
    """The certificate the server presents, to be trusted as it is, and a name it holds.

    grpcio cannot skip certificate verification, so --tls-allow-insecure trusts whatever
    certificate the server shows (fetched without verification) and checks the name in it.
    """
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        pem = ssl.get_server_certificate((host, int(port)), timeout=10)
    except ValueError as exc:
        raise RelayError(f"relay {address}: not HOST:PORT: {exc}") from None
    except OSError as exc:  # down or not speaking TLS (yet): retried like any connection failure
        raise ConnectionError(f"relay {address}: cannot fetch its TLS certificate: {exc}") from None
    if server_name:
        return pem.encode(), server_name
    with tempfile.NamedTemporaryFile("w", suffix=".pem") as fh:
        fh.write(pem)
        fh.flush()
        # the stdlib's certificate parser; its public API only parses verified peer certificates
        try:
            info = ssl._ssl._test_decode_cert(fh.name)  # type: ignore[attr-defined]
        except (AttributeError, ssl.SSLError):
            info = {}
    names = [v for k, v in info.get("subjectAltName", ()) if k in ("DNS", "IP Address")]
    names += [v for rdn in info.get("subject", ()) for k, v in rdn if k == "commonName"]
    return pem.encode(), (names[0].strip() if names else host)


def _channel(opts: RelayOptions) -> grpc.Channel:
    # gRPC's own reconnect backoff (1 s growing to 120 s by default) would otherwise overrule ours:
    # while it runs, a channel fails every call at once without trying to connect
    options = [*_CHANNEL_OPTIONS,
               ("grpc.initial_reconnect_backoff_ms", max(1, int(opts.backoff_initial_s * 1000))),
               ("grpc.max_reconnect_backoff_ms", max(1, int(opts.backoff_max_s * 1000)))]
    if not opts.tls:
        if opts.tls_client_cert_file or opts.tls_ca_cert_files or opts.tls_allow_insecure:
            raise RelayError("TLS options given without --tls")
        return grpc.insecure_channel(opts.address, options=options)
    if bool(opts.tls_client_cert_file) != bool(opts.tls_client_key_file):
        raise RelayError("mTLS needs both a client certificate and its key (tls_client_cert_file, tls_client_key_file)")
    roots: bytes | None = None
    if opts.tls_ca_cert_files:
        roots = b"\n".join(_read(p, "TLS CA certificate") for p in opts.tls_ca_cert_files)
    name = opts.tls_server_name
    if opts.tls_allow_insecure:
        roots, name = _insecure_root(opts.address, opts.tls_server_name)
    key = _read(opts.tls_client_key_file, "TLS client key") if opts.tls_client_key_file else None
    cert = _read(opts.tls_client_cert_file, "TLS client certificate") if opts.tls_client_cert_file else None
    creds = grpc.ssl_channel_credentials(root_certificates=roots, private_key=key, certificate_chain=cert)
    if name:
        options.append(("grpc.ssl_target_name_override", name))
    return grpc.secure_channel(opts.address, creds, options=options)


class _Dedup:
    """What a resumed stream may send again: the flows delivered within ``window_ns`` of the
    newest flow time, as a multiset of keys (uuid, or a hash of the line for flows without one).

    Only flows of a stream's *replay zone* (not newer than the newest flow delivered before the
    stream began) can be repeats; each such key is dropped as often as it was delivered, so even
    two identical uuid-less flows are neither merged nor repeated.
    """

    def __init__(self, window_ns: int, max_keys: int) -> None:
        self.window_ns = window_ns
        self.max_keys = max_keys
        self.counts: dict[Any, int] = {}
        self.heap: list[tuple[int, int, Any]] = []
        self.newest = -(1 << 62)
        self.zone_end = -(1 << 62)  # no replay zone before the first reconnect
        self.matched: dict[Any, int] = {}
        self._seq = 0  # heap tie-break: keys of different types do not compare

    def new_stream(self) -> None:
        self.zone_end = self.newest
        self.matched = {}

    def seen(self, key: Any, t_ns: int) -> bool:
        """True when this is a repeat of a delivered flow; otherwise record it."""
        if t_ns <= self.zone_end:
            m = self.matched.get(key, 0)
            if m < self.counts.get(key, 0):
                self.matched[key] = m + 1
                return True
        if t_ns > self.newest:
            self.newest = t_ns
            self._evict(t_ns - self.window_ns)
        if t_ns >= self.newest - self.window_ns:
            if len(self.heap) >= self.max_keys:
                self._pop()
            self.counts[key] = self.counts.get(key, 0) + 1
            self._seq += 1
            heapq.heappush(self.heap, (t_ns, self._seq, key))
        return False

    def _evict(self, cutoff: int) -> None:
        while self.heap and self.heap[0][0] < cutoff:
            self._pop()

    def _pop(self) -> None:
        key = heapq.heappop(self.heap)[2]
        n = self.counts[key] - 1
        if n:
            self.counts[key] = n
        else:
            del self.counts[key]


class RelaySource:
    """Follows a Hubble Relay's GetFlows stream; see the module docstring."""

    def __init__(self, opts: RelayOptions, state_file: str | Path | None = None) -> None:
        """`state_file`: where the position of the flows the monitor has processed is kept (the
        newest flow time and the uuids at its end), so that a restart resumes there, neither
        losing nor repeating what the relay still holds; an explicit `since` wins over it."""
        self.opts = opts
        self.state_file = Path(state_file) if state_file else None
        self.name = f"relay:{opts.address}"
        if opts.batch_max_lines < 1 or opts.batch_max_delay_s < 0:
            raise RelayError("batch_max_lines must be >= 1 and batch_max_delay_s >= 0")
        if opts.backoff_initial_s <= 0 or opts.backoff_max_s < opts.backoff_initial_s:
            raise RelayError("backoff: need 0 < backoff_initial_s <= backoff_max_s")
        self._whitelist = flow_filters(opts.allow, "allow")
        self._blacklist = flow_filters(opts.deny, "deny")
        self._since_ns: int | None = None
        if opts.since:
            try:
                self._since_ns = parse_time_arg(opts.since)
            except ValueError as exc:
                raise RelayError(f"since: {exc}") from None
        if opts.tls:  # files are read now, so that a wrong path is an error at start, not a retry loop
            for p in opts.tls_ca_cert_files:
                _read(p, "TLS CA certificate")
        self.stats: dict[str, Any] = {
            "flows": 0,  # flow lines delivered
            "lost_events": 0,  # events the server reported lost (sum of num_events_lost)
            "lost_event_messages": 0,  # lost_events lines delivered
            "node_status": 0,  # node status messages (not flows: counted, skipped)
            "other_events": 0,  # responses with no known payload (skipped)
            "reconnects": 0,  # streams opened again after a failure
            "duplicates_dropped": 0,  # repeated by a resumed stream and dropped
            "errors": 0,  # stream failures and unconvertible responses
            "connected": False,
            "last_flow_time_ns": 0,
            "last_error": "",
        }
        self._cond = threading.Condition()
        self._buf: list[bytes] = []
        self._first_ns = 0  # monotonic arrival of _buf[0]
        self._line_no = 0
        self._fatal: BaseException | None = None
        self._call: Any = None
        self._halt = threading.Event()
        self._dedup = _Dedup(int(opts.resume_overlap_s * _NS), opts.dedup_max)
        self._newest_ns: int | None = None  # newest event time delivered: the resume point
        self._connect_wall_ns: int | None = None
        self._meta: list[tuple[int, str]] = []  # (time, uuid) of each line in _buf
        self._done_ns = 0  # newest flow time the monitor has processed (committed)
        self._done_keys: dict[str, int] = {}  # uuids processed within the overlap window of _done_ns
        self._saved_at = 0.0
        if self.state_file is not None and self._since_ns is None:
            self._restore()

    # -- consumer side ----------------------------------------------------------------------------

    def chunks(self, stop: threading.Event) -> Iterator[Chunk]:
        """Batches of Hubble JSON lines, as they arrive, until ``stop`` is set; raises RelayError
        when the relay rejects the request (bad filter, no GetFlows) or the TLS setup is wrong."""
        self._halt.clear()
        reader = threading.Thread(target=self._read_loop, name=f"{self.name}:reader", daemon=True)
        reader.start()
        max_lines = self.opts.batch_max_lines
        delay_ns = int(self.opts.batch_max_delay_s * _NS)
        try:
            while True:
                with self._cond:
                    while not self._buf and self._fatal is None and not stop.is_set():
                        self._cond.wait(0.1)
                    if stop.is_set():
                        return
                    if not self._buf and self._fatal is not None:
                        raise self._fatal
                    # wait until the batch is full or its first line is batch_max_delay_s old
                    while len(self._buf) < max_lines and not stop.is_set() and self._fatal is None:
                        left = self._first_ns + delay_ns - time.monotonic_ns()
                        if left <= 0:
                            break
                        self._cond.wait(min(left / _NS, 0.1))
                    lines = self._buf[:max_lines]
                    del self._buf[:max_lines]
                    meta = self._meta[:max_lines]
                    del self._meta[:max_lines]
                    received = self._first_ns
                    self._first_ns = time.monotonic_ns()  # the rest arrived by now at the latest
                    self._cond.notify_all()  # the reader may wait for room
                first = self._line_no + 1
                self._line_no += len(lines)
                yield Chunk(data=b"\n".join(lines) + b"\n", source=self.name, first_line=first,
                            received_ns=received, lines=len(lines),
                            commit=functools.partial(self._commit, meta) if self.state_file is not None else None)
        finally:
            self._halt.set()
            call = self._call
            if call is not None:
                call.cancel()
            with self._cond:
                self._cond.notify_all()
            reader.join(timeout=5)

    # -- reader thread ----------------------------------------------------------------------------

    def _request(self) -> Any:
        since = self._since_ns
        if self._newest_ns is not None:
            since = self._newest_ns - int(self.opts.resume_overlap_s * _NS)
        elif since is None and self._connect_wall_ns is not None:
            # no flow yet: resume from when the first stream started, not from "now"
            since = self._connect_wall_ns - int(self.opts.resume_overlap_s * _NS)
        req = observer_pb2.GetFlowsRequest(follow=True, whitelist=self._whitelist, blacklist=self._blacklist)
        if since is not None:
            sec, nanos = divmod(since, _NS)
            req.since.seconds, req.since.nanos = sec, nanos
        return req

    def _read_loop(self) -> None:
        attempt = 0
        channel: grpc.Channel | None = None
        try:
            while not self._halt.is_set():
                if self._connect_wall_ns is None:
                    self._connect_wall_ns = time.time_ns()
                try:
                    if channel is None:
                        channel = _channel(self.opts)
                        channel.subscribe(self._on_state, try_to_connect=True)
                    self._dedup.new_stream()
                    deliver: Callable[[Any], bool]
                    if _WIRE is not None:
                        # responses as bytes, written as lines in C; the Python path is the fallback
                        get = channel.unary_stream(GET_FLOWS,
                                                   request_serializer=observer_pb2.GetFlowsRequest.SerializeToString,
                                                   response_deserializer=None)
                        deliver = self._deliver_wire
                    else:
                        get = observer_pb2_grpc.ObserverStub(channel).GetFlows
                        deliver = self._deliver
                    self._call = call = get(self._request(), wait_for_ready=False)
                    if self._halt.is_set():  # chunks() may have cancelled the previous call just now
                        call.cancel()
                        break
                    for resp in call:
                        if deliver(resp):
                            attempt = 0  # a flow came through: the connection works
                        if self._halt.is_set():
                            break
                    if self._halt.is_set():
                        break
                    reason = "the server ended the stream"
                except grpc.RpcError as exc:
                    if self._halt.is_set():
                        break
                    code = exc.code() if hasattr(exc, "code") else None
                    reason = f"{code.name if code else 'error'}: {exc.details() if hasattr(exc, 'details') else exc}"
                    if code in _FATAL:
                        raise RelayError(f"relay {self.opts.address} rejected GetFlows: {reason}") from None
                except ConnectionError as exc:  # --tls-allow-insecure could not fetch the certificate yet
                    reason = str(exc)
                self.stats["connected"] = False
                self.stats["errors"] += 1
                self.stats["last_error"] = reason
                delay = min(self.opts.backoff_max_s, self.opts.backoff_initial_s * 2 ** attempt)
                delay *= random.uniform(0.5, 1.0)  # jitter: many monitors must not reconnect in step
                attempt = min(attempt + 1, 30)
                log.warning("relay %s: %s; reconnecting in %.1fs", self.opts.address, reason, delay)
                if self._halt.wait(delay):
                    break
                self.stats["reconnects"] += 1
        except RelayError as exc:
            log.error("%s", exc)
            self._fatal = exc
        except Exception as exc:  # a bug must stop the source loudly, not hang the monitor
            log.exception("relay %s: reader failed", self.opts.address)
            self._fatal = RelayError(f"relay {self.opts.address}: {exc}")
        finally:
            self.stats["connected"] = False
            if channel is not None:
                channel.close()
            with self._cond:
                self._cond.notify_all()

    def _on_state(self, state: grpc.ChannelConnectivity) -> None:
        up = state == grpc.ChannelConnectivity.READY
        if up and not self.stats["connected"]:
            log.info("relay %s: connected", self.opts.address)
        self.stats["connected"] = up

    def _deliver_wire(self, data: bytes) -> bool:
        """:meth:`_deliver` for a serialized response: converted in C, or parsed and converted
        in Python where the C converter leaves it (then a message protobuf cannot parse is
        counted and skipped, and the stream goes on)."""
        got = convert_wire(data)
        if got is None:
            try:
                resp = observer_pb2.GetFlowsResponse.FromString(data)
            except DecodeError as exc:
                self.stats["errors"] += 1
                self.stats["last_error"] = f"undecodable response: {exc}"
                log.warning("relay %s: skipped an undecodable response (%d bytes): %s", self.opts.address,
                            len(data), exc)
                return False
            return self._deliver(resp)
        kind, t_ns, uuid, lost, line = got
        if self._set_aside(kind):
            return False
        assert kind is not None
        return self._accept(kind, t_ns, line, uuid, lost)

    def _set_aside(self, kind: str | None) -> bool:
        """Count a response that is no line (node status, or no known payload); True for those."""
        if kind == "node_status":
            self.stats["node_status"] += 1
            return True
        if kind is None:
            self.stats["other_events"] += 1
            return True
        return False

    def _deliver(self, resp: Any) -> bool:
        """Convert one response and queue its line; True when it was a new flow.

        Runs once per response: gRPC hands messages over one at a time, and each must become
        its own JSON line, so this per-flow Python is the conversion itself.
        """
        kind = resp.WhichOneof("response_types")
        if self._set_aside(kind):
            return False
        t_ns = _ts_ns(resp.time) if resp.HasField("time") else (
            _ts_ns(resp.flow.time) if kind == "flow" else 0)
        try:
            line = response_json(resp)
        except Exception as exc:  # a message this converter cannot write must not end the stream
            self.stats["errors"] += 1
            self.stats["last_error"] = f"unconvertible {kind} response: {exc}"
            log.warning("relay %s: skipped an unconvertible %s response: %s", self.opts.address, kind, exc)
            return False
        return self._accept(kind, t_ns, line, resp.flow.uuid if kind == "flow" else "",
                            resp.lost_events.num_events_lost)

    def _accept(self, kind: str, t_ns: int, line: bytes, uuid: str, lost: int) -> bool:
        """Queue one converted response unless a resumed stream repeats it; True for a new flow."""
        key: Any = uuid if kind == "flow" else None
        if self._dedup.seen(key or hash(line), t_ns):
            self.stats["duplicates_dropped"] += 1
            return False
        if self._newest_ns is None or t_ns > self._newest_ns:
            self._newest_ns = t_ns
        if not self.stats["connected"]:
            self.stats["connected"] = True
        if kind == "flow":
            self.stats["flows"] += 1
            self.stats["last_flow_time_ns"] = max(self.stats["last_flow_time_ns"], t_ns)
        else:
            self.stats["lost_event_messages"] += 1
            self.stats["lost_events"] += lost
        cap = 4 * self.opts.batch_max_lines
        with self._cond:
            # bounded: a slow consumer stops the reading, and gRPC flow control the relay
            while len(self._buf) >= cap and not self._halt.is_set():
                self._cond.wait(0.1)
            if not self._buf:
                self._first_ns = time.monotonic_ns()
            self._buf.append(line)
            self._meta.append((t_ns, uuid if kind == "flow" else ""))
            if len(self._buf) == 1 or len(self._buf) >= self.opts.batch_max_lines:
                self._cond.notify_all()
        return kind == "flow"


    # -- position across restarts ----------------------------------------------------------------

    def _commit(self, meta: list[tuple[int, str]]) -> None:
        """Everything derived from these lines reached the sinks: they are behind the resume point."""
        window = int(self.opts.resume_overlap_s * _NS)
        for t, key in meta:  # per line: the relay path is per message anyway (see _deliver)
            if t > self._done_ns:
                self._done_ns = t
            if key and t >= self._done_ns - window:
                self._done_keys[key] = t
        if len(self._done_keys) > 2 * max(1, len(meta)) + 10_000:
            cut = self._done_ns - window
            self._done_keys = {k: t for k, t in self._done_keys.items() if t >= cut}
        if time.monotonic() - self._saved_at >= 1.0:
            self.save()

    def save(self) -> None:
        if self.state_file is None or not self._done_ns:
            return
        cut = self._done_ns - int(self.opts.resume_overlap_s * _NS)
        state = {"address": self.opts.address, "newest_ns": self._done_ns,
                 "uuids": {k: t for k, t in self._done_keys.items() if t >= cut}}
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        tmp.write_bytes(orjson.dumps(state))
        tmp.replace(self.state_file)
        self._saved_at = time.monotonic()

    def close(self) -> None:
        """Save the position (called by the monitor after the last batch was processed)."""
        self.save()

    def _restore(self) -> None:
        assert self.state_file is not None
        try:
            state = orjson.loads(self.state_file.read_bytes())
            newest = int(state["newest_ns"])
            uuids = {str(k): int(t) for k, t in dict(state.get("uuids", {})).items()}
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
            log.warning("relay %s: ignoring unreadable position file %s: %s", self.opts.address, self.state_file, exc)
            return
        # the first stream asks from just before the saved point and drops what was processed
        self._newest_ns = newest
        for key, t in sorted(uuids.items(), key=lambda kv: kv[1]):
            self._dedup.seen(key, t)
        self._dedup.seen(("position", newest), newest)  # the replay zone ends at the saved point
        self._done_ns, self._done_keys = newest, dict(uuids)
        log.info("relay %s: resuming after %s", self.opts.address, protojson_timestamp(*divmod(newest, _NS)))


def server_status(address: str, opts: RelayOptions | None = None, timeout_s: float = 5.0) -> dict[str, Any]:
    """Observer.ServerStatus of a relay as protojson's dict (a connectivity check)."""
    o = opts or RelayOptions(address=address)
    channel = _channel(o)
    try:
        resp = observer_pb2_grpc.ObserverStub(channel).ServerStatus(observer_pb2.ServerStatusRequest(),
                                                                    timeout=timeout_s)
        return message_dict(resp)
    finally:
        channel.close()


__all__ = ["GET_FLOWS", "RelayError", "RelayOptions", "RelaySource", "fill_message", "flow_filters",
           "message_dict", "parse_response", "response_json", "server_status"]
