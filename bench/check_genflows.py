"""Check bench/genflows.py output against real Hubble samples and the flow.proto reference.

    python bench/check_genflows.py [--lines 20000] [--seed 1] [--file FLOWS.jsonl [--limit N]]

Checks, for every generated line:
* it is valid JSON (json.loads, and jq if it is on PATH) of the shape {"flow":…,"node_name":…,"time":…};
* every key path exists in the real samples (../shared/data/hubble-samples) or in the flow.proto
  tables of ../shared/docs/hubble-reference.md (§2.1 Flow, §2.2 sub-messages);
* keys appear in proto declaration order (the order protojson writes them), value types follow
  the proto3 JSON mapping (uint64 as strings, enums as known names, RFC 3339 timestamps with
  0/3/6/9 fractional digits);
* the Hubble-specific invariants genflows promises (drops, DNS, HTTP, world, node names);
and that output is deterministic per seed. Prints key paths only in the proto tables (not in any
sample) and sample paths that the generator never produces. Exit status 1 on any failure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = REPO.parent / "shared"
REFERENCE = SHARED / "docs" / "hubble-reference.md"
SAMPLES = SHARED / "data" / "hubble-samples"

SCALARS = {"string", "bool", "uint32", "int32", "uint64", "int64", "google.protobuf.Timestamp",
           "google.protobuf.BoolValue", "google.protobuf.Int32Value", "google.protobuf.Any"}
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6}|\.\d{9})?Z$")
POD_NAME = re.compile(r"^[a-z0-9-]+-[bcdfghjklmnpqrstvwxz2456789]{8,10}-[bcdfghjklmnpqrstvwxz2456789]{5}$")
STS_POD_NAME = re.compile(r"^[a-z0-9-]+-\d+$")


class Field:
    def __init__(self, name: str, type_: str, repeated: bool) -> None:
        self.name, self.type, self.repeated = name, type_, repeated


def parse_reference(text: str) -> tuple[dict[str, list[Field]], dict[str, set[str]]]:
    """Messages (fields in declaration order) and enums (value names) from the reference doc."""
    messages: dict[str, list[Field]] = {}
    sec21 = text[text.index("### 2.1 `message Flow`"):text.index("### 2.2 Sub-messages")]
    flow: list[Field] = []
    for m in re.finditer(r"^\| `(\w+)` \| \d+ \| ([\w. ]+?) \|", sec21, re.M):
        type_ = m.group(2).strip()
        repeated = type_.startswith("repeated ")
        flow.append(Field(m.group(1), type_.removeprefix("repeated "), repeated))
    messages["Flow"] = flow
    sec22 = text[text.index("### 2.2 Sub-messages"):text.index("### 2.3 Enums")]
    for m in re.finditer(r"^\* \*\*(\w+)\*\*: (.*)$", sec22, re.M):
        fields = []
        for f in re.finditer(r"`(\w+)`=\d+ \(([^)]+)\)", m.group(2)):
            type_ = f.group(2).strip()
            repeated = type_.startswith("repeated ")
            fields.append(Field(f.group(1), type_.removeprefix("repeated "), repeated))
        messages[m.group(1)] = fields
    # the response wrapper (§1.1): oneof {flow, node_status, lost_events} + node_name + time
    messages["GetFlowsResponse"] = [Field("flow", "Flow", False), Field("node_name", "string", False),
                                    Field("time", "google.protobuf.Timestamp", False)]
    enums: dict[str, set[str]] = {}
    sec23 = text[text.index("### 2.3 Enums"):text.index("### 2.4")]
    for m in re.finditer(r"^\* \*\*(\w+)\*\*: (.*)$", sec23, re.M):
        enums[m.group(1)] = set(re.findall(r"`(\w+)`=\d+", m.group(2)))
    enums["DropReason"] = set(re.findall(r"^\| `(\w+)`(?: \(deprecated\))? \| \d+ \|", sec23, re.M))
    return messages, enums


def key_paths(obj: Any, prefix: str = "") -> set[str]:
    """All key paths of a JSON value; list elements are written as []."""
    out: set[str] = set()
    if isinstance(obj, dict):
        for k, v in obj.items():
            p = f"{prefix}.{k}" if prefix else k
            out.add(p)
            out |= key_paths(v, p)
    elif isinstance(obj, list):
        for v in obj:
            out |= key_paths(v, prefix + "[]")
    return out


def proto_paths(messages: dict[str, list[Field]], msg: str = "GetFlowsResponse", prefix: str = "",
                depth: int = 0) -> set[str]:
    out: set[str] = set()
    if depth > 6:
        return out
    for f in messages.get(msg, []):
        p = f"{prefix}.{f.name}" if prefix else f.name
        out.add(p)
        if f.type in messages:
            out |= proto_paths(messages, f.type, p + ("[]" if f.repeated else ""), depth + 1)
    return out


class Checker:
    def __init__(self, messages: dict[str, list[Field]], enums: dict[str, set[str]]) -> None:
        self.messages, self.enums = messages, enums
        self.errors: Counter[str] = Counter()
        self.examples: dict[str, str] = {}

    def fail(self, what: str, line_no: int) -> None:
        self.errors[what] += 1
        self.examples.setdefault(what, f"line {line_no}")

    def check_message(self, obj: Any, msg: str, path: str, line_no: int) -> None:
        if not isinstance(obj, dict):
            self.fail(f"{path}: expected object for {msg}", line_no)
            return
        order = {f.name: i for i, f in enumerate(self.messages[msg])}
        fields = {f.name: f for f in self.messages[msg]}
        last = -1
        for key, value in obj.items():
            if key not in fields:
                self.fail(f"{path}.{key}: not a field of {msg}", line_no)
                continue
            if order[key] < last:
                self.fail(f"{path}.{key}: out of proto declaration order in {msg}", line_no)
            last = order[key]
            f = fields[key]
            p = f"{path}.{key}" if path else key
            if f.repeated:
                if not isinstance(value, list) or not value:
                    self.fail(f"{p}: repeated field must be a non-empty list", line_no)
                    continue
                for v in value:
                    self.check_value(v, f.type, p + "[]", line_no)
            else:
                self.check_value(value, f.type, p, line_no)

    def check_value(self, value: Any, type_: str, path: str, line_no: int) -> None:
        if type_ in self.messages:
            self.check_message(value, type_, path, line_no)
        elif type_ in ("uint64", "int64"):
            if not (isinstance(value, str) and value.lstrip("-").isdigit()):
                self.fail(f"{path}: 64-bit integer must be a JSON string", line_no)
        elif type_ in ("uint32", "int32"):
            if not isinstance(value, int) or isinstance(value, bool) or value == 0:
                self.fail(f"{path}: 32-bit integer must be a non-zero JSON number", line_no)
        elif type_ in ("bool", "google.protobuf.BoolValue"):
            if not isinstance(value, bool):
                self.fail(f"{path}: must be a bool", line_no)
        elif type_ == "string":
            if not isinstance(value, str) or not value:
                self.fail(f"{path}: must be a non-empty string", line_no)
        elif type_ == "google.protobuf.Timestamp":
            if not (isinstance(value, str) and TIMESTAMP.match(value)) or value.endswith("000Z"):
                self.fail(f"{path}: not a protojson timestamp", line_no)
        elif type_ in self.enums:
            if value not in self.enums[type_]:
                self.fail(f"{path}: {value!r} is not a {type_} name", line_no)
        elif type_ not in SCALARS:
            self.fail(f"{path}: unknown type {type_}", line_no)

    def check_semantics(self, obj: dict[str, Any], line_no: int) -> None:
        f = obj.get("flow", {})
        if obj.get("node_name") != f.get("node_name") or obj.get("time") != f.get("time"):
            self.fail("wrapper node_name/time differ from the flow's", line_no)
        if "/" not in f.get("node_name", ""):
            self.fail("node_name is not cluster/node", line_no)
        for key in ("uuid", "emitter", "verdict", "IP", "l4", "source", "destination", "Type", "event_type",
                    "Summary"):
            if key not in f:
                self.fail(f"flow without {key}", line_no)
        et = f.get("event_type", {})
        if f.get("verdict") == "DROPPED":
            if (f.get("drop_reason") != 133 or f.get("drop_reason_desc") != "POLICY_DENIED"
                    or et != {"type": 1, "sub_type": 133} or "is_reply" in f):
                self.fail("DROPPED flow without drop_reason 133 / POLICY_DENIED / event_type 1:133, or with is_reply",
                          line_no)
        elif "is_reply" not in f:
            self.fail("non-drop flow without is_reply", line_no)
        if f.get("Type") == "L7":
            l7 = f.get("l7", {})
            if et != {"type": 129}:
                self.fail("L7 flow with event_type other than 129", line_no)
            if (l7.get("type") == "RESPONSE") != f.get("is_reply"):
                self.fail("L7 RESPONSE must be is_reply", line_no)
            if "dns" in l7:
                dns = l7["dns"]
                if not dns["query"].endswith("."):
                    self.fail("DNS query without trailing dot", line_no)
                if l7["type"] == "RESPONSE" and dns.get("rcode") != 3 and not dns.get("ips"):
                    self.fail("DNS answer without ips", line_no)
                if dns.get("rcode") == 3 and ("ips" in dns or dns.get("ttl") != 4294967295):
                    self.fail("NXDOMAIN with ips or ttl != 4294967295", line_no)
            elif "http" in l7:
                if l7["type"] == "RESPONSE" and not (l7.get("latency_ns") and l7["http"].get("code")):
                    self.fail("HTTP response without latency_ns/code", line_no)
            else:
                self.fail("L7 flow without dns/http", line_no)
        elif "l7" in f:
            self.fail("l7 on a non-L7 flow", line_no)
        for side in ("source", "destination"):
            ep = f.get(side, {})
            if "reserved:world" in ep.get("labels", []) and ep.get("identity") != 2:
                self.fail("reserved:world with identity != 2", line_no)
            name = ep.get("pod_name")
            if name is not None:
                kind = ep.get("workloads", [{}])[0].get("kind")
                pattern = STS_POD_NAME if kind == "StatefulSet" else POD_NAME
                if not pattern.match(name):
                    self.fail(f"{kind} pod name {name!r} does not look like a real one", line_no)
                labels = ep.get("labels", [])
                if labels != sorted(labels) or f"k8s:io.kubernetes.pod.namespace={ep.get('namespace')}" not in labels:
                    self.fail("endpoint labels unsorted or without k8s:io.kubernetes.pod.namespace", line_no)
        if "destination_names" in f and "reserved:world" not in f["destination"].get("labels", []):
            self.fail("destination_names on a non-world destination", line_no)


def sample_paths() -> set[str]:
    paths: set[str] = set()
    for p in sorted(SAMPLES.glob("*.jsonl")):
        for line in p.read_text().splitlines():
            if line.strip():
                obj = json.loads(line)
                if "flow" in obj:
                    paths |= key_paths(obj)
    return paths


def run_generator(n: int, seed: int, out: Path) -> None:
    subprocess.run([sys.executable, str(HERE / "genflows.py"), "-n", str(n), "-o", str(out), "--seed", str(seed)],
                   check=True, stdout=subprocess.DEVNULL)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=20_000, help="lines to generate and check (default 20000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--file", type=Path, help="check this existing file instead of generating one")
    ap.add_argument("--limit", type=int, default=0, help="with --file: check only the first N lines")
    args = ap.parse_args(argv)

    messages, enums = parse_reference(REFERENCE.read_text())
    proto = proto_paths(messages)
    real = sample_paths()
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        if args.file:
            path = args.file
        else:
            path = Path(tmp) / "flows.jsonl"
            run_generator(args.lines, args.seed, path)
            again = Path(tmp) / "again.jsonl"
            run_generator(args.lines, args.seed, again)
            other = Path(tmp) / "other.jsonl"
            run_generator(args.lines, args.seed + 1, other)
            same, differs = sha256(path) == sha256(again), sha256(path) != sha256(other)
            print(f"deterministic per seed: {'yes' if same else 'NO'}; another seed differs: "
                  f"{'yes' if differs else 'NO'}")
            ok &= same and differs
        if shutil.which("jq"):
            jq = subprocess.run(["jq", "-c", ".", str(path)], capture_output=True, text=True)
            n_jq = jq.stdout.count("\n")
            print(f"jq -c . parses the file: {'yes' if jq.returncode == 0 else 'NO: ' + jq.stderr[:200]} "
                  f"({n_jq} lines); first line re-encoded by jq is byte-identical: "
                  f"{'yes' if jq.stdout.split(chr(10), 1)[0] == path.open().readline().rstrip(chr(10)) else 'no'}")
            ok &= jq.returncode == 0
        checker = Checker(messages, enums)
        generated: Counter[str] = Counter()
        n = 0
        total_len = 0
        verdicts: Counter[str] = Counter()
        with open(path) as fh:
            for n, line in enumerate(fh, 1):
                if args.limit and n > args.limit:
                    n -= 1
                    break
                total_len += len(line)
                try:
                    obj = json.loads(line)
                except ValueError as exc:
                    checker.fail(f"invalid JSON: {exc}", n)
                    continue
                generated.update(key_paths(obj))
                checker.check_message(obj, "GetFlowsResponse", "", n)
                checker.check_semantics(obj, n)
                verdicts[obj["flow"].get("verdict", "?")] += 1
    gen_paths = set(generated)
    unknown = sorted(p for p in gen_paths if p not in real and p not in proto)
    proto_only = sorted(p for p in gen_paths if p not in real and p in proto)
    unused = sorted(p for p in real if p not in gen_paths)
    mean = total_len / max(n, 1)
    print(f"checked {n:,} lines, mean length {mean:,.0f} B, verdicts "
          + ", ".join(f"{k} {v / max(n, 1) * 100:.1f} %" for k, v in verdicts.most_common()))
    print(f"key paths: {len(gen_paths)} generated, {len(gen_paths & real)} also in real samples, "
          f"{len(proto_only)} only in the flow.proto tables, {len(unknown)} in neither")
    for p in proto_only:
        print(f"  proto-only: {p}")
    for p in unknown:
        print(f"  UNKNOWN: {p}")
    if unused:
        print("sample paths never generated: " + ", ".join(unused))
    for what, count in checker.errors.most_common():
        print(f"FAIL {what}: {count} lines (first: {checker.examples[what]})")
    if not 1200 <= mean <= 1800:
        print(f"FAIL mean line length {mean:.0f} B outside 1.2-1.8 KB")
        ok = False
    ok &= not unknown and not checker.errors
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
