"""A Hubble Relay stand-in: an ``observer.Observer`` gRPC server replaying recorded flows.

It serves ``GetFlows`` and ``ServerStatus`` from a file of Hubble JSON lines (``hubble observe -o
json`` output or an exporter ``events.log``), with the request semantics of a Hubble server:

* ``since``/``until`` bound the event time (inclusive, compared with the line's top-level
  ``time``); ``number`` takes the last N (the first N with ``first``); without ``since`` and
  ``number`` a followed stream starts at the end, like ``hubble observe -f``;
* ``whitelist``/``blacklist`` FlowFilters are applied with :class:`flowtrail.filters.FilterSet`
  over the decoded file (Hubble's exact semantics); lost events always pass;
* ``follow`` keeps the stream open after the replay and, with ``tail``, streams the lines
  appended to the file afterwards.

For testing clients it can also cut streams (``cut_after``: abort with UNAVAILABLE after N
responses, on the first stream only or on every stream), inject ``lost_events`` responses at
fixed places of the file (so that a resumed stream repeats them exactly), announce the nodes
with ``node_status`` messages like a relay does, and serve TLS or mTLS.

Responses are serialized once, when a line is read, and sent as bytes.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import orjson

from flowtrail.filters import FilterError, FilterSet
from flowtrail.sources.decode import Decoder
from flowtrail.sources.proto import flow_pb2, observer_pb2
from flowtrail.sources.relay import message_dict, parse_response, response_json

log = logging.getLogger("flowtrail.relay_server")

_NS = 1_000_000_000
_KIND_FLOW, _KIND_LOST = 1, 3


class ReplayLog:
    """The events of a Hubble JSON-lines file, parsed once: per event its JSON line, serialized
    GetFlowsResponse, time and kind. ``refresh()`` reads lines appended to the file since."""

    def __init__(self, path: str | os.PathLike[str], lost_every: int = 0, lost_num: int = 1) -> None:
        self.path = Path(path)
        self.lost_every = lost_every  # a lost_events response after every N-th flow of the file
        self.lost_num = lost_num
        self.lines: list[bytes] = []
        self.payloads: list[bytes] = []
        self._times: list[int] = []
        self._kinds: list[int] = []
        self.times = np.zeros(0, np.int64)
        self.kinds = np.zeros(0, np.int8)
        self.errors: list[str] = []  # "line N: why" for lines skipped
        self.skipped = 0  # lines that are not flows or lost events (agent/debug events, blank)
        self.nodes: list[str] = []
        self._flows = 0
        self._offset = 0
        self._line_no = 0
        self._lock = threading.Lock()
        self.changed = threading.Condition(self._lock)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such file")
        self.refresh(eof=True)

    def __len__(self) -> int:
        return len(self.payloads)

    @property
    def flows(self) -> int:
        return self._flows

    def refresh(self, eof: bool = False) -> int:
        """Read the complete lines appended since the last call (with ``eof``, also a last line
        without newline); returns how many events came."""
        with self.path.open("rb") as fh:
            fh.seek(self._offset)
            data = fh.read()
        if eof and data and not data.endswith(b"\n"):
            data += b"\n"
            self._offset -= 1  # the newline added here is not in the file
        end = data.rfind(b"\n") + 1  # a partly written last line waits for its newline
        if end <= 0:
            return 0
        added = 0
        node_set = set(self.nodes)
        lines, payloads, times, kinds = [], [], [], []
        # one parse per line of the file, once: the per-request work is done on the arrays
        for raw in data[:end].split(b"\n")[:-1]:
            self._line_no += 1
            line = raw.strip()
            if not line:
                self.skipped += 1
                continue
            try:
                resp = parse_response(line)
            except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
                self.errors.append(f"line {self._line_no}: {exc}")
                continue
            kind = resp.WhichOneof("response_types")
            if kind not in ("flow", "lost_events"):
                self.skipped += 1
                continue
            if resp.HasField("time"):
                t = resp.time.seconds * _NS + resp.time.nanos
            elif kind == "flow" and resp.flow.HasField("time"):
                t = resp.flow.time.seconds * _NS + resp.flow.time.nanos
            else:
                t = 0
            if resp.node_name and resp.node_name not in node_set:
                node_set.add(resp.node_name)
            lines.append(line)
            payloads.append(resp.SerializeToString())
            times.append(t)
            kinds.append(_KIND_FLOW if kind == "flow" else _KIND_LOST)
            if kind == "flow":
                self._flows += 1
                if self.lost_every and self._flows % self.lost_every == 0:
                    lost = observer_pb2.GetFlowsResponse(
                        lost_events=flow_pb2.LostEvent(source=flow_pb2.HUBBLE_RING_BUFFER,
                                                       num_events_lost=self.lost_num),
                        node_name=resp.node_name)
                    lost.time.CopyFrom(resp.time if resp.HasField("time") else resp.flow.time)
                    lines.append(response_json(lost))
                    payloads.append(lost.SerializeToString())
                    times.append(t)
                    kinds.append(_KIND_LOST)
            added += 1
        with self.changed:
            self.lines += lines
            self.payloads += payloads
            self._times += times
            self._kinds += kinds
            self.times = np.asarray(self._times, np.int64)
            self.kinds = np.asarray(self._kinds, np.int8)
            self.nodes = sorted(node_set)
            self._offset += end
            if lines:
                self.changed.notify_all()
        return added


@dataclass
class ReplayOptions:
    cut_after: int | None = None  # abort a stream with UNAVAILABLE after this many responses
    cut_every: bool = False  # cut every stream (default: only the first stream that gets that far)
    tail: bool = False  # a followed stream also sends lines appended to the file later
    tail_interval_s: float = 0.1
    node_status: bool = True  # start each stream with a NODE_CONNECTED node_status like a relay
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None  # mTLS: clients must present a certificate signed by this CA
    max_workers: int = 16  # each open stream holds a thread
    version: str = "flowtrail-relay-replay"


@dataclass
class ReplayStats:
    streams: int = 0
    responses: int = 0
    cuts: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)  # GetFlowsRequests as protojson dicts


class ReplayServer:
    """``with ReplayServer(log, "127.0.0.1:0") as srv:`` — serves until the block ends."""

    def __init__(self, replay: ReplayLog | str | os.PathLike[str], listen: str = "127.0.0.1:0",
                 opts: ReplayOptions | None = None) -> None:
        self.log = replay if isinstance(replay, ReplayLog) else ReplayLog(replay)
        self.opts = opts or ReplayOptions()
        self.stats = ReplayStats()
        self._stop = threading.Event()
        self._cut_done = False
        self._started = time.monotonic_ns()
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=self.opts.max_workers,
                                                              thread_name_prefix="relay-replay"))
        handlers = {
            "GetFlows": grpc.unary_stream_rpc_method_handler(
                self._get_flows, request_deserializer=observer_pb2.GetFlowsRequest.FromString,
                response_serializer=bytes),  # responses are serialized when the file is read
            "ServerStatus": grpc.unary_unary_rpc_method_handler(
                self._server_status, request_deserializer=observer_pb2.ServerStatusRequest.FromString,
                response_serializer=observer_pb2.ServerStatusResponse.SerializeToString),
        }
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("observer.Observer", handlers),))
        o = self.opts
        if o.tls_cert or o.tls_key:
            if not (o.tls_cert and o.tls_key):
                raise ValueError("TLS needs both a certificate and its key")
            ca = Path(o.tls_client_ca).read_bytes() if o.tls_client_ca else None
            creds = grpc.ssl_server_credentials([(Path(o.tls_key).read_bytes(), Path(o.tls_cert).read_bytes())],
                                                root_certificates=ca, require_client_auth=ca is not None)
            self.port = self._server.add_secure_port(listen, creds)
        elif o.tls_client_ca:
            raise ValueError("a client CA (mTLS) needs a server certificate and key")
        else:
            self.port = self._server.add_insecure_port(listen)
        if not self.port:
            raise OSError(f"cannot listen on {listen}")
        if listen.startswith("unix:"):
            self.address = listen
        else:
            host = listen.rpartition(":")[0] or "127.0.0.1"
            self.address = f"{host}:{self.port}"
        self._tailer: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> ReplayServer:
        self._server.start()
        if self.opts.tail:
            self._tailer = threading.Thread(target=self._tail, name="relay-replay-tail", daemon=True)
            self._tailer.start()
        return self

    def stop(self, grace_s: float | None = None) -> None:
        self._stop.set()
        with self.log.changed:
            self.log.changed.notify_all()
        self._server.stop(grace_s).wait()
        if self._tailer is not None:
            self._tailer.join(timeout=2)

    def wait(self) -> None:
        self._server.wait_for_termination()

    def __enter__(self) -> ReplayServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _tail(self) -> None:
        while not self._stop.wait(self.opts.tail_interval_s):
            try:
                self.log.refresh()
            except OSError as exc:  # rotated away or unreadable for a moment: keep serving
                log.warning("relay-replay: reading %s: %s", self.log.path, exc)

    # -- RPCs -------------------------------------------------------------------------------------

    def _server_status(self, request: Any, context: grpc.ServicerContext) -> Any:
        resp = observer_pb2.ServerStatusResponse(
            num_flows=self.log.flows, max_flows=self.log.flows, seen_flows=self.log.flows,
            uptime_ns=time.monotonic_ns() - self._started, version=self.opts.version)
        resp.num_connected_nodes.value = len(self.log.nodes)
        resp.num_unavailable_nodes.value = 0
        return resp

    def _selected(self, fs: FilterSet, start: int, stop: int) -> np.ndarray:
        """Indexes in [start, stop) of the events the filters let through (lost events pass)."""
        kinds = self.log.kinds[start:stop]
        keep = kinds != _KIND_FLOW
        if fs.empty:
            keep[:] = True
            return np.flatnonzero(keep) + start
        dec = Decoder(fs.paths).decode_lines(self.log.lines[start:stop], str(self.log.path), start + 1)
        if dec.table is not None and dec.table.num_rows:
            mask = fs.mask(dec.table)
            idx = dec.line_numbers[mask] - 1 - start
            keep[idx[kinds[idx] == _KIND_FLOW]] = True
        return np.flatnonzero(keep) + start

    def _get_flows(self, req: Any, context: grpc.ServicerContext) -> Iterator[bytes]:
        with self._lock:
            self.stats.streams += 1
            self.stats.requests.append(message_dict(req))
        try:
            fs = FilterSet.compile([message_dict(f) for f in req.whitelist], [message_dict(f) for f in req.blacklist])
        except FilterError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid filter: {exc}")
        if req.first and req.follow:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "first is incompatible with follow")
        since = req.since.seconds * _NS + req.since.nanos if req.HasField("since") else None
        until = req.until.seconds * _NS + req.until.nanos if req.HasField("until") and not req.follow else None
        sent = 0

        def emit(payload: bytes) -> bytes:
            nonlocal sent
            cut = self.opts.cut_after
            if cut is not None and sent >= cut:
                with self._lock:
                    go = self.opts.cut_every or not self._cut_done
                    self._cut_done = True
                    if go:
                        self.stats.cuts += 1
                if go:
                    context.abort(grpc.StatusCode.UNAVAILABLE, f"relay-replay: stream cut after {sent} responses")
            sent += 1
            with self._lock:
                self.stats.responses += 1
            return payload

        if self.opts.node_status and self.log.nodes:
            status = observer_pb2.GetFlowsResponse(node_status=observer_pb2.NodeStatusEvent(
                state_change=observer_pb2.NODE_CONNECTED, node_names=self.log.nodes))
            status.time.GetCurrentTime()
            yield status.SerializeToString()  # not counted: cut_after counts flows and lost events

        with self.log.changed:
            end = len(self.log)
        times = self.log.times[:end]
        in_time = np.ones(end, bool)
        if since is not None:
            in_time &= times >= since
        if until is not None:
            in_time &= times <= until
        idx = self._selected(fs, 0, end)
        idx = idx[in_time[idx]]
        flows = self.log.kinds[idx] == _KIND_FLOW
        if since is None:
            if req.first:
                if req.number:
                    idx = idx[: int(np.searchsorted(np.cumsum(flows), req.number, side="left")) + 1]
            elif req.number:
                # the last N flows (and the lost events among them)
                from_end = np.cumsum(flows[::-1])[::-1]
                idx = idx[from_end <= req.number]
            elif req.follow:
                idx = idx[:0]
        elif req.number and not req.follow:
            idx = idx[: int(np.searchsorted(np.cumsum(flows), req.number, side="left")) + 1]
        for i in idx.tolist():
            if not context.is_active() or self._stop.is_set():
                return
            yield emit(self.log.payloads[i])
        if not req.follow:
            return
        pos = end
        while context.is_active() and not self._stop.is_set():
            with self.log.changed:
                if len(self.log) <= pos:
                    self.log.changed.wait(0.2)
                end = len(self.log)
            if end <= pos:
                continue
            new = self._selected(fs, pos, end)
            if since is not None:
                new = new[self.log.times[new] >= since]
            for i in new.tolist():
                if not context.is_active():
                    return
                yield emit(self.log.payloads[i])
            pos = end


def serve(input_file: str, listen: str, opts: ReplayOptions, lost_every: int = 0, lost_num: int = 1,
          ready: threading.Event | None = None, stop: threading.Event | None = None) -> ReplayServer:
    """Start a server replaying ``input_file``; with ``stop``, block until it is set."""
    replay = ReplayLog(input_file, lost_every=lost_every, lost_num=lost_num)
    server = ReplayServer(replay, listen, opts).start()
    if ready is not None:
        ready.set()
    if stop is not None:
        stop.wait()
        server.stop(1.0)
    return server


__all__ = ["ReplayLog", "ReplayOptions", "ReplayServer", "ReplayStats", "serve"]
