"""Where flows come from: files (observe -o json, exporter events.log), followed files, stdin and
Hubble Relay over gRPC; every source hands on Hubble's JSON lines."""

import os

# gRPC's C core logs reconnects (GOAWAY, …) at INFO on stderr; the relay source logs them itself
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
