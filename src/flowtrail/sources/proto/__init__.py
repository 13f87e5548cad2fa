"""Hubble's flow and observer protos (the subset flowtrail speaks) and their generated stubs.

The ``*.proto`` files here are the source; ``flow_pb2``/``observer_pb2`` (+ ``_grpc`` and ``.pyi``)
are generated next to them by ``make install`` (``scripts/gen_protos.py``) and are not in git.
Importing this package checks that the stubs exist and are newer than the protos; when they are
not (a hand-made ``pip install -e .``, an edited proto) it generates them with ``grpc_tools`` if
that is installed, and otherwise raises :class:`ProtoStubsMissing` telling the user what to run.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
# protoc's include root: the protos import each other as "flowtrail/sources/proto/x.proto", so the
# generated modules import each other as flowtrail.sources.proto.x_pb2.
INCLUDE_ROOT = PROTO_DIR.parents[2]
PROTOS = ("flow.proto", "observer.proto")


class ProtoStubsMissing(ImportError):
    """The generated gRPC/protobuf modules are absent or stale and cannot be generated here."""


def _outputs(proto: str) -> list[Path]:
    stem = proto.removesuffix(".proto")
    return [PROTO_DIR / f"{stem}_pb2.py", PROTO_DIR / f"{stem}_pb2.pyi", PROTO_DIR / f"{stem}_pb2_grpc.py"]


def stale() -> list[str]:
    """Protos whose generated modules are missing or older than the proto."""
    out = []
    for proto in PROTOS:
        src = (PROTO_DIR / proto).stat().st_mtime
        if any(not p.exists() or p.stat().st_mtime < src for p in _outputs(proto)):
            out.append(proto)
    return out


def generate() -> list[Path]:
    """Run grpc_tools' protoc on the protos; returns the files written."""
    try:
        import grpc_tools
        from grpc_tools import protoc
    except ImportError as exc:
        raise ProtoStubsMissing(
            "the Hubble gRPC stubs (flowtrail/sources/proto/*_pb2.py) are not generated and grpcio-tools is "
            "not installed to generate them: run `make install` (or `pip install grpcio-tools` and "
            "`python scripts/gen_protos.py`)") from exc
    # the well-known types (timestamp.proto, any.proto...) ship inside grpc_tools
    wkt = Path(grpc_tools.__file__).resolve().parent / "_proto"
    rel = [str((PROTO_DIR / p).relative_to(INCLUDE_ROOT)) for p in PROTOS]
    args = ["grpc_tools.protoc", f"-I{INCLUDE_ROOT}", f"-I{wkt}", f"--python_out={INCLUDE_ROOT}",
            f"--pyi_out={INCLUDE_ROOT}", f"--grpc_python_out={INCLUDE_ROOT}", *rel]
    rc = protoc.main(args)
    if rc != 0:
        raise ProtoStubsMissing(f"protoc failed (exit {rc}) on {', '.join(rel)}: see its message above")
    written = [p for proto in PROTOS for p in _outputs(proto)]
    for p in written:  # a proto newer than its outputs (clock skew, same-second edit) would loop forever
        os.utime(p)
    return written


def ensure() -> None:
    if not stale():
        return
    try:
        # two processes importing at once (a test server and its client) must not both write
        fd = os.open(PROTO_DIR, os.O_RDONLY)
    except OSError:
        fd = -1
    try:
        if fd >= 0:
            fcntl.flock(fd, fcntl.LOCK_EX)
        if stale():
            generate()
    except PermissionError as exc:
        raise ProtoStubsMissing(
            f"the Hubble gRPC stubs in {PROTO_DIR} are missing or stale and that directory is not "
            "writable: run `make install` (scripts/gen_protos.py) as its owner") from exc
    finally:
        if fd >= 0:
            os.close(fd)  # releases the lock


ensure()
