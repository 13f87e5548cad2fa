"""`flowtrail policy check` (and audit / whatif / generate): the policy engine on the command line."""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import orjson
import pyarrow as pa

from flowtrail.cli.progress import input_progress
from flowtrail.detect.features import workload_from_pod
from flowtrail.policy.endpoints import Inventory, InventoryError, load_inventory
from flowtrail.policy.evaluate import CNI, Evaluator, Verdict
from flowtrail.policy.generate import Observer, generate, render, summary_header
from flowtrail.policy.load import KIND_CCNP, KIND_CNP, PolicyLoadError, PolicySet, load_policies
from flowtrail.policy.probes import Probe, ProbeError, connection, parse_probe, read_probes
from flowtrail.policy.replay import (
    REPLAY_PATHS,
    Group,
    ReplayDecoder,
    Replayer,
    RowVerdicts,
    classify_audit,
    classify_whatif,
    group_rows,
)
from flowtrail.sources.batches import batches, gathered
from flowtrail.sources.decode import Decoder
from flowtrail.sources.files import expand_inputs

_CTX = {"help_option_names": ["-h", "--help"]}


def _load(policies: tuple[str, ...]) -> PolicySet:
    if not policies:
        raise click.UsageError("--policies is required")
    try:
        ps = load_policies(list(policies))
    except PolicyLoadError as exc:
        raise click.ClickException("invalid policies:\n  " + "\n  ".join(exc.errors)) from None
    for note in ps.notes:
        click.echo(f"note: {note}", err=True)
    return ps


def _inventory(path: str | None) -> Inventory:
    if not path:
        return Inventory()
    try:
        return load_inventory(path)
    except InventoryError as exc:
        raise click.ClickException(str(exc)) from None


def choose_cni(cni: str, inv: Inventory, ps: PolicySet) -> CNI:
    """`auto`: a case file's flavour, else cilium when Cilium policies are loaded, else kubernetes."""
    if cni in ("kubernetes", "cilium"):
        return cni  # type: ignore[return-value]
    if inv.flavour:
        return "kubernetes" if inv.flavour == "k8s-networkpolicy" else "cilium"
    return "cilium" if ps.kinds & {KIND_CNP, KIND_CCNP} else "kubernetes"


@click.group("policy", context_settings=_CTX)
def policy_cmd() -> None:
    """Evaluate NetworkPolicy / CiliumNetworkPolicy: check probes, audit and replay flows."""


@policy_cmd.command("check", context_settings=_CTX)
@click.option("--policies", "policies", multiple=True, metavar="PATH",
              help="Policy files or directories (YAML/JSON, multi-document, kind: List); repeatable.")
@click.option("--inventory", "inventory", default=None, metavar="FILE",
              help="`kubectl get namespaces,pods,services -A -o json` output, or a conformance case file.")
@click.option("--case", "case", default=None, metavar="FILE",
              help="A conformance case file: its policies, pods and probes (same as passing it to "
                   "--policies, --inventory and --probes).")
@click.option("--cni", type=click.Choice(["auto", "kubernetes", "cilium"]), default="auto", show_default=True,
              help="Where implementations differ (ipBlock vs pod IPs): upstream Kubernetes or Cilium semantics.")
@click.option("--from", "src", default=None, metavar="NS/POD|IP")
@click.option("--to", "dst", default=None, metavar="NS/POD|IP")
@click.option("--port", type=int, default=None)
@click.option("--protocol", default="TCP", show_default=True, help="TCP, UDP, SCTP, ICMP or ICMPv6.")
@click.option("--icmp-type", type=int, default=None)
@click.option("--http-method", default=None)
@click.option("--http-path", default=None)
@click.option("--fqdn", default=None, help="The name the client resolved (for toFQDNs and DNS rules).")
@click.option("--probes", "probes_path", default=None, metavar="FILE",
              help="JSON lines {from,to,port,protocol,http:{method,path},fqdn}; `-` for stdin.")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
def check_cmd(policies: tuple[str, ...], inventory: str | None, case: str | None, cni: str, src: str | None,
              dst: str | None, port: int | None, protocol: str, icmp_type: int | None, http_method: str | None,
              http_path: str | None, fqdn: str | None, probes_path: str | None, output: str) -> None:
    """One verdict per probe, with the policies and rules that decided it.

    When probes carry "expected" (as conformance cases do), mismatches are flagged, a summary is
    printed on stderr and the exit status is 1 if any probe differs.
    """
    if case:
        policies = (*policies, case)
        inventory = inventory or case
        probes_path = probes_path or case
    ps = _load(policies)
    inv = _inventory(inventory)
    profile = choose_cni(cni, inv, ps)
    ev = Evaluator(ps, profile, inv)
    if probes_path and (src or dst):
        raise click.UsageError("give either --probes or --from/--to, not both")
    probes: list[Probe]
    try:
        if probes_path:
            probes = list(read_probes(probes_path))
        elif src and dst:
            obj: dict[str, Any] = {"from": src, "to": dst, "port": port, "protocol": protocol, "fqdn": fqdn,
                                   "icmp_type": icmp_type}
            if http_method or http_path:
                obj["http"] = {"method": http_method or "GET", "path": http_path or "/"}
            probes = [parse_probe(obj, "command line")]
        else:
            raise click.UsageError("give --from and --to (with --port), or --probes FILE")
    except (ProbeError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    mismatches = 0
    expected_n = 0
    for pr in probes:
        try:
            v = ev.evaluate(connection(pr, inv))
        except InventoryError as exc:
            raise click.ClickException(f"{pr.where}: {exc}") from None
        if pr.expected is not None:
            expected_n += 1
            mismatches += v.verdict != pr.expected
        _print(pr, v, output)
    if expected_n:
        click.echo(f"{expected_n - mismatches}/{expected_n} probes as expected (cni {profile})", err=True)
        if mismatches:
            sys.exit(1)


def _print(pr: Probe, v: Verdict, output: str) -> None:
    if output == "json":
        out = v.to_json()
        out["from"], out["to"] = pr.src, pr.dst
        if pr.fqdn:
            out["fqdn"] = pr.fqdn
        if pr.expected is not None:
            out["expected"] = pr.expected
            out["as_expected"] = v.verdict == pr.expected
        sys.stdout.buffer.write(orjson.dumps(out) + b"\n")
        return
    port = v.connection.describe_port()
    flag = ""
    if pr.expected is not None and v.verdict != pr.expected:
        flag = f"  [MISMATCH: expected {pr.expected}]"
    click.echo(f"{v.verdict.upper():5} {pr.src} -> {pr.dst} {port}{flag}\n      {v.explanation}")
    for n in v.notes:
        click.echo(f"      note: {n}")


# ---- replay: audit and whatif --------------------------------------------------------------------

# rows per replay call: the reply skip leaves ~5k rows per 16 MB block, and 64k-row calls left the
# replay waiting for 13 blocks at a time and alone on the last ones (1M benchmark flows: median
# 9.9 → 9.1 s over 4 runs each, peak RSS 478 → 315 MB, same report)
BATCH_ROWS = 16_384


def _replay(ev: Evaluator, inv: Inventory, inputs: tuple[str, ...], workers: int | None,
            on_batch: Callable[[RowVerdicts], None], per_connection: bool = False,
            every_line: bool = False) -> tuple[Replayer, int]:
    rp = Replayer(ev, inv, identity_keys=not per_connection)
    bad = _read_tables(inputs, workers, lambda table: on_batch(rp.feed(table)),
                       ReplayDecoder(rp.uses_fqdn, classes=not every_line))
    return rp, bad


def _read_tables(inputs: tuple[str, ...], workers: int | None, on_table: Callable[[pa.Table], None],
                 decoder: Decoder | None = None) -> int:
    """Decode the inputs (REPLAY_PATHS) and hand them on in tables of about BATCH_ROWS rows."""
    try:
        ins = expand_inputs(list(inputs) or ["-"])
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    bad = 0
    # a day of flows is an hour of replay: a bar on a terminal, as `detect` shows
    with input_progress(ins, "replaying") as progress:
        # the replay decoder skips replies: ~6k narrow rows per 16 MB, so tasks join blocks (1M
        # benchmark flows: median 9.1 → 8.2 s, peak RSS 307 → 372 MB)
        stream = batches(ins, decoder or Decoder(REPLAY_PATHS), None, workers, progress=progress,
                         join=isinstance(decoder, ReplayDecoder))
        for table, group in gathered(stream, BATCH_ROWS):
            for b in group:
                for err in b.errors:
                    bad += 1
                    if bad <= 20:
                        click.echo(f"warning: {err}", err=True)
            if table is not None:
                on_table(table)
    if bad:
        click.echo(f"warning: skipped {bad} bad line(s)", err=True)
    return bad


def _time(ns: int) -> str:
    secs, frac = divmod(ns, 10**9)
    return f"{datetime.fromtimestamp(secs, UTC):%Y-%m-%dT%H:%M:%S}.{frac:09d}Z"


def _group_json(g: Group) -> dict[str, Any]:
    v = g.verdict
    out: dict[str, Any] = {"type": g.kind, "src": g.src, "dst": g.dst, "protocol": g.protocol, "port": g.port,
                           "count": g.count, "first_seen": _time(g.first_ns), "last_seen": _time(g.last_ns),
                           "example_uuids": g.uuids, "observed_verdict": g.observed}
    if v is not None:
        out["policy_verdict"] = v.verdict
        if v.denied_at:
            out["denied_at"] = v.denied_at
            out["drop_reason_desc"] = v.drop_reason
        out["explanation"] = v.explanation
        if v.notes:
            out["notes"] = v.notes
    return out


_TITLES = {
    "bypass": "bypass: forwarded although the policies deny it",
    "unexpected-drop": "unexpected drop: dropped by policy although the policies allow it",
    "audit-would-drop": "audit: verdict AUDIT, enforcement would drop it",
    "unresolved": "unresolved: forwarded, denied only for lack of facts (named ports need --inventory)",
    "breaks": "breaks: observed passing, the candidate policies would drop it",
    "newly-allowed": "newly allowed: observed dropped, the candidate policies would allow it",
}


def _print_groups(groups: dict[tuple[Any, ...], Group], kinds: list[str], output: str) -> None:
    ordered = sorted(groups.values(), key=lambda g: (kinds.index(g.kind), -g.count, g.src, g.dst, g.port or 0))
    kind = None
    for g in ordered:
        if output == "json":
            sys.stdout.buffer.write(orjson.dumps(_group_json(g)) + b"\n")
            continue
        if g.kind != kind:
            kind = g.kind
            click.echo(f"== {_TITLES[kind]}")
        port = f"{g.port}/{g.protocol}" if g.port is not None else g.protocol
        click.echo(f"{g.kind.upper():16} {g.src} -> {g.dst} {port}  flows={g.count} "
                   f"first={_time(g.first_ns)} last={_time(g.last_ns)} uuids={','.join(g.uuids)}")
        if g.verdict is not None:
            click.echo(f"{'':16} {g.verdict.explanation}")
            for n in dict.fromkeys(g.verdict.notes):
                click.echo(f"{'':16} note: {n}")


def _flow_options(f: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed([
        click.option("--policies", "policies", multiple=True, metavar="PATH", help="Policy files or directories."),
        click.option("--input-file", "inputs", multiple=True, metavar="PATH",
                     help="Hubble flows: JSON lines, .gz, exporter directories, `-` for stdin."),
        click.argument("paths", nargs=-1, type=click.Path()),
        click.option("--inventory", default=None, metavar="FILE", help="kubectl List JSON (named ports, pods)."),
        click.option("--cni", type=click.Choice(["auto", "kubernetes", "cilium"]), default="auto",
                     show_default=True),
        click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True),
        click.option("--workers", type=int, default=None, help="Decoder processes (default: CPU count)."),
        # the replay shares verdict flags between connections that provably get the same ones;
        # this evaluates each connection in full instead: the same report, slower (for tests)
        click.option("--per-connection", is_flag=True, hidden=True),
        # lines equal but for what the replay never reads are decoded once (sources.lineclass);
        # this decodes every line instead: the same report, slower (for tests)
        click.option("--every-line", is_flag=True, hidden=True),
    ]):
        f = opt(f)
    return f


@policy_cmd.command("audit", context_settings=_CTX)
@_flow_options
def audit_cmd(policies: tuple[str, ...], inputs: tuple[str, ...], paths: tuple[str, ...], inventory: str | None,
              cni: str, output: str, workers: int | None, per_connection: bool, every_line: bool) -> None:
    """Replay flows against the policies: bypasses, unexpected drops, AUDIT flows, coverage.

    Reports, each with counts, first/last seen and example flow uuids: `bypass` (forwarded flows
    the policies deny), `unexpected-drop` (policy drops the policies allow), `audit-would-drop`
    (AUDIT verdicts), then workloads no policy selects per direction and allow rules no flow used.
    """
    ps = _load(policies)
    inv = _inventory(inventory)
    profile = choose_cni(cni, inv, ps)
    ev = Evaluator(ps, profile, inv)
    groups: dict[tuple[Any, ...], Group] = {}
    kinds = ["bypass", "unexpected-drop", "audit-would-drop", "unresolved"]

    def on_batch(rv: RowVerdicts) -> None:
        for kind, mask in classify_audit(rv).items():
            group_rows(groups, kind, mask, rv)
    rp, _ = _replay(ev, inv, (*inputs, *paths), workers, on_batch, per_connection, every_line)
    _print_groups(groups, kinds, output)
    # coverage: workloads seen in the flows or listed in the inventory
    workloads = dict(rp.endpoints)
    for (ns, name), ep in inv.pods.items():
        workloads.setdefault(f"{ns}/{workload_from_pod(name) or name}", ep)
    unselected: dict[str, list[str]] = {"ingress": [], "egress": []}
    for wl, ep in sorted(workloads.items()):
        isolated = {d for p in ev.selecting(ep) for d in p.isolates}
        for d in ("ingress", "egress"):
            if d not in isolated:
                unselected[d].append(wl)
    unused = [r for p in ps.policies for r in p.rules if not r.deny and r not in rp.used_rules]
    counts = {k: sum(g.count for g in groups.values() if g.kind == k) for k in kinds}
    if output == "json":
        for d in ("ingress", "egress"):
            for wl in unselected[d]:
                sys.stdout.buffer.write(orjson.dumps({"type": "unselected", "direction": d, "workload": wl}) + b"\n")
        for r in unused:
            sys.stdout.buffer.write(orjson.dumps({"type": "unused-rule", **r.to_json()}) + b"\n")
        sys.stdout.buffer.write(orjson.dumps({"type": "summary", "connections": len(rp.verdicts), "cni": profile,
                                              "policies": len(ps.policies), **counts}) + b"\n")
        return
    for d in ("ingress", "egress"):
        if unselected[d]:
            click.echo(f"UNSELECTED ({d}): no policy isolates {len(unselected[d])} workload(s) for {d}: "
                       + ", ".join(unselected[d]))
    for r in unused:
        click.echo(f"UNUSED RULE      {r} ({r.describe()}): no flow used it")
    click.echo(f"{len(rp.verdicts)} distinct connections evaluated against {len(ps.policies)} policies (cni "
               f"{profile}): " + ", ".join(f"{counts[k]} {k} flows" for k in kinds), err=True)


@policy_cmd.command("whatif", context_settings=_CTX)
@_flow_options
def whatif_cmd(policies: tuple[str, ...], inputs: tuple[str, ...], paths: tuple[str, ...], inventory: str | None,
               cni: str, output: str, workers: int | None, per_connection: bool, every_line: bool) -> None:
    """Replay flows against a candidate policy set: what it would break and what it would open.

    `breaks`: flows observed FORWARDED/REDIRECTED that the candidate denies; `newly-allowed`:
    flows observed dropped by policy (or AUDIT) that the candidate allows. Grouped by workload
    pair and port.
    """
    ps = _load(policies)
    inv = _inventory(inventory)
    profile = choose_cni(cni, inv, ps)
    ev = Evaluator(ps, profile, inv)
    groups: dict[tuple[Any, ...], Group] = {}
    kinds = ["breaks", "newly-allowed"]

    def on_batch(rv: RowVerdicts) -> None:
        for kind, mask in classify_whatif(rv).items():
            group_rows(groups, kind, mask, rv)
    rp, _ = _replay(ev, inv, (*inputs, *paths), workers, on_batch, per_connection, every_line)
    _print_groups(groups, kinds, output)
    counts = {k: sum(g.count for g in groups.values() if g.kind == k) for k in kinds}
    if output == "json":
        sys.stdout.buffer.write(orjson.dumps({"type": "summary", "connections": len(rp.verdicts), "cni": profile,
                                              "policies": len(ps.policies), **counts}) + b"\n")
        return
    click.echo(f"{len(rp.verdicts)} distinct connections replayed against {len(ps.policies)} candidate policies "
               f"(cni {profile}): {counts['breaks']} flows would break, {counts['newly-allowed']} newly allowed",
               err=True)


@policy_cmd.command("generate", context_settings=_CTX)
@click.option("--input-file", "inputs", multiple=True, metavar="PATH",
              help="Hubble flows: JSON lines, .gz, exporter directories, `-` for stdin.")
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["cilium", "kubernetes"]), default="cilium", show_default=True,
              help="CiliumNetworkPolicy (entities, toFQDNs, DNS rules) or networking.k8s.io/v1 NetworkPolicy.")
@click.option("--namespace", "namespaces", multiple=True, metavar="NS",
              help="Only write policies for workloads of this namespace (repeatable); peers may be anywhere.")
@click.option("-o", "--output", default="-", show_default=True, metavar="DIR|-",
              help="A directory to write one NAMESPACE.yaml per namespace into, or `-` for stdout.")
@click.option("--workers", type=int, default=None, help="Decoder processes (default: CPU count).")
def generate_cmd(inputs: tuple[str, ...], paths: tuple[str, ...], fmt: str, namespaces: tuple[str, ...],
                 output: str, workers: int | None) -> None:
    """Least-privilege policies from the traffic in the flows.

    A default deny per namespace, then per workload (selected by its pods' stable labels) one
    ingress and one egress policy allowing exactly the peers and ports of the connections it was
    seen opening or accepting (forwarded TCP SYNs, UDP/SCTP requests, ICMP echo requests; dropped
    flows are never allowed). YAML comments give the evidence: connection counts, first/last
    seen and an example flow uuid per allowed peer and port.
    """
    obs = Observer()
    _read_tables((*inputs, *paths), workers, obs.feed)
    gen = generate(obs.obs, fmt, namespaces)  # type: ignore[arg-type]
    header = summary_header(obs.obs)
    for note in gen.notes:
        click.echo(f"note: {note}", err=True)
    if output == "-":
        sys.stdout.write(render(gen.docs, header))
    else:
        out = Path(output)
        try:
            out.mkdir(parents=True, exist_ok=True)
            for ns in sorted({d.namespace for d in gen.docs}):
                (out / f"{ns}.yaml").write_text(render([d for d in gen.docs if d.namespace == ns], header))
        except OSError as exc:
            raise click.ClickException(f"{output}: {exc.strerror}") from None
    wls = {(d.namespace, d.name.rsplit("-", 1)[0]) for d in gen.docs if d.name != "default-deny"}
    click.echo(f"{len(gen.docs)} {fmt} policies for {len(wls)} workloads in "
               f"{len({d.namespace for d in gen.docs})} namespaces from {obs.obs.openings} connection openings "
               f"({len(obs.obs.conns)} distinct connections, {obs.obs.flows} flows read)", err=True)
