#!/usr/bin/env python3
"""Generate the Hubble protobuf/gRPC stubs next to src/flowtrail/sources/proto/*.proto.

Run by `make install` after `pip install -e .`; writes flow_pb2.py(.pyi), flow_pb2_grpc.py,
observer_pb2.py(.pyi) and observer_pb2_grpc.py (git-ignored) with grpc_tools' protoc, include root
src/, so that they import each other as flowtrail.sources.proto.*_pb2.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

# Importing the package generates stale stubs already; generate() again forces a fresh run.
from flowtrail.sources.proto import INCLUDE_ROOT, ProtoStubsMissing, generate


def main() -> int:
    try:
        written = generate()
    except ProtoStubsMissing as exc:
        print(f"gen_protos: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"gen_protos: wrote {path.relative_to(INCLUDE_ROOT.parent)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
