"""Local alert sinks: a JSON-lines file rotated like logrotate, and stdout.

File: one alert per line (the `Alert.to_json()` dict), flushed and fsync'd per send. When the next
line would take the file past `max_bytes` it is rotated the way logrotate names files:
``path`` → ``path.1`` → ``path.2`` … ``path.<max_backups>`` (the oldest is removed). With
`compress`, backups from ``path.2`` on are gzipped (``path.2.gz``); ``path.1`` stays plain like
logrotate's delaycompress, so a shipper following the renamed file (tail -F, Filebeat) can finish
reading it. `max_backups: 0` keeps no backups. If someone else moves or deletes the file (an
external logrotate), the next send notices and starts a new one at `path`.

Stdout: `json` prints each alert as one JSON line; `compact` prints the line `flowtrail detect`
prints.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import sys
from pathlib import Path
from typing import IO, Any

import orjson

from flowtrail.model.timeutil import format_ns, parse_rfc3339_ns
from flowtrail.sinks.alerting import SinkError


def _backup(path: Path, i: int, gz: bool) -> Path:
    return path.with_name(f"{path.name}.{i}" + (".gz" if gz else ""))


class FileSink:
    def __init__(self, name: str, path: Path, *, max_bytes: int = 100 << 20, max_backups: int = 5,
                 compress: bool = False) -> None:
        if max_bytes <= 0:
            raise ValueError("max_size_mb must be positive")
        if max_backups < 0:
            raise ValueError("max_backups must be >= 0")
        self.name = name
        self.path = path
        self.max_bytes = max_bytes
        self.max_backups = max_backups
        self.compress = compress
        self.rotations = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[bytes] | None = None
        self._open()

    def _open(self) -> None:
        self._fh = open(self.path, "ab")  # noqa: SIM115 -- held until close or rotation
        self._size = self._fh.tell()

    def _reopen_if_moved(self) -> None:
        assert self._fh is not None
        try:
            moved = os.stat(self.path).st_ino != os.fstat(self._fh.fileno()).st_ino
        except FileNotFoundError:
            moved = True
        if moved:
            self._fh.close()
            self._open()

    def rotate(self) -> None:
        """Rotate now: path → path.1 → path.2[.gz] …"""
        assert self._fh is not None
        self._fh.close()
        n = self.max_backups
        if n == 0:
            self.path.unlink(missing_ok=True)
        else:
            for gz in (False, True):
                _backup(self.path, n, gz).unlink(missing_ok=True)
            for i in range(n - 1, 1, -1):
                for gz in (False, True):
                    src = _backup(self.path, i, gz)
                    if src.exists():
                        os.replace(src, _backup(self.path, i + 1, gz))
            one = _backup(self.path, 1, False)
            if n >= 2 and one.exists():
                if self.compress:
                    self._gzip(one, _backup(self.path, 2, True))
                else:
                    os.replace(one, _backup(self.path, 2, False))
            if self.path.exists():
                os.replace(self.path, one)
        self.rotations += 1
        self._open()

    @staticmethod
    def _gzip(src: Path, dst: Path) -> None:
        tmp = dst.with_name(dst.name + ".tmp")
        with open(src, "rb") as fin, gzip.GzipFile(tmp, "wb", mtime=0) as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
        os.replace(tmp, dst)  # a reader never sees half a .gz
        src.unlink()

    def send(self, alerts: list[dict[str, Any]]) -> None:
        try:
            self._reopen_if_moved()
            assert self._fh is not None
            for a in alerts:  # per alert: each is one line, and rotation must fall between lines
                line = orjson.dumps(a) + b"\n"
                if self._size and self._size + len(line) > self.max_bytes:
                    self._fh.flush()
                    os.fsync(self._fh.fileno())
                    self.rotate()
                self._fh.write(line)
                self._size += len(line)
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as exc:
            raise SinkError(f"alert file {self.path}: {exc.strerror or exc}") from None

    def close(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None


def compact_line(alert: dict[str, Any]) -> str:
    """The `flowtrail detect -o compact` line, from the alert's JSON dict."""
    entity = alert.get("entity") or {}
    if entity.get("pod"):
        actor = f"{entity.get('namespace')}/{entity['pod']}"
    else:
        actor = str(entity.get("namespace") or entity.get("name") or entity.get("node") or "-")
    peers_doc = alert.get("peers") or {}
    top = peers_doc.get("top") or []
    peers = ", ".join(str(p.get("peer")) for p in top[:3])
    distinct = peers_doc.get("distinct") or 0
    more = f" (+{distinct - 3})" if distinct > 3 else ""
    when = format_ns(parse_rfc3339_ns(alert.get("detected_at")), "StampMilli")
    return (f"{when} {str(alert.get('severity', '')).upper():<8} {alert.get('category', ''):<16} "
            f"{alert.get('rule', ''):<32} {actor} -> {peers}{more}  count={alert.get('count')}")


class StdoutSink:
    def __init__(self, name: str, fmt: str = "json", stream: IO[str] | None = None) -> None:
        if fmt not in ("json", "compact"):
            raise ValueError(f"format {fmt!r}: expected json or compact")
        self.name = name
        self.fmt = fmt
        self._stream = stream

    def send(self, alerts: list[dict[str, Any]]) -> None:
        stream = self._stream or sys.stdout  # looked up per send: tests and daemons swap sys.stdout
        if self.fmt == "json":
            text = "".join(orjson.dumps(a).decode() + "\n" for a in alerts)
        else:
            text = "".join(compact_line(a) + "\n" for a in alerts)
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError) as exc:  # ValueError: the stream was closed
            raise SinkError(f"stdout: {exc}") from None

    def close(self) -> None:
        pass
