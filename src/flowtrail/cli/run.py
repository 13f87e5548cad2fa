"""`flowtrail run`: the long-running monitor, built from a config file and flags."""

from __future__ import annotations

import logging
import re
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click

from flowtrail.monitor import config as cfgmod
from flowtrail.monitor.config import ConfigError
from flowtrail.util.memory import reuse_large_allocations

log = logging.getLogger("flowtrail.run")


def _apply_flags(cfg: dict[str, Any], **f: Any) -> dict[str, Any]:
    """Flags add to or override the config file."""
    start = f["start"] or None
    for path in f["inputs"]:
        if path == "-":
            cfg["sources"].append({"type": "stdin"})
        else:
            src: dict[str, Any] = {"type": "file", "path": path}
            if start:
                src["start"] = start
            cfg["sources"].append(src)
    if f["relay"]:
        relay: dict[str, Any] = {"type": "relay", "address": f["relay"]}
        for k in ("tls", "tls_allow_insecure", "tls_client_cert_file", "tls_client_key_file", "tls_server_name"):
            if f[k]:
                relay[k] = f[k]
        if f["tls_ca_cert_files"]:
            relay["tls_ca_cert_files"] = list(f["tls_ca_cert_files"])
        if f["since"]:
            relay["since"] = f["since"]
        cfg["sources"].append(relay)
    if f["metrics_listen"]:
        cfg["metrics"]["listen"] = f["metrics_listen"]
    if f["alerts_file"]:
        cfg["alerts"].append({"type": "file", "path": f["alerts_file"]})
    det = cfg["detect"]
    det["policies"] = [*det["policies"], *f["policies"]]
    det["rules"] = [*det["rules"], *f["rule_dirs"]]
    det["intel"] = [*det["intel"], *f["intel"]]
    if f["baseline"]:
        det["baseline"] = f["baseline"]
    if f["inventory"]:
        det["inventory"] = f["inventory"]
    if f["min_severity"]:
        det["min_severity"] = f["min_severity"]
    if f["state_dir"]:
        cfg["state_dir"] = f["state_dir"]
    if f["k8s_snapshot"]:
        cfg["enrich"]["kubernetes"] = {"snapshot": list(f["k8s_snapshot"])}
    elif f["kubeconfig"] or f["in_cluster"]:
        cfg["enrich"]["kubernetes"] = {"watch": True, "kubeconfig": f["kubeconfig"], "in_cluster": f["in_cluster"]}
    if f["cluster_name"]:
        if not cfg["enrich"]["kubernetes"]:
            raise ConfigError("--cluster-name needs Kubernetes enrichment (--k8s-snapshot, --kubeconfig or --in-cluster)")
        cfg["enrich"]["kubernetes"]["cluster"] = f["cluster_name"]
    if f["log_level"]:
        cfg["log"]["level"] = f["log_level"]
    if f["log_format"]:
        cfg["log"]["format"] = f["log_format"]
    if f["hubble_metrics"]:
        from flowtrail.metrics.hubble import split_metric_list
        cfg["metrics"]["hubble"] = split_metric_list(f["hubble_metrics"])
    if f["overload"]:
        cfg["pipeline"]["overload"] = f["overload"]
    # the merged result must still satisfy the schema (flags can carry bad values too)
    return cfgmod.validate(cfg, "flags")


def build_monitor(cfg: dict[str, Any], *, replay: bool = False) -> tuple[Any, Any]:
    """The Monitor and its metrics server (None without `metrics.listen`) from a validated config."""
    from flowtrail.cli.detect import enrichment_from, prepare_rules
    from flowtrail.detect.baseline import Baseline, BaselineError
    from flowtrail.detect.engine import Engine
    from flowtrail.detect.rules import RuleError
    from flowtrail.filters import FilterSet
    from flowtrail.monitor.pipeline import Monitor, PipelineOptions

    state_dir = Path(cfg["state_dir"]) if cfg["state_dir"] else None
    if state_dir is not None:
        state_dir.mkdir(parents=True, exist_ok=True)

    # -- detection
    det = cfg["detect"]
    engine = None
    if det["enabled"]:
        dconf = {"cluster": det["cluster"], "rules": det["overrides"]}
        enrichment = enrichment_from(dconf, tuple(det["intel"]))
        rules = prepare_rules(tuple(det["rules"]), dconf, "config", enrichment)
        baseline = None
        if det["baseline"]:
            try:
                baseline = Baseline.load(det["baseline"])
            except BaselineError as exc:
                raise ConfigError(str(exc)) from None
        replayer = None
        if det["policies"]:
            from flowtrail.cli.policy import _inventory, _load, choose_cni
            from flowtrail.policy.evaluate import Evaluator
            from flowtrail.policy.replay import Replayer
            ps = _load(tuple(det["policies"]))
            inv = _inventory(det["inventory"])
            replayer = Replayer(Evaluator(ps, choose_cni(det["cni"], inv, ps), inv), inv)
        silence = cfgmod.duration_s(det["node_silence"], "detect.node_silence")
        try:
            engine = Engine(rules, enrichment, baseline, replayer,
                            node_silence_ns=int(silence * 1e9) if silence > 0 else None)
        except RuleError as exc:
            raise ConfigError(str(exc)) from None

    # -- detection state: restored before any source reads its position, which it may move back
    checkpoints = None
    if state_dir is not None:
        from flowtrail.detect.state import STATE_FILE, Checkpoints
        if engine is None:
            # the positions move on without it: restoring it later would move them back to here
            if (state_dir / STATE_FILE).exists():
                log.info("detection is off: removing the saved detection state %s", state_dir / STATE_FILE)
                (state_dir / STATE_FILE).unlink()
        else:
            checkpoints = Checkpoints(state_dir / STATE_FILE,
                                      cfgmod.duration_s(det["checkpoint_interval"], "detect.checkpoint_interval"))
            positions = [position_file(state_dir, s) for s in cfg["sources"]]
            checkpoints.restore(engine, [p for p in positions if p is not None],
                                resume_nodes=all(p is not None for p in positions))

    # -- sources
    sources: list[Any] = []
    for i, s in enumerate(cfg["sources"]):
        if s["type"] == "file":
            from flowtrail.sources.follow import FileFollower
            sources.append(FileFollower(s["path"], position_file(state_dir, s), start=s.get("start", "beginning"),
                                        poll_interval_s=cfgmod.duration_s(s.get("poll_interval", "50ms"),
                                                                          f"sources[{i}].poll_interval"),
                                        until_eof=replay))
        elif s["type"] == "stdin":
            from flowtrail.sources.stdin import StdinSource
            sources.append(StdinSource())
        else:
            from flowtrail.sources.relay import RelayOptions, RelaySource
            opts = RelayOptions(address=s["address"], allow=s.get("allow", []), deny=s.get("deny", []),
                                since=s.get("since"), tls=s.get("tls", False),
                                tls_allow_insecure=s.get("tls_allow_insecure", False),
                                tls_ca_cert_files=s.get("tls_ca_cert_files", []),
                                tls_client_cert_file=s.get("tls_client_cert_file"),
                                tls_client_key_file=s.get("tls_client_key_file"),
                                tls_server_name=s.get("tls_server_name"))
            from flowtrail.sources.relay import RelayError
            try:
                src = RelaySource(opts, position_file(state_dir, s))
            except RelayError as exc:
                raise ConfigError(f"sources[{i}] (relay): {exc}") from None
            if s.get("overload"):
                src.overload = s["overload"]  # type: ignore[attr-defined]
            sources.append(src)
    if not sources:
        raise ConfigError("no source: give --input-file, --relay or `sources:` in --config")

    flt = cfg["filter"]
    flow_filter = None
    if flt["allow"] or flt["deny"]:
        try:
            flow_filter = FilterSet.compile(flt["allow"], flt["deny"])
        except ValueError as exc:
            raise ConfigError(f"filter: {exc}") from None

    # -- enrichment
    enricher = None
    k8s = cfg["enrich"]["kubernetes"]
    if k8s:
        from flowtrail.enrich.k8s import PodIndex, SnapshotError
        snaps = k8s.get("snapshot")
        grace = cfgmod.duration_s(k8s["grace"], "enrich.kubernetes.grace") if k8s.get("grace") else 300.0
        try:
            enricher = (PodIndex.from_snapshot(snaps, grace_s=grace, cluster=k8s.get("cluster")) if snaps
                        else PodIndex(grace_s=grace, cluster=k8s.get("cluster")))
        except SnapshotError as exc:
            raise ConfigError(f"enrich.kubernetes.snapshot: {exc}") from None

    # -- metrics
    from prometheus_client import CollectorRegistry

    from flowtrail.metrics.hubble import DEFAULT_HUBBLE_METRICS, HubbleMetrics
    from flowtrail.metrics.own import OwnMetrics
    registry = CollectorRegistry()
    own = OwnMetrics(registry)
    specs = DEFAULT_HUBBLE_METRICS if cfg["metrics"]["hubble"] == "default" else cfg["metrics"]["hubble"]
    try:
        hubble = HubbleMetrics(list(specs), registry)
    except ValueError as exc:
        raise ConfigError(f"metrics.hubble: {exc}") from None

    # -- sinks
    from flowtrail.sinks.alerting import build_alert_sinks
    from flowtrail.sinks.export import build_flow_exports
    alert_cfg = cfg["alerts"] or [{"type": "stdout", "format": "json"}]
    try:
        alert_outputs = build_alert_sinks(alert_cfg, state_dir / "spool" if state_dir else None)
        flow_outputs = build_flow_exports(cfg["export"], state_dir / "export-spool" if state_dir else None)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None

    p = cfg["pipeline"]
    options = PipelineOptions(batch_max_flows=p["batch_max_flows"],
                              batch_max_delay_s=cfgmod.duration_s(p["batch_max_delay"], "pipeline.batch_max_delay"),
                              queue_max_bytes=int(p["queue_max_mb"] * (1 << 20)), overload=p["overload"],
                              shutdown_timeout_s=cfgmod.duration_s(p["shutdown_timeout"], "pipeline.shutdown_timeout"),
                              min_severity=det["min_severity"],
                              decode_workers=_workers(p["decode_workers"]))
    monitor = Monitor(sources, engine, alert_outputs=alert_outputs, flow_outputs=flow_outputs,
                      flow_filter=flow_filter, enricher=enricher, hubble_metrics=hubble, own_metrics=own,
                      options=options, checkpoints=checkpoints)
    if enricher is not None and k8s.get("watch"):
        from flowtrail.enrich.k8swatch import WatchConfigError
        try:
            enricher.start_watch(monitor.stop_sources, kubeconfig=k8s.get("kubeconfig"),
                                 in_cluster=bool(k8s.get("in_cluster")), context=k8s.get("context"))
        except WatchConfigError as exc:
            raise ConfigError(f"enrich.kubernetes: {exc}") from None
    server = None
    if cfg["metrics"]["listen"]:
        from flowtrail.metrics.http import MetricsServer
        server = MetricsServer(cfg["metrics"]["listen"], registry, monitor.health, monitor.ready)
    return monitor, server


def position_file(state_dir: Path | None, source: dict[str, Any]) -> Path | None:
    """Where a source keeps its position in `state_dir` (None: stdin, or no state directory)."""
    if state_dir is None:
        return None
    if source["type"] == "file":
        return state_dir / f"offset-{_slug(source['path'])}.json"
    if source["type"] == "relay":
        return state_dir / f"relay-{re.sub(r'[^A-Za-z0-9.-]+', '_', source['address'])}.json"
    return None


def _workers(value: int | str) -> int:
    """``auto``: none on 2 CPUs or fewer (the monitor's own decode thread is faster there, see
    docs/monitor.md), else one per CPU but the monitor's, at most 4."""
    if value != "auto":
        return int(value)
    import os
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 0 if cpus <= 2 else min(4, cpus - 1)


def _slug(path: str) -> str:
    import hashlib
    name = Path(path).name.replace("/", "_")
    return f"{name}-{hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:12]}"


@click.command("run", context_settings={"help_option_names": ["-h", "--help"]},
               short_help="Run the live monitor: follow flows, detect, export metrics and alerts.")
@click.option("--config", "config_path", default=None, metavar="FILE", help="YAML configuration (see --print-default-config).")
@click.option("--input-file", "inputs", multiple=True, metavar="PATH",
              help="Follow a Hubble JSON file like `tail -F` (exporter events.log, observe -o json); '-' = stdin. Repeatable.")
@click.option("--relay", default=None, metavar="HOST:PORT", help="Hubble Relay (or Retina's relay) address.")
@click.option("--since", default=None, help="Relay: start from this time (RFC3339 or Go duration, like hubble --since).")
@click.option("--tls", is_flag=True, default=False, help="Relay: use TLS.")
@click.option("--tls-allow-insecure", is_flag=True, default=False, help="Relay: skip server certificate verification.")
@click.option("--tls-ca-cert-files", multiple=True, metavar="FILE", help="Relay: CA certificates to verify the server.")
@click.option("--tls-client-cert-file", default=None, metavar="FILE", help="Relay: client certificate (mTLS).")
@click.option("--tls-client-key-file", default=None, metavar="FILE", help="Relay: client key (mTLS).")
@click.option("--tls-server-name", default=None, help="Relay: server name to verify.")
@click.option("--metrics-listen", default=None, metavar="ADDR", help="Serve /metrics, /healthz, /readyz (e.g. :9965).")
@click.option("--hubble-metrics", default=None, metavar="SPECS",
              help='Hubble metrics as the agent flag takes them, e.g. "dns:query;ignoreAAAA drop:sourceContext=namespace flow".')
@click.option("--alerts-file", default=None, metavar="PATH", help="Append alerts as JSON lines (rotated).")
@click.option("--policies", multiple=True, metavar="PATH", help="NetworkPolicy/CiliumNetworkPolicy files or dirs.")
@click.option("--inventory", default=None, metavar="FILE", help="kubectl get namespaces,pods,services -A -o json.")
@click.option("--baseline", default=None, metavar="FILE", help="Baseline from `flowtrail baseline learn`.")
@click.option("--intel", multiple=True, metavar="FILE", help="Threat-intel feed (repeatable).")
@click.option("--rules", "rule_dirs", multiple=True, metavar="DIR", help="Extra rule files/directories.")
@click.option("--k8s-snapshot", multiple=True, metavar="FILE", help="Enrich flows from `kubectl get pods,services,namespaces -A -o json`.")
@click.option("--kubeconfig", default=None, metavar="FILE", help="Enrich flows by watching the Kubernetes API.")
@click.option("--cluster-name", default=None, help="Cluster name written into enriched endpoints (cluster_name).")
@click.option("--in-cluster", is_flag=True, default=False, help="Watch the Kubernetes API with the pod's service account.")
@click.option("--state-dir", default=None, metavar="DIR",
              help="Persist file offsets, relay positions, alert and flow-export spools and detection state here.")
@click.option("--start", type=click.Choice(["beginning", "end"]), default=None,
              help="Where to start following a file with no saved offset (default: beginning).")
@click.option("--min-severity", type=click.Choice(["info", "low", "medium", "high", "critical"]), default=None)
@click.option("--overload", type=click.Choice(["block", "shed"]), default=None, help="What to do when the queue is full.")
@click.option("--once", is_flag=True, help="Process what the inputs hold now, then exit (a replay; no following).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default=None)
@click.option("--log-format", type=click.Choice(["json", "text"]), default=None)
@click.option("--print-default-config", is_flag=True, help="Print the documented default configuration and exit.")
def run_cmd(config_path: str | None, print_default_config: bool, once: bool, **flags: Any) -> None:
    """Follow Hubble flows (exporter files, stdin, Hubble Relay) and turn them into alerts, Hubble
    Prometheus metrics and SIEM exports, until SIGTERM (which flushes everything and exits 0)."""
    if print_default_config:
        click.echo(cfgmod.DEFAULT_CONFIG_YAML, nl=False)
        return
    # Followed files are read 4 MB at a time and decoded in blocks: freed blocks stay in the heap
    # for the next ones instead of being mapped and page-faulted in again (the follower alone:
    # 2.2 → 0.9 s of CPU per 1.7 GB). Bounded for a long-running process: at most 128 MB of
    # freed memory is kept.
    reuse_large_allocations(mmap_threshold=16 << 20, trim_threshold=128 << 20)
    from flowtrail.monitor import logs
    try:
        cfg = _apply_flags(cfgmod.load(config_path), **flags)
        logs.setup(cfg["log"]["level"], cfg["log"]["format"])
        monitor, server = build_monitor(cfg, replay=once)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("received %s: draining and flushing", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if server is not None:
        server.start()
        log.info("serving metrics", extra={"address": f"{server.address[0]}:{server.address[1]}"})
    log.info("monitor started", extra={"sources": [s.name for s in monitor.sources],
                                        "rules": len(monitor.engine.rules) if monitor.engine else 0})
    try:
        monitor.run(stop, exit_when_sources_end=once or all(getattr(s, "name", "") == "-" for s in monitor.sources))
    finally:
        if server is not None:
            server.close()
    st = monitor.stats
    log.info("monitor stopped", extra={"lines": st.lines, "flows": st.flows, "alerts": st.alerts,
                                        "decode_errors": st.decode_errors, "shed_lines": st.shed_lines,
                                        "lost_events": st.lost_events, "alert_updates": st.alert_updates})
    if monitor.failed:
        log.error("exiting with an error: %s", "; ".join(monitor.failed))
        sys.exit(1)
    sys.exit(0)
