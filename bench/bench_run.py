"""The live monitor, measured: throughput, alert latency at a paced rate, and a memory soak.

    python bench/bench_run.py throughput [--flows 1000000] [--repeat 3]
    python bench/bench_run.py latency [--rate 20000] [--seconds 60]
    python bench/bench_run.py sustained [--rate 200000] [--seconds 20]
    python bench/bench_run.py relay [--flows 200000]
    python bench/bench_run.py soak [--rate 40000] [--seconds 600]

throughput: `flowtrail run --once` (default rule pack, Hubble metrics, alerts to a file) over the
    core benchmark file, in its decode thread and with `--decode-workers` worker processes, beside
    `flowtrail detect` on the same file and jq evaluating three stateless conditions (what a user
    would script instead). The flowtrail runs alternate; median wall seconds, flows/s, peak RSS.
latency: a lab capture with attack scenarios is appended to a file at `--rate` flows/s, paced by
    its flow times (the file grows as a Hubble exporter's would); `flowtrail run` follows it. For
    every alert, latency = the moment the alert line appeared in the alerts file minus the moment
    the flow that triggered it (the alert's `detected_at`) was written. Also reports the monitor's
    own histogram (arrival → handed to the sinks) from /metrics.
sustained: the core benchmark file (`--rate` x `--seconds` flows, bench/genflows.py) is piped into
    `flowtrail run --input-file - --overload O` (`--overload`, shed by default) at `--rate`
    flows/s, spliced from the page cache so that the writer costs little CPU, as `hubble observe
    --follow -o json | flowtrail run ...` would feed it. /metrics is scraped every 5 s. The rate
    is sustained when nothing is shed, no write fell more than 0.25 s behind its schedule (what
    `block` shows), and the processed count reaches the sent count within 2 s of the last write
    (the processed counter follows the Hubble metrics, flushed at least once a second). The
    per-interval rates and the largest backlog (sent minus processed) show how close it came.
relay: `flowtrail relay-replay` serves the first `--flows` lines of the core benchmark file as a
    Hubble Relay (its own process), and `flowtrail run` follows it over gRPC from the start; the
    rate is the monitor's processed counter over the time it took, with the CPU of both processes.
    Beside it, a bare grpcio client that only receives the serialized responses: the transport's
    own ceiling with this server on this machine.
soak: the lab simulator streams through a pacer at `--rate` flows/s into `flowtrail run
    --input-file - --overload shed` for `--seconds`; the monitor's RSS is sampled every 5 s. Flat
    memory means the slope over the second half stays within noise; what the monitor could not
    take is shed and counted (flowtrail_flows_shed_total), never silently lost.

FT_BIN: the flowtrail executable to measure (default: the repository's .venv/bin/flowtrail), e.g.
    a wrapper script that times the monitor's stages.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from common import free_port, measured  # noqa: E402

FT = os.environ.get("FT_BIN") or str(REPO / ".venv" / "bin" / "flowtrail")
JQ = (
    'select((.flow.destination.labels // [] | index("reserved:kube-apiserver")) and '
    '((.flow.source.namespace // "") | IN("kube-system","monitoring") | not)) // '
    'select((.flow.destination.labels // [] | index("reserved:world")) and .flow.source.namespace == "production") // '
    'select((.flow.l7.dns.query // "") | test("\\\\.(xyz|top)\\\\.$"))'
)
SCENARIOS = ["port-scan", "policy-gap", "exfiltration", "dns-c2", "kube-api", "namespace-breach", "drop-spike",
             "ip-sweep"]
TIME_RE = re.compile(rb'"time":"([^"]+)"\}?\s*$')


# ---------------------------------------------------------------------------------------- throughput
def throughput(args: argparse.Namespace) -> list[str]:
    data = REPO / "bench" / "data" / f"flows-{args.flows}.jsonl"
    data.parent.mkdir(exist_ok=True)
    if not data.exists():
        subprocess.run([sys.executable, str(REPO / "bench" / "genflows.py"), "-n", str(args.flows), "-o", str(data)],
                       check=True)
    out: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        alerts = Path(tmp) / "alerts.jsonl"
        workers = Path(tmp) / "workers.yaml"
        workers.write_text(f"pipeline:\n  decode_workers: {args.decode_workers}\n")
        run = [FT, "run", "--once", "--input-file", str(data), "--alerts-file", str(alerts), "--log-level", "warning"]
        cases = [
            ("flowtrail run --once (default pack, Hubble metrics, alert file)", run),
            (f"flowtrail run --once, decode_workers: {args.decode_workers}", [*run, "--config", str(workers)]),
            ("flowtrail detect (default pack, 2 decode workers)", [FT, "detect", str(data), "-o", "json"]),
            ("jq, 3 stateless conditions", ["jq", "-c", JQ, str(data)]),
        ]
        if not shutil.which("jq"):
            cases.pop()
        # the flowtrail cases alternate, run by run: this machine's speed drifts by more than
        # the differences between them
        walls: dict[str, list[float]] = {name: [] for name, _ in cases}
        rss: dict[str, list[int]] = {name: [] for name, _ in cases}
        for i in range(args.repeat):
            for name, cmd in cases:
                if cmd[0] == "jq" and i:
                    continue
                alerts.unlink(missing_ok=True)
                w, r, _ = measured(cmd)
                walls[name].append(w)
                rss[name].append(r)
        rows = []
        for name, _ in cases:
            med = statistics.median(walls[name])
            peak = max(rss[name]) / 1024
            rows.append((name, med, args.flows / med, peak))
            line = f"{name:<66} {med:7.2f} s {args.flows / med:>10,.0f} flows/s  peak RSS {peak:6.0f} MB"
            print(line, flush=True)
            out.append(line)
    jq = next((r for r in rows if r[0].startswith("jq")), None)
    if jq:
        for name, med, _, _ in rows:
            if name != jq[0]:
                out.append(f"{name}: {jq[1] / med:.1f}x jq")
                print(out[-1])
    return out


# ---------------------------------------------------------------------------------------- latency
def _capture(path: Path, rate: int, seconds: int) -> None:
    cmd = [FT, "simulate", "-q", "--duration", f"{seconds}s", "--rate", str(rate), "-o", str(path)]
    for s in SCENARIOS:
        cmd += ["--scenario", s]
    subprocess.run(cmd, check=True)


def _flow_times(path: Path) -> tuple[list[bytes], np.ndarray]:
    lines = path.read_bytes().splitlines(keepends=True)
    times = np.empty(len(lines), np.int64)
    for i, ln in enumerate(lines):
        m = TIME_RE.search(ln)
        times[i] = _ns(m.group(1).decode()) if m else (times[i - 1] if i else 0)
    return lines, times


def _ns(text: str) -> int:
    base, _, frac = text.rstrip("Z").partition(".")
    sec = int(time.mktime(time.strptime(base, "%Y-%m-%dT%H:%M:%S")) - time.timezone)
    return sec * 1_000_000_000 + int((frac + "000000000")[:9])


def latency(args: argparse.Namespace) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        cap = Path(tmp) / "capture.jsonl"
        print(f"simulating {args.seconds}s at {args.rate} flows/s with {len(SCENARIOS)} attack scenarios ...", flush=True)
        _capture(cap, args.rate, args.seconds)
        lines, times = _flow_times(cap)
        live, alerts = Path(tmp) / "events.log", Path(tmp) / "alerts.jsonl"
        live.touch()
        port = free_port()
        proc = subprocess.Popen([FT, "run", "--input-file", str(live), "--alerts-file", str(alerts),
                                 "--metrics-listen", f"127.0.0.1:{port}", "--log-level", "warning",
                                 *(["--config", args.config] if args.config else [])])
        time.sleep(3)  # start-up (imports, rule compilation) is not latency
        written_t: list[int] = []  # flow time of the last line of each write
        written_w: list[float] = []  # wall clock of that write
        seen: dict[str, float] = {}
        rules: dict[str, str] = {}
        stop = threading.Event()

        def watch() -> None:
            pos = 0
            while not stop.is_set():
                if alerts.exists():
                    with open(alerts, "rb") as fh:
                        fh.seek(pos)
                        data = fh.read()
                    cut = data.rfind(b"\n") + 1
                    now = time.monotonic()
                    for ln in data[:cut].splitlines():
                        a = orjson.loads(ln)
                        seen.setdefault(a["id"], now)
                        seen[a["id"] + "#t"] = _ns(a["detected_at"]) / 1e9
                        rules[a["id"]] = a["rule"]
                    pos += cut
                time.sleep(0.005)

        w = threading.Thread(target=watch, daemon=True)
        w.start()
        t0_flow, t0_wall = int(times[0]), time.monotonic()
        i = 0
        with open(live, "ab", buffering=0) as fh:
            while i < len(lines):
                due = t0_flow + int((time.monotonic() - t0_wall) * 1e9)
                j = int(np.searchsorted(times, due, side="right"))
                if j > i:
                    fh.write(b"".join(lines[i:j]))
                    written_t.append(int(times[j - 1]))
                    written_w.append(time.monotonic())
                    i = j
                time.sleep(0.005)
        time.sleep(3)
        stop.set()
        w.join()
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        proc.terminate()
        rc = proc.wait(30)
        lats = []
        worst: list[tuple[float, str, int]] = []
        for k, at in seen.items():
            if k.endswith("#t"):
                continue
            det_ns = int(seen[k + "#t"] * 1e9)
            idx = bisect.bisect_left(written_t, det_ns)
            if idx < len(written_w):
                lats.append(at - written_w[idx])
                worst.append((at - written_w[idx], rules.get(k, "?"), det_ns))
        worst.sort(reverse=True)
        for lat, rule, det in worst[:5]:
            print(f"  slowest: {lat * 1000:6.0f} ms  {rule}  (flow time +{(det - int(times[0])) / 1e9:.1f}s)")
        lats.sort()
        out = [f"paced {len(lines):,} flows at {args.rate:,}/s for {args.seconds}s; {len(lats)} alerts; exit code {rc}"]
        if lats:
            p = lambda q: lats[min(len(lats) - 1, int(q * len(lats)))]  # noqa: E731
            out.append(f"end-to-end alert latency (written -> alert line in file): p50 {p(0.5) * 1000:.0f} ms, "
                       f"p99 {p(0.99) * 1000:.0f} ms, max {lats[-1] * 1000:.0f} ms")
        hist = _histogram(metrics, "flowtrail_alert_latency_seconds")
        if hist:
            out.append("monitor's own histogram (arrival -> sinks): " + hist)
        for ln in out:
            print(ln)
        return out


def _histogram(text: str, name: str) -> str:
    buckets = []
    count = 0.0
    for ln in text.splitlines():
        if ln.startswith(name + "_bucket"):
            le = re.search(r'le="([^"]+)"', ln)
            if le:
                buckets.append((float(le.group(1)), float(ln.rsplit(" ", 1)[1])))
        elif ln.startswith(name + "_count"):
            count = float(ln.rsplit(" ", 1)[1])
    if not count:
        return ""
    p99 = next((le for le, c in buckets if c >= 0.99 * count), float("inf"))
    p50 = next((le for le, c in buckets if c >= 0.5 * count), float("inf"))
    return f"{int(count)} alerts, p50 <= {p50}s, p99 <= {p99}s"


# ---------------------------------------------------------------------------------------- sustained
def _scrape(port: int) -> dict[str, float]:
    """The monitor's own counters that tell whether it keeps up."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {"processed": 0.0, "shed": 0.0, "queue": 0.0, "decode_errors": 0.0}
    for ln in text.splitlines():
        if ln.startswith("flowtrail_flows_processed_total "):
            out["processed"] = float(ln.rsplit(" ", 1)[1])
        elif ln.startswith("flowtrail_flows_shed_total{"):
            out["shed"] += float(ln.rsplit(" ", 1)[1])
        elif ln.startswith('flowtrail_queue_depth{queue="sources"}'):
            out["queue"] = float(ln.rsplit(" ", 1)[1])
        elif ln.startswith("flowtrail_decode_errors_total{"):
            out["decode_errors"] += float(ln.rsplit(" ", 1)[1])
    return out


def sustained(args: argparse.Namespace) -> list[str]:
    n = args.rate * args.seconds
    # the first n lines of a file of whole millions (one file serves several rates)
    data = REPO / "bench" / "data" / f"flows-{-(-n // 1_000_000) * 1_000_000}.jsonl"
    data.parent.mkdir(exist_ok=True)
    if not data.exists():
        subprocess.run([sys.executable, str(REPO / "bench" / "genflows.py"), "-n", data.stem.split("-")[1],
                        "-o", str(data)], check=True, stdout=subprocess.DEVNULL)
    raw = np.memmap(data, np.uint8, mode="r")
    step = 256 << 20  # a comparison over the whole file at once would take a byte per byte
    ends = np.concatenate([np.flatnonzero(raw[at:at + step] == 10) + (at + 1)  # byte offset after each line
                           for at in range(0, len(raw), step)])
    del raw
    if len(ends) < n:
        raise SystemExit(f"{data}: {len(ends)} lines, {n} needed")
    # read once so the run measures the monitor, not the disk
    with open(data, "rb") as fh:
        while fh.read(64 << 20):
            pass
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        r, w = os.pipe()  # 64 kB: the monitor widens it itself (sources/stdin.py), as it does under a shell
        mon = subprocess.Popen([FT, "run", "--input-file", "-", "--alerts-file", str(Path(tmp) / "alerts.jsonl"),
                                "--overload", args.overload, "--metrics-listen", f"127.0.0.1:{port}",
                                "--log-level", "warning", *(["--config", args.config] if args.config else [])],
                               stdin=r)
        os.close(r)
        time.sleep(3)  # start-up (imports, rule compilation) is not part of the rate
        samples: list[tuple[float, int, dict[str, float]]] = []
        fd = os.open(data, os.O_RDONLY)
        sent = 0  # lines
        late = 0.0  # the most a write finished behind its schedule (block: the monitor held it back)
        t0 = time.monotonic()
        next_scrape = t0 + 5
        try:
            while sent < n:
                due = min(n, int((time.monotonic() - t0) * args.rate))
                if due > sent:
                    start = int(ends[sent - 1]) if sent else 0
                    left = int(ends[due - 1]) - start
                    while left:
                        moved = os.splice(fd, w, left, offset_src=start)
                        start += moved
                        left -= moved
                    late = max(late, time.monotonic() - t0 - due / args.rate)
                    sent = due
                now = time.monotonic()
                if now >= next_scrape:
                    samples.append((now - t0, sent, _scrape(port)))
                    next_scrape += 5
                time.sleep(0.005)
            wrote_s = time.monotonic() - t0
            # drained: processed reaches sent (or stops moving)
            drain_t0 = time.monotonic()
            last = _scrape(port)
            while last["processed"] + last["shed"] < n and time.monotonic() - drain_t0 < 30:
                time.sleep(0.05)
                last = _scrape(port)
            drain_s = time.monotonic() - drain_t0
            rss = _rss_mb(mon.pid)
        finally:
            os.close(fd)
            os.close(w)
            mon.terminate()
            rc = mon.wait(60)
    out = [f"sustained: {n:,} flows piped at {args.rate:,} flows/s (overload: {args.overload}); written in "
           f"{wrote_s:.2f} s ({n / wrote_s:,.0f} flows/s), at most {late * 1000:.0f} ms behind schedule; exit code {rc}"]
    prev_t, prev_p = 0.0, 0.0
    rates, backlog = [], []
    for t, s_, m in samples:
        rates.append((m["processed"] - prev_p) / (t - prev_t))
        backlog.append(s_ - m["processed"])
        prev_t, prev_p = t, m["processed"]
        out.append(f"  t={t:5.1f}s sent {s_:>11,} processed {m['processed']:>11,.0f} "
                   f"({rates[-1]:>9,.0f}/s over the interval) queue {m['queue']:>9,.0f} lines shed {m['shed']:,.0f}")
    out.append(f"after the last write: processed {last['processed']:,.0f} of {n:,} within {drain_s:.2f} s; "
               f"shed {last['shed']:,.0f}; decode errors {last['decode_errors']:,.0f}; largest backlog at a scrape "
               f"{max(backlog, default=0):,.0f} lines; RSS {rss:.0f} MB")
    # block: the pipe (1 MB, ~3 ms at 200k flows/s) fills whenever the monitor's queue is full, so
    # a write held back by more than a batch's delay means the monitor did not keep up
    ok = last["shed"] == 0 and last["processed"] >= n and drain_s <= 2.0 and late <= 0.25
    out.append(f"{args.rate:,} flows/s sustained: {'yes' if ok else 'no'}")
    for ln in out:
        print(ln, flush=True)
    return out


# ---------------------------------------------------------------------------------------- relay
BARE_CLIENT = """
import sys, time, grpc, grpc.experimental
from flowtrail.sources.proto import observer_pb2
req = observer_pb2.GetFlowsRequest()
req.since.seconds = 1
ch = grpc.insecure_channel(sys.argv[1], options=[(grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1)])
call = ch.unary_stream("/observer.Observer/GetFlows", request_serializer=observer_pb2.GetFlowsRequest.SerializeToString,
                       response_deserializer=None)
n = 0
for _ in call(req):
    if not n:  # from the first response on: the server's start of the stream is not the client's cost
        t, c = time.perf_counter(), time.process_time()
    n += 1
print(n - 1, time.perf_counter() - t, time.process_time() - c)
"""


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def relay(args: argparse.Namespace) -> list[str]:
    src = REPO / "bench" / "data" / "flows-1000000.jsonl"
    if not src.exists():
        subprocess.run([sys.executable, str(REPO / "bench" / "genflows.py"), "-n", "1000000", "-o", str(src)],
                       check=True, stdout=subprocess.DEVNULL)
    out: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        part = Path(tmp) / "flows.jsonl"
        with open(src, "rb") as fin, open(part, "wb") as fout:
            for _ in range(args.flows):
                fout.write(fin.readline())
        port = free_port()
        server = subprocess.Popen([FT, "relay-replay", "--input-file", str(part), "--listen", f"127.0.0.1:{port}"],
                                  stderr=subprocess.PIPE, text=True)
        try:
            assert server.stderr is not None
            first = server.stderr.readline()  # printed once the file is parsed and the port is open
            if "serving" not in first:
                raise SystemExit(f"relay-replay did not start: {first}")
            addr = f"127.0.0.1:{port}"
            c0 = _cpu_s(server.pid)
            res = subprocess.run([sys.executable, "-c", BARE_CLIENT, addr], capture_output=True, text=True, check=True)
            n, wall, cpu = res.stdout.split()
            srv_cpu = _cpu_s(server.pid) - c0
            line = (f"bare grpcio client (responses as bytes): {int(n):,} in {float(wall):.2f} s = "
                    f"{int(n) / float(wall):,.0f} flows/s; client CPU {float(cpu) / int(n) * 1e6:.1f} us/flow, "
                    f"server CPU {srv_cpu / int(n) * 1e6:.1f} us/flow")
            print(line, flush=True)
            out.append(line)
            cfg = Path(tmp) / "relay.yaml"
            cfg.write_text(f'sources:\n  - {{type: relay, address: "{addr}", since: "2000-01-01T00:00:00Z"}}\n')
            mport = free_port()
            c0 = _cpu_s(server.pid)
            mon = subprocess.Popen([FT, "run", "--config", str(cfg), "--alerts-file", str(Path(tmp) / "alerts.jsonl"),
                                    "--metrics-listen", f"127.0.0.1:{mport}", "--log-level", "warning"])
            try:
                t0 = m0 = None
                done = 0.0
                deadline = time.monotonic() + 600
                while time.monotonic() < deadline:
                    time.sleep(0.1)
                    try:
                        done = _scrape(mport)["processed"]
                    except OSError:
                        continue  # not listening yet
                    if done and t0 is None:
                        # from the first counted flows on: start-up is not part of the rate
                        t0, n0, m0 = time.monotonic(), done, _cpu_s(mon.pid)
                    if done >= args.flows:
                        break
                if t0 is None or m0 is None:
                    raise SystemExit("the monitor processed nothing")
                wall_s = time.monotonic() - t0
                mon_cpu = _cpu_s(mon.pid) - m0
            finally:
                mon.terminate()
                mon.wait(60)
            srv_cpu = _cpu_s(server.pid) - c0
            got = done - n0
            line = (f"flowtrail run --relay: {got:,.0f} flows in {wall_s:.2f} s = {got / wall_s:,.0f} flows/s; "
                    f"monitor CPU {mon_cpu / got * 1e6:.1f} us/flow, server CPU {srv_cpu / args.flows * 1e6:.1f} us/flow "
                    f"(whole replay)")
            print(line, flush=True)
            out.append(line)
        finally:
            server.terminate()
            server.wait(30)
    return out


# ---------------------------------------------------------------------------------------- soak
def soak(args: argparse.Namespace) -> list[str]:
    # hours of flow time at a modest simulated rate: the content repeats no pattern the engine could
    # exploit, and the simulator streams it so no multi-GB file is needed
    sim = subprocess.Popen([FT, "simulate", "-q", "--duration", "24h", "--workers", "1", "-o", "-",
                            "--rate", str(args.rate), "--scenario", "port-scan", "--scenario", "dns-c2"],
                           stdout=subprocess.PIPE)
    port = free_port()
    mon = subprocess.Popen([FT, "run", "--input-file", "-", "--alerts-file", os.devnull, "--overload", args.overload,
                            "--metrics-listen", f"127.0.0.1:{port}", "--log-level", "error"],
                           stdin=subprocess.PIPE)
    assert sim.stdout is not None and mon.stdin is not None
    samples: list[tuple[float, float]] = []
    sent = 0
    t0 = time.monotonic()
    next_sample = t0
    try:
        while time.monotonic() - t0 < args.seconds:
            # pace: write what is due, in 10 ms steps
            due = int((time.monotonic() - t0) * args.rate)
            while sent < due:
                block = sim.stdout.read(256 << 10)
                if not block:
                    break
                mon.stdin.write(block)
                sent += block.count(b"\n")
            if time.monotonic() >= next_sample:
                rss = _rss_mb(mon.pid)
                samples.append((time.monotonic() - t0, rss))
                print(f"t={samples[-1][0]:6.0f}s sent={sent:>11,} rss={rss:7.1f} MB", flush=True)
                next_sample += 5
            time.sleep(0.01)
    finally:
        metrics = ""
        with contextlib.suppress(OSError):
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        mon.stdin.close()
        mon.terminate()
        mon.wait(60)
        sim.kill()
    half = [s for s in samples if s[0] >= args.seconds / 2]
    slope = float(np.polyfit([s[0] for s in half], [s[1] for s in half], 1)[0]) * 60 if len(half) > 2 else 0.0
    processed = re.search(r"^flowtrail_flows_processed_total (\S+)", metrics, re.M)
    shed = sum(float(x) for x in re.findall(r"^flowtrail_flows_shed_total\{[^}]*\} (\S+)", metrics, re.M))
    out = [f"soak {args.seconds}s at {args.rate:,} flows/s: sent {sent:,}, processed "
           f"{float(processed.group(1)) if processed else float('nan'):,.0f}, shed {shed:,.0f}",
           f"RSS first {samples[0][1]:.0f} MB, max {max(s[1] for s in samples):.0f} MB, last {samples[-1][1]:.0f} MB; "
           f"second-half slope {slope:+.2f} MB/min"]
    for ln in out:
        print(ln)
    return out


def _rss_mb(pid: int) -> float:
    try:
        for ln in Path(f"/proc/{pid}/status").read_text().splitlines():
            if ln.startswith("VmRSS:"):
                return int(ln.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["throughput", "latency", "sustained", "relay", "soak"])
    ap.add_argument("--flows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--decode-workers", type=int, default=2, help="throughput: the worker processes of the second run case")
    ap.add_argument("--rate", type=int, default=None)
    ap.add_argument("--seconds", type=int, default=None)
    ap.add_argument("--config", default=None, help="flowtrail run --config for the monitor under test")
    ap.add_argument("--overload", choices=["block", "shed"], default="shed",
                    help="soak, sustained: the monitor's overload policy")
    args = ap.parse_args(argv)
    if args.mode == "throughput":
        throughput(args)
    elif args.mode == "latency":
        args.rate = args.rate or 20_000
        args.seconds = args.seconds or 60
        latency(args)
    elif args.mode == "sustained":
        args.rate = args.rate or 200_000
        args.seconds = args.seconds or 20
        sustained(args)
    elif args.mode == "relay":
        args.flows = args.flows if args.flows != 1_000_000 else 200_000
        relay(args)
    else:
        args.rate = args.rate or 40_000
        args.seconds = args.seconds or 600
        soak(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
