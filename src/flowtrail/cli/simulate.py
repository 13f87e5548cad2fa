"""`flowtrail simulate`: realistic Hubble flows for a described cluster, with attack scenarios."""

from __future__ import annotations

import sys

import click

from flowtrail.lab.cluster import ClusterError
from flowtrail.lab.scenarios import SCENARIOS
from flowtrail.lab.simulate import NS, Options, simulate
from flowtrail.model.timeutil import parse_go_duration_ns, parse_rfc3339_ns


def _scenario_help() -> str:
    lines = []
    for s in SCENARIOS.values():
        params = ",".join(f"{k}={v}" for k, v in s.defaults.items())
        lines.append(f"  {s.name:<17} [{s.category}] {s.summary}\n  {'':<17} {params}")
    return "\n".join(lines)


@click.command("simulate", context_settings={"help_option_names": ["-h", "--help"]},
               short_help="Write realistic Hubble flows for a cluster, with attack scenarios.",
               epilog="Scenarios (NAME[:key=value,...]; list values joined with '+'):\n\n" + _scenario_help())
@click.option("--cluster", "cluster", type=click.Path(dir_okay=False), default=None,
              help="Cluster YAML (default: the bundled demo cluster).")
@click.option("--scenario", "scenarios", multiple=True, metavar="NAME[:k=v,...]",
              help="Inject an attack scenario (repeatable).")
@click.option("--duration", default="10m", show_default=True, help="Simulated time span (Go duration).")
@click.option("--start", default="2026-11-26T08:00:00Z", show_default=True, help="Flow time of the start (RFC 3339).")
@click.option("--seed", default=1, show_default=True, type=int, help="Random seed; output is deterministic for it.")
@click.option("--rate", type=float, default=None, metavar="FLOWS_PER_S",
              help="Mean cluster-wide flows per second (default: the cluster file's session rates).")
@click.option("-o", "--output", required=True, help="Output file ('-' = stdout, '.gz' = gzip).")
@click.option("--truth", default=None, help="Write the scenarios' ground truth here (JSON lines).")
@click.option("--workers", type=int, default=None,
              help="Rendering processes (default: CPU count); the output does not depend on it.")
@click.option("--quiet", "-q", is_flag=True, help="No summary on stderr.")
def simulate_cmd(cluster: str | None, scenarios: tuple[str, ...], duration: str, start: str, seed: int,
                 rate: float | None, output: str, truth: str | None, workers: int | None, quiet: bool) -> None:
    """Simulate a Kubernetes cluster's pod traffic as Cilium Hubble flows.

    Writes `hubble observe -o json` / exporter lines ({"flow":...,"node_name":...,"time":...}).
    """
    dur = parse_go_duration_ns(duration)
    if dur is None or dur <= 0:
        raise click.BadParameter(f"{duration!r} is not a positive duration like 90s, 10m or 1h", param_hint="--duration")
    start_ns = parse_rfc3339_ns(start)
    if start_ns is None:
        raise click.BadParameter(f"{start!r} is not an RFC 3339 time", param_hint="--start")
    if rate is not None and rate <= 0:
        raise click.BadParameter("must be positive", param_hint="--rate")
    opts = Options(cluster=cluster, scenarios=list(scenarios), duration_ns=dur, start_ns=start_ns, seed=seed,
                   rate=rate, output=output, truth=truth, workers=workers)
    progress = None
    bar = None
    if not quiet and sys.stderr.isatty() and output != "-":
        from rich.console import Console
        from rich.progress import Progress
        bar = Progress(console=Console(stderr=True), transient=True)
        task = bar.add_task("simulating", total=None)
        bar.start()

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)
    try:
        stats = simulate(opts, progress)
    except ClusterError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        if bar is not None:
            bar.stop()
    if not quiet:
        span = dur / NS
        click.echo(f"wrote {stats.flows:,} flows ({stats.bytes / 1e6:,.1f} MB, {stats.sessions:,} sessions, "
                   f"{stats.flows / span:,.0f} flows/s of simulated time) to {output} in {stats.seconds:.1f} s "
                   f"({stats.flows / max(stats.seconds, 1e-9):,.0f} flows/s)", err=True)
        for t in stats.truth:
            click.echo(f"  scenario {t['scenario']:<17} {t['category']:<16} actor {t['actor']:<28} "
                       f"{t['flows']:>6} flows  {t['start']} .. {t['end']}", err=True)
