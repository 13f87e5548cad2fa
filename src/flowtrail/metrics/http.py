"""The metrics HTTP endpoint: ``/metrics``, ``/healthz`` and ``/readyz``.

* ``GET /metrics``: the registry in Prometheus text format, or OpenMetrics (with exemplars)
  when the ``Accept`` header asks for it; gzip when the client accepts it; ``?name[]=…``
  restricts the output to those metric names, like prometheus_client's own handler.
* ``GET /healthz`` (liveness) and ``GET /readyz`` (readiness): ``200`` with a JSON body when the
  check passes, ``503`` with the same body when it does not (or when the check itself raised).
* anything else: ``404``.

A ThreadingHTTPServer with daemon threads serves requests, so a slow scrape never blocks a
health probe; access logs are not written (probes every few seconds would flood the log).
"""

from __future__ import annotations

import gzip
import json
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

Check = Callable[[], tuple[bool, dict[str, Any]]]


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port``, ``:port`` (all interfaces) or ``[v6addr]:port``; port 0 picks a free one."""
    text = listen.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ValueError(f"listen address {listen!r}: expected HOST:PORT or :PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"listen address {listen!r}: put an IPv6 address in brackets, e.g. [::1]:9965")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"listen address {listen!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"listen address {listen!r}: port {port} out of range")
    return host, port


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], owner: MetricsServer) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.owner = owner
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "flowtrail"

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _serve(self, body: bool) -> None:
        owner = self.server.owner
        url = urlsplit(self.path)
        try:
            if url.path == "/metrics":
                self._metrics(owner.registry, parse_qs(url.query), body)
            elif url.path in ("/healthz", "/readyz"):
                self._check(owner.health if url.path == "/healthz" else owner.ready, body)
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found: try /metrics, /healthz or /readyz\n", body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away; nothing to answer

    def _metrics(self, registry: CollectorRegistry, query: dict[str, list[str]], body: bool) -> None:
        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        names = query.get("name[]")
        output = encoder(registry.restricted_registry(names) if names else registry)
        headers = {}
        if "gzip" in self.headers.get("Accept-Encoding", ""):
            output = gzip.compress(output, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        self._send(200, content_type, output, body, headers)

    def _check(self, check: Check, body: bool) -> None:
        try:
            ok, details = check()
            payload = {"status": "ok" if ok else "fail", **details}
        except Exception as exc:  # a failing check means "not healthy", never a crashed server
            ok, payload = False, {"status": "fail", "error": f"{type(exc).__name__}: {exc}"}
        data = (json.dumps(payload, default=str, sort_keys=True) + "\n").encode()
        self._send(200 if ok else 503, "application/json", data, body)

    def _send(self, code: int, content_type: str, data: bytes, body: bool,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class MetricsServer:
    """Serves ``registry`` and the health/readiness checks on ``listen`` (``host:port``)."""

    def __init__(self, listen: str, registry: CollectorRegistry, health: Check, ready: Check) -> None:
        self.registry = registry
        self.health = health
        self.ready = ready
        host, port = parse_listen(listen)
        try:
            self._server = _Server((host or "0.0.0.0", port), self)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen on {listen!r}: {exc.strerror}") from None
        addr = self._server.server_address
        self.address: tuple[str, int] = (str(addr[0]), int(addr[1]))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = self.address[0]
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1" if host == "0.0.0.0" else "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.address[1]}"

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="flowtrail-metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> MetricsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
