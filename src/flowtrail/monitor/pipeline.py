"""The live monitor: sources → decode → enrich → filter → metrics, export → detect → alert sinks.

Each source runs in its own thread and puts chunks of raw lines on one bounded queue
(monitor/queue.py). The processor takes micro-batches off it — as many lines as are waiting, up to
`batch_max_flows`, or whatever arrived within `batch_max_delay` of the oldest one — and runs every
stage on the batch as a whole. The detection engine keeps its window state between batches, so the
alerts equal those of `flowtrail detect` over the same flows, however they were cut into batches.

Offsets of followed files are committed only after a batch's alerts are on the sinks' disk spools
(when a spool directory is configured), so a crash loses no alert and repeats at most the lines
read since the last saved offset (saved at most 5 times a second); a clean stop repeats nothing.

With a state directory the engine's state is saved between batches every checkpoint interval and
at stop, together with the positions of the input it covers (detect/state.py), so a restart goes
on with the same windows, open alerts and suppressions.

Alerts are handed to the sinks when they open. Sinks with a `repeat_interval` (Alertmanager by
default) get the alert again, with its current count and last_seen and `"update": true`, at most
once per interval while it keeps gaining flows; one that stopped gaining flows is not re-sent, so
Alertmanager resolves it when its endsAt passes.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from flowtrail.detect.alerts import Alert
from flowtrail.detect.engine import Engine, events_lost
from flowtrail.detect.rules import SEVERITIES
from flowtrail.detect.state import Checkpoints
from flowtrail.filters import FilterSet
from flowtrail.monitor.queue import ChunkQueue
from flowtrail.sinks.alerting import Delivery, close_all
from flowtrail.sources.chunk import Chunk
from flowtrail.sources.decode import Decoder, Rows
from flowtrail.util import compute as pc

log = logging.getLogger("flowtrail.monitor")

MAX_LOGGED_ERRORS_PER_BATCH = 5


class Source(Protocol):
    name: str
    stats: dict[str, Any]

    def chunks(self, stop: threading.Event) -> Iterator[Chunk]: ...


class FlowOutput(Protocol):
    name: str
    paths: set[str]
    stats: dict[str, int]

    def write(self, table: pa.Table, rows: Rows) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


@dataclass
class _Prepared:
    chunks: list[Chunk]
    tables: list[pa.Table]
    decode_s: float
    reduced: list[Any] | None = None  # the workers' Reduced blocks (tables: their candidate rows)


@dataclass
class PipelineOptions:
    batch_max_flows: int = 65_536
    batch_max_delay_s: float = 0.1
    # Hubble metrics are counted over batches gathered up to this many flows or this long: each
    # metrics pass has a fixed cost of ~200 Arrow calls (~40 ms, measured on 2.5k-flow batches),
    # which on small live batches took a third of the monitor's time and delayed the alerts of the
    # batches behind it; Prometheus scrapes every 15-60 s, so a second's delay is never seen.
    # Half a full batch: a full one is counted on its own (several tables are copied into one).
    metrics_max_flows: int = 32_768
    metrics_max_delay_s: float = 1.0
    queue_max_bytes: int = 64 << 20
    overload: str = "block"
    shutdown_timeout_s: float = 10.0
    min_severity: str = "info"
    decode_workers: int = 0  # worker processes for decoding; 0: decode in the monitor's own decode thread


@dataclass
class MonitorStats:
    lines: int = 0
    flows: int = 0
    lost_events: int = 0
    decode_errors: int = 0
    filtered_out: int = 0
    batches: int = 0
    alerts: int = 0
    shed_lines: int = 0
    enriched: int = 0
    alert_updates: int = 0  # alerts re-sent because they kept gaining flows


@dataclass
class _Sent:
    alert: Alert
    at: float  # time.monotonic() of the last send
    last_seen: int  # the alert's last_seen and count as last sent
    count: int


class _Repeater:
    """The alerts handed to the sinks that want updates, re-sent at most every `interval_s` while
    they gain flows, forgotten once they cannot gain any."""

    def __init__(self, interval_s: float, outputs: list[Delivery]) -> None:
        self.interval_s = interval_s
        self.outputs = outputs
        self.sent: dict[str, _Sent] = {}

    def track(self, alerts: list[Alert], now: float) -> None:
        for a in alerts:
            self.sent[a.id] = _Sent(a, now, a.last_seen, a.count)

    def due(self, now: float, growing: Callable[[Alert], bool], final: bool = False) -> list[Alert]:
        """Alerts that grew since they were last sent `interval_s` ago or more (`final`: however
        recently), now marked as sent."""
        out: list[Alert] = []
        for key, s in list(self.sent.items()):
            if not final and now - s.at < self.interval_s:
                continue
            a = s.alert
            if a.last_seen != s.last_seen or a.count != s.count:
                out.append(a)
                s.at, s.last_seen, s.count = now, a.last_seen, a.count
            elif not growing(a):
                del self.sent[key]
        return out


class Monitor:
    def __init__(self, sources: list[Source], engine: Engine | None, *,
                 alert_outputs: list[Delivery], flow_outputs: Sequence[FlowOutput] | None = None,
                 flow_filter: FilterSet | None = None, enricher: Any = None, hubble_metrics: Any = None,
                 own_metrics: Any = None, options: PipelineOptions | None = None,
                 checkpoints: Checkpoints | None = None) -> None:
        """`checkpoints`: where the engine's state is saved (its restore happened before: the
        sources must not have read their positions yet)."""
        self.sources = sources
        self.engine = engine
        self.checkpoints = checkpoints if engine is not None else None
        self.alert_outputs = alert_outputs
        self.flow_outputs: list[FlowOutput] = list(flow_outputs or [])
        self.filter = flow_filter
        self.enricher = enricher
        self.hubble_metrics = hubble_metrics
        self.own = own_metrics
        self.opts = options or PipelineOptions()
        self.stats = MonitorStats()
        self.queue = ChunkQueue(self.opts.queue_max_bytes, self._shed)
        paths: set[str] = set()
        if engine is not None:
            paths |= set(engine.paths)
        if flow_filter is not None:
            paths |= flow_filter.paths
        if enricher is not None:
            paths |= set(enricher.paths)
        if hubble_metrics is not None:
            paths |= set(hubble_metrics.paths)
        for fo in self.flow_outputs:
            paths |= set(fo.paths)
        self.decoder = Decoder(sorted(paths))
        self.pool = None
        if self.opts.decode_workers > 0:
            from flowtrail.monitor.decodepool import DecodePool, ReduceSpec
            spec = None
            if enricher is None and not self.flow_outputs:
                # nothing needs every decoded row in this process: the workers reduce blocks
                allow, deny = flow_filter.raw() if flow_filter is not None else ([], [])
                spec = ReduceSpec(metrics=hubble_metrics.specs if hubble_metrics is not None else None,
                                  prefilter=engine.prefilter() if engine is not None else ['"lost_events"'],
                                  allow=allow, deny=deny)
            self.pool = DecodePool(paths, self.opts.decode_workers, spec)
        self._min_sev = SEVERITIES.index(self.opts.min_severity)
        self.stop_sources = threading.Event()
        self._threads: list[threading.Thread] = []
        self._source_done: dict[str, bool] = {}
        self.heartbeat = time.monotonic()
        self.started = False
        self.newest_flow_ns: int | None = None
        self._synced: dict[tuple[str, ...], int] = {}
        self._prepared: queue.Queue[_Prepared | None] = queue.Queue(maxsize=2)
        self.failed: list[str] = []  # sources that ended with an error
        self._stage_done = threading.Event()
        self._last_gauges = 0.0
        self._shed_logged = -1e9
        by_interval: dict[float, list[Delivery]] = {}
        for o in alert_outputs:
            every = getattr(o, "repeat_interval_s", None)
            if every:
                by_interval.setdefault(float(every), []).append(o)
        self._repeaters = [_Repeater(every, outs) for every, outs in sorted(by_interval.items())]
        # how often the repeaters look: a quarter of the shortest interval, at most once a second
        self._repeat_check_s = min([1.0] + [r.interval_s / 4 for r in self._repeaters])
        self._repeat_checked = 0.0
        self._metrics_tables: list[pa.Table] = []  # counted by Hubble metrics at the next _flush_metrics
        self._metrics_rows = 0
        self._metrics_flows = 0  # their flows, for flowtrail_flows_processed_total
        self._metrics_since = 0.0  # time.monotonic() of the oldest table waiting

    # -- health ---------------------------------------------------------------------------------------
    def health(self) -> tuple[bool, dict[str, Any]]:
        stalled = time.monotonic() - self.heartbeat
        ok = stalled < max(30.0, 10 * self.opts.batch_max_delay_s) and not self.failed
        return ok, {"status": "ok" if ok else ("source failed" if self.failed else "stalled"),
                    "processor_idle_s": round(stalled, 3), "queue_lines": self.queue.lines,
                    **({"failed": self.failed} if self.failed else {})}

    def ready(self) -> tuple[bool, dict[str, Any]]:
        conn = {s.name: bool(s.stats.get("connected", True)) for s in self.sources}
        ok = self.started and (not conn or any(conn.values()))
        return ok, {"status": "ready" if ok else "not ready", "sources": conn}

    # -- sources ---------------------------------------------------------------------------------------
    def _shed(self, ch: Chunk) -> None:
        self.stats.shed_lines += ch.lines
        if self.own is not None:
            self.own.flows_shed.labels(reason="queue_full").inc(ch.lines)
        now = time.monotonic()
        if now - self._shed_logged >= 10.0:
            # one line per 10 s however much is shed; the counter has the exact figure
            self._shed_logged = now
            log.warning("overload: shedding input (queue full at %d bytes); %d lines shed so far, last from %s",
                        self.queue.max_bytes, self.stats.shed_lines, ch.source)

    def _pump(self, src: Source) -> None:
        policy = getattr(src, "overload", None) or self.opts.overload
        try:
            for ch in src.chunks(self.stop_sources):
                self.queue.put(ch, policy, self.stop_sources)
        except Exception as exc:
            # a source that cannot go on (bad TLS files, a filter the relay rejects) ends the
            # monitor with an error, so a supervisor restarts it and the failure is visible
            log.error("source %s failed: %s", src.name, exc, exc_info=not _expected(exc))
            self.failed.append(f"{src.name}: {exc}")
        finally:
            self._source_done[src.name] = True

    def _warm_up(self) -> None:
        """Pay one-time costs before any input waits behind them. The first batch otherwise
        imported pyarrow.compute (~50 ms: Arrow's own methods need it) and parsed the Public
        Suffix List for the DNS rules (~0.1 s), while a fast source filled the queue."""
        import pyarrow.compute  # noqa: F401

        if self.engine is not None:
            from flowtrail.enrich.dnsname import _psl
            _psl()

    def start(self) -> None:
        self._warm_up()
        if self.engine is not None and self._repeaters:
            # restored alerts that were sent before the restart: re-sent too if they keep growing
            now = time.monotonic()
            for r in self._repeaters:
                r.track(self.engine.handed_out(), now)
        for src in self.sources:
            self._source_done[src.name] = False
            t = threading.Thread(target=self._pump, args=(src,), name=f"source:{src.name}", daemon=True)
            t.start()
            self._threads.append(t)
        self.started = True

    def sources_done(self) -> bool:
        return all(self._source_done.values())

    # -- main loop -------------------------------------------------------------------------------------
    def run(self, stop: threading.Event, exit_when_sources_end: bool = False) -> None:
        """Process until `stop` is set (then drain and flush) or, with `exit_when_sources_end`,
        until every source has ended and the queue is empty.

        Two stages overlap: a decode thread (decode, enrich, filter, export) and this thread
        (metrics, detection, alerts, offsets). Arrow's JSON reader and most compute kernels release
        the GIL, so on two cores the stages run side by side; order is kept end to end."""
        if not self.started:
            self.start()
        stage = threading.Thread(target=self._decode_loop, name="decode", daemon=True)
        stage.start()
        ended = False
        while not stop.is_set():
            self.heartbeat = time.monotonic()
            if self.failed and self.sources_done() and not len(self.queue):
                break
            if exit_when_sources_end and self.sources_done():
                self._stage_done.set()  # the decode stage drains the queue, then ends the stream
            try:
                p = self._prepared.get(timeout=0.25)
            except queue.Empty:
                pass
            else:
                if p is None:
                    ended = True
                    break
                self.finish(p)
            if self._metrics_tables and time.monotonic() - self._metrics_since >= self.opts.metrics_max_delay_s:
                self._flush_metrics()
            if self._repeaters and time.monotonic() - self._repeat_checked >= self._repeat_check_s:
                self.send_updates()
            if time.monotonic() - self._last_gauges >= 0.25:
                self._last_gauges = time.monotonic()
                self._gauges()
        self.shutdown(ended)

    def _decode_loop(self) -> None:
        try:
            while True:
                batch = self.queue.get_batch(self.opts.batch_max_flows, self.opts.batch_max_delay_s, 0.2)
                if batch:
                    # blocks while two prepared batches wait: back-pressure reaches the sources
                    self._prepared.put(self.prepare(batch))
                elif self._stage_done.is_set() and not len(self.queue):
                    break
        except Exception as exc:
            # e.g. a decode worker killed (out of memory): the monitor stops with an error, so its
            # supervisor restarts it; the failed batch's offsets were not committed, so the
            # restart reads it again
            log.exception("decode stage failed")
            self.failed.append(f"decode stage: {type(exc).__name__}: {exc}")
        self._prepared.put(None)

    def shutdown(self, ended: bool = False) -> None:
        """Stop the sources, process what they already delivered, flush every sink."""
        self.stop_sources.set()
        deadline = time.monotonic() + self.opts.shutdown_timeout_s
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._stage_done.set()
        while not ended and time.monotonic() < deadline:
            try:
                p = self._prepared.get(timeout=max(0.01, min(0.25, deadline - time.monotonic())))
            except queue.Empty:
                continue
            if p is None:
                break
            self.finish(p)
        left = self.queue.lines
        if left:
            log.warning("shutdown: %d queued lines not processed within %.0fs; their offsets are not "
                        "committed, so they are read again at the next start", left, self.opts.shutdown_timeout_s)
        self._flush_metrics()
        if self._repeaters:
            # the counts the alerts reached since they were last sent, before the sinks close
            self.send_updates(final=True)
        # every sink shares one deadline
        if self.alert_outputs and not close_all(self.alert_outputs, max(0.5, deadline - time.monotonic())):
            log.warning("shutdown: an alert sink did not confirm delivery; undelivered alerts stay spooled")
        for fo in self.flow_outputs:
            try:
                fo.flush()
                fo.close()
            except Exception:
                log.exception("closing exporter %s", fo.name)
        for src in self.sources:
            close = getattr(src, "close", None)
            if close is not None:
                close()
        if self.checkpoints is not None and self.engine is not None:
            # after the sources saved their final positions: the state covers exactly those
            self.checkpoints.save(self.engine, self.sources)
        if self.pool is not None:
            self.pool.close()
        self._gauges()

    def _gauges(self) -> None:
        """Copy the components' own counters into the metrics registry (they count in plain ints so
        that none of them depends on Prometheus)."""
        own = self.own
        if own is None:
            return
        own.queue_depth.labels(queue="sources").set(self.queue.lines)
        if self.newest_flow_ns is not None:
            own.note_flow_time(self.newest_flow_ns / 1e9)
        for out in self.alert_outputs:
            name = getattr(getattr(out, "sink", None), "name", None) or type(out).__name__
            st = out.stats
            self._sync(own.sink_sent.labels(sink=name), ("sink_sent", name), st.get("sent", 0))
            self._sync(own.sink_failures.labels(sink=name), ("sink_failures", name), st.get("failures", 0))
            own.sink_spooled.labels(sink=name).set(st.get("spooled", 0))
        for fo in self.flow_outputs:
            for outcome in ("exported", "filtered", "expired", "sampled", "rate_limited", "errors", "dropped"):
                self._sync(own.export_flows.labels(exporter=fo.name, outcome=outcome),
                           ("export", fo.name, outcome), fo.stats.get(outcome, 0))
            for reason, n in getattr(fo, "drops", {}).items():
                self._sync(own.export_dropped.labels(exporter=fo.name, reason=reason),
                           ("export_dropped", fo.name, reason), n)
            if "retries" in fo.stats:
                self._sync(own.export_retries.labels(exporter=fo.name), ("export_retries", fo.name), fo.stats["retries"])
                own.export_pending.labels(exporter=fo.name).set(fo.stats["pending"])
                own.export_spool_bytes.labels(exporter=fo.name).set(fo.stats.get("spool_bytes", 0))
        for src in self.sources:
            st = src.stats
            self._sync(own.source_reconnects.labels(source=src.name), ("reconnects", src.name), st.get("reconnects", 0))
            own.source_connected.labels(source=src.name).set(1 if st.get("connected", True) else 0)
            if "bytes" in st:
                self._sync(own.input_bytes.labels(source=src.name), ("bytes", src.name), st["bytes"])

    def _sync(self, counter: Any, key: tuple[str, ...], value: int) -> None:
        last = self._synced.get(key, 0)
        if value > last:
            counter.inc(value - last)
            self._synced[key] = value

    # -- one batch -------------------------------------------------------------------------------------
    def process(self, chunks: list[Chunk]) -> list[dict[str, Any]]:
        """Run every stage over one micro-batch; returns the alerts it raised (as JSON objects).
        Its Hubble metrics are counted before this returns."""
        out = self.finish(self.prepare(chunks))
        self._flush_metrics()
        return out

    def prepare(self, chunks: list[Chunk]) -> _Prepared:
        """Decode, enrich, filter and export one micro-batch."""
        t0 = time.perf_counter()
        if self.pool is not None and self.pool.reducing:
            return self._prepare_reduced(chunks, t0)
        own = self.own
        tables: list[pa.Table] = []
        logged = 0
        blocks = _merged(chunks)
        futures = [self.pool.submit(ch) for ch in blocks] if self.pool is not None else None
        for i, ch in enumerate(blocks):
            if futures is not None:
                assert self.pool is not None
                dec = self.pool.result(futures[i], ch)
            else:
                dec = self.decoder.decode_block(ch.data, ch.source, ch.first_line)
            logged = self._decoded(ch, dec.stats, dec.errors, logged)
            table, rows = dec.table, dec.rows
            if table is None or table.num_rows == 0:
                continue
            if own is not None:
                own.flows_received.labels(source=ch.source).inc(dec.stats.flows)
            if self.enricher is not None:
                table, rows, n = self.enricher.enrich(table, rows)
                self.stats.enriched += n
            if self.filter is not None:
                mask = self.filter.mask(table)
                if not mask.all():
                    idx = np.flatnonzero(mask)
                    self.stats.filtered_out += table.num_rows - len(idx)
                    table = table.take(pa.array(idx))
                    rows = rows.take(idx)
            if table.num_rows == 0:
                continue
            for fo in self.flow_outputs:
                try:
                    fo.write(table, rows)
                except Exception:
                    log.exception("exporter %s failed on a batch", fo.name)
            tables.append(table)
        return _Prepared(chunks, tables, time.perf_counter() - t0)

    def _prepare_reduced(self, chunks: list[Chunk], t0: float) -> _Prepared:
        """The batch cut into one block per worker, each reduced by a worker."""
        from flowtrail.monitor.decodepool import split_evenly
        assert self.pool is not None
        runs = _runs(chunks, max(MERGE_MAX_BYTES, split_evenly(chunks, self.pool.workers)))
        futures = [self.pool.submit_run(run) for run in runs]
        reduced = []
        logged = 0
        for fut, run in zip(futures, runs, strict=True):
            ch = run[0]
            red = self.pool.result(fut)
            logged = self._decoded(ch, red.stats, red.errors, logged)
            self.stats.filtered_out += red.filtered_out
            if self.own is not None and red.stats.flows:
                self.own.flows_received.labels(source=ch.source).inc(red.stats.flows)
            reduced.append(red)
        return _Prepared(chunks, [r.table for r in reduced if r.table.num_rows], time.perf_counter() - t0, reduced)

    def _decoded(self, ch: Chunk, stats: Any, errors: list[Any], logged: int) -> int:
        """Count a decoded block's lines and errors; log errors while fewer than
        MAX_LOGGED_ERRORS_PER_BATCH were (``logged``) in this batch. Returns the new count."""
        self.stats.lines += stats.lines
        if errors:
            self.stats.decode_errors += len(errors)
            if self.own is not None:
                self.own.decode_errors.labels(source=ch.source).inc(len(errors))
            for err in errors[:max(0, MAX_LOGGED_ERRORS_PER_BATCH - logged)]:
                log.warning("skipped bad line: %s", err)
                logged += 1
        return logged

    def finish(self, p: _Prepared) -> list[dict[str, Any]]:
        """Metrics, detection and alerts for a prepared batch; then its offsets are committed."""
        chunks, tables, own = p.chunks, p.tables, self.own
        new: list[dict[str, Any]] = []
        if tables or p.reduced:
            big = (pa.concat_tables(tables) if len(tables) > 1 else tables[0]) if tables else pa.table({})
            n_lost = lost_total = 0
            if "lost_events" in big.column_names:
                lost = big.column("lost_events")
                n_lost = len(big) - lost.null_count
                if n_lost:
                    lost_total = events_lost(lost)
            rows = big.num_rows if p.reduced is None else sum(r.rows for r in p.reduced)
            self.stats.lost_events += lost_total
            self.stats.flows += rows - n_lost
            if own is not None and lost_total:
                own.lost_events.labels(source=chunks[0].source).inc(lost_total)
            clock = None
            if p.reduced is not None:
                clock = (pa.concat_arrays([r.times for r in p.reduced]),
                         pa.concat_arrays([r.nodes.cast(pa.string()) for r in p.reduced]))
            t_detect = time.perf_counter()
            if self.engine is not None:
                self.engine.process(big, clock)
                new = self._emit(self.engine.drain(), chunks)
                if self.engine.t_max is not None:
                    self.newest_flow_ns = self.engine.t_max
            elif clock is not None:
                self._note_ns(clock[0])
            elif "time" in big.column_names:
                self._note_time(big)
            if own is not None:
                own.batch_seconds.labels(stage="decode").observe(p.decode_s)
                own.batch_seconds.labels(stage="detect").observe(time.perf_counter() - t_detect)
            if p.reduced is not None:
                # counted by the workers: applied in input order, at once
                t0 = time.perf_counter()
                if self.hubble_metrics is not None:
                    for r in p.reduced:
                        if r.increments is not None:
                            self.hubble_metrics.apply(r.increments)
                if own is not None:
                    own.batch_seconds.labels(stage="metrics").observe(time.perf_counter() - t0)
                    own.flows_processed.inc(rows - n_lost)
            else:
                if not self._metrics_tables:
                    self._metrics_since = time.monotonic()
                self._metrics_tables.append(big)
                self._metrics_rows += big.num_rows
                self._metrics_flows += big.num_rows - n_lost
                if self._metrics_rows >= self.opts.metrics_max_flows:
                    self._flush_metrics()
        for fo in self.flow_outputs:
            # the exported rows are on disk before their input offsets are committed
            getattr(fo, "persist", lambda _t: True)(5.0)
        for ch in chunks:
            if ch.commit is not None:
                ch.commit()
        self.stats.batches += 1
        if self.checkpoints is not None and self.engine is not None and self.checkpoints.due():
            # between batches, on this thread: the committed positions are exactly those of the state
            self.checkpoints.save(self.engine, self.sources)
        return new

    def _flush_metrics(self) -> None:
        """Count the gathered tables into the Hubble metrics (one pass), then the processed flows."""
        if not self._metrics_tables:
            return
        tables, flows = self._metrics_tables, self._metrics_flows
        self._metrics_tables, self._metrics_rows, self._metrics_flows = [], 0, 0
        t0 = time.perf_counter()
        if self.hubble_metrics is not None:
            self.hubble_metrics.observe(pa.concat_tables(tables) if len(tables) > 1 else tables[0])
        if self.own is not None:
            self.own.batch_seconds.labels(stage="metrics").observe(time.perf_counter() - t0)
            # last: once this counter covers a flow, every metric and alert of it is out
            self.own.flows_processed.inc(flows)

    def _note_ns(self, times: pa.Array) -> None:
        t = pc.max(times).as_py() if len(times) else None
        if t is not None and (self.newest_flow_ns is None or t > self.newest_flow_ns):
            self.newest_flow_ns = t

    def _note_time(self, big: pa.Table) -> None:
        try:
            times = pc.cast(pc.cast(big.column("time"), pa.timestamp("ns", tz="UTC")), pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return
        self._note_ns(times)

    def _emit(self, alerts: list[Alert], chunks: list[Chunk]) -> list[dict[str, Any]]:
        picked = [a for a in alerts if SEVERITIES.index(a.severity) >= self._min_sev]
        if self.own is not None:
            for a in alerts:
                if SEVERITIES.index(a.severity) < self._min_sev:
                    self.own.alerts_suppressed.labels(rule=a.rule, reason="min_severity").inc()
        if not picked:
            return []
        out = [a.to_json() for a in picked]
        for o in self.alert_outputs:
            o.submit(out)
            # on disk before the offsets of the lines they came from are committed
            o.persist()
        if self._repeaters:
            now = time.monotonic()
            for r in self._repeaters:
                r.track(picked, now)
        # latency is counted from the oldest chunk of the batch: an upper bound for every alert in it
        lat = (time.monotonic_ns() - min(ch.received_ns for ch in chunks)) / 1e9
        self.stats.alerts += len(out)
        if self.own is not None:
            for a in picked:
                self.own.alerts.labels(rule=a.rule, severity=a.severity, category=a.category).inc()
                self.own.alert_latency.observe(lat)
        return out

    def send_updates(self, final: bool = False) -> int:
        """Re-send the alerts that gained flows since they were last sent to the sinks with a
        repeat interval (`final`: however recently they were sent); returns how many."""
        self._repeat_checked = now = time.monotonic()
        if self.engine is None:
            return 0
        n = 0
        for r in self._repeaters:
            due = r.due(now, self.engine.growing, final)
            if not due:
                continue
            docs = [{**a.to_json(), "update": True} for a in due]
            for o in r.outputs:
                o.submit(docs)
            n += len(due)
        self.stats.alert_updates += n
        return n


MERGE_MAX_BYTES = 8 << 20


def _runs(chunks: list[Chunk], max_bytes: int = MERGE_MAX_BYTES) -> list[list[Chunk]]:
    """Consecutive chunks of one source in runs of up to ``max_bytes``: a pipe or a relay hands
    over a few dozen lines at a time, and each decode call has a fixed cost that would otherwise
    dominate (measured: 35-line chunks from a pipe ran 7x slower)."""
    out: list[list[Chunk]] = []
    run: list[Chunk] = []
    size = 0
    for ch in chunks:
        if run and (ch.source != run[-1].source or ch.first_line != run[-1].first_line + run[-1].lines
                    or size + len(ch.data) > max_bytes or not run[-1].lines):
            out.append(run)
            run, size = [], 0
        run.append(ch)
        size += len(ch.data)
    if run:
        out.append(run)
    return out


def _merged(chunks: list[Chunk]) -> list[Chunk]:
    """The runs of :func:`_runs`, each joined into one chunk."""
    return [run[0] if len(run) == 1 else
            Chunk(b"".join(c.data for c in run), run[0].source, run[0].first_line, run[0].received_ns, None,
                  sum(c.lines for c in run))
            for run in _runs(chunks)]


def _expected(exc: BaseException) -> bool:
    """Errors that explain themselves (no traceback in the log)."""
    return type(exc).__name__ in ("RelayError", "OSError", "FileNotFoundError", "PermissionError")
