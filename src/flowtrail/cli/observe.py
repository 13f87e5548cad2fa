"""`flowtrail observe`: a drop-in for `hubble observe --input-file`, same flags, same output."""

from __future__ import annotations

import contextlib
import heapq
import os
import sys
from collections import deque
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from flowtrail.cli.engine import BlockProcessor, BlockResult, ObserveSpec, Totals, run_input
from flowtrail.filters import FilterError, FilterSet
from flowtrail.filters.compile import parse_filter_json
from flowtrail.filters.flags import BOOL_FILTER_FLAGS, FILTER_FLAGS, FlagFilters
from flowtrail.model.schema import lookup
from flowtrail.model.timeutil import TIME_FORMATS, parse_time_arg
from flowtrail.sinks.printer import OUTPUT_FORMATS, PrintOptions, table_header, tabulate
from flowtrail.sources.files import expand_inputs

DEFAULT_LAST = 20  # hubble's defaults.FlowPrintCount

OBSERVE_HELP = """Filter and print Hubble flows from files, exactly like `hubble observe --input-file`.

\b
Usage: flowtrail observe --input-file FILE|DIR|- [--input-file ...] [FILTER FLAGS] [-o FORMAT]
\b
Inputs: `hubble observe -o json` output, exporter events.log files (plain or gzip), directories
of rotated exporter files (merged in time order), '-' for stdin.
\b
Filter flags (hubble's names and rules; the same flag repeated is OR, different flags AND):
  --pod/--from-pod/--to-pod [NS/]PREFIX   -n/--namespace, --from-namespace, --to-namespace, -A
  --ip/--from-ip/--to-ip IP|CIDR          --snat-ip    --fqdn/--from-fqdn/--to-fqdn PATTERN
  -l/--label/--from-label/--to-label SELECTOR          --node-label SELECTOR
  --service/--from-service/--to-service   --workload/--from-workload/--to-workload [KIND/]NAME
  --identity/--from-identity/--to-identity ID|NAME     --cluster/--from-cluster/--to-cluster
  --port/--from-port/--to-port PORT       --protocol tcp|udp|icmp|dns|http|...
  --verdict FORWARDED|DROPPED|AUDIT|...   --drop-reason-desc REASON   -t/--type TYPE[:SUBTYPE]
  --http-status CODE|PREFIX+  --http-method M  --http-path RE  --http-url RE  --http-header K:V
  --tcp-flags syn,ack  --traffic-direction ingress|egress  --node-name [CLUSTER/]PATTERN
  -4/--ipv4  -6/--ipv6  --ip-version  --uuid  --trace-id  --ip-trace-id  --interface
  --encrypted  --unencrypted  --not (negates the next filter flag)
  --allowlist JSON  --denylist JSON       --print-raw-filters
\b
Selection: --all, --first N, --last N (default 20), --since T, --until T (durations like 5m, or
RFC 3339 / 2006-01-02 layouts).
\b
Output: -o compact|dict|table|json|jsonpb, --time-format StampMilli|RFC3339|RFC3339Milli|
RFC3339Micro|RFC3339Nano|RFC1123Z, --print-node-name, --print-policy-names, --numeric,
--color auto|always|never, --field-mask PATHS (validated; like hubble it does not trim flows read
from files).
\b
flowtrail additions: --strict (a bad input line is fatal), --stats (counters on stderr),
--workers N (processes for large files; default: all cores).
"""

_SHORT = {"-n": "namespace", "-A": "all-namespaces", "-l": "label", "-t": "type", "-4": "ipv4", "-6": "ipv6",
          "-o": "output", "-f": "follow", "-j": "json", "-h": "help"}
_VALUE_OPTS = {"input-file", "output", "time-format", "color", "field-mask", "first", "last", "since", "until",
               "allowlist", "denylist", "workers", "ip-translation"}
_BOOL_OPTS = {"print-node-name", "print-policy-names", "numeric", "all", "follow", "print-raw-filters", "strict",
              "stats", "json", "help", "use-default-field-masks", "not", "debug"}


_LONG_TO_SHORT = {v: k for k, v in _SHORT.items()}


def _display(name: str) -> str:
    """How pflag names a flag in errors: ``-n, --namespace`` when it has a shorthand."""
    short = _LONG_TO_SHORT.get(name)
    return f"{short}, --{name}" if short else f"--{name}"


class UsageError(Exception):
    pass


@dataclass
class Options:
    inputs: list[str] = field(default_factory=list)
    output: str = "compact"
    time_format: str = "StampMilli"
    color: str = "auto"
    field_mask: list[str] = field(default_factory=list)
    first: int = 0
    last: int = 0
    all: bool = False
    since: str | None = None
    until: str | None = None
    print_node_name: bool = False
    print_policy_names: bool = False
    ip_translation: bool = True
    print_raw_filters: bool = False
    strict: bool = False
    stats: bool = False
    workers: int | None = None
    allowlist: list[dict[str, Any]] = field(default_factory=list)
    denylist: list[dict[str, Any]] = field(default_factory=list)
    help: bool = False


def _bool_value(name: str, value: str | None) -> bool:
    if value is None:
        return True
    low = value.lower()
    if low in ("true", "1", "t"):
        return True
    if low in ("false", "0", "f"):
        return False
    raise UsageError(f'invalid argument "{value}" for "--{name}" flag: strconv.ParseBool: parsing "{value}": invalid syntax')


def parse_args(argv: list[str]) -> tuple[Options, FlagFilters]:
    opts = Options()
    flags = FlagFilters()
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            if i < len(argv):
                raise UsageError(f"unexpected argument {argv[i]!r}")
            break
        value: str | None = None
        if arg.startswith("--"):
            name, eq, inline = arg[2:].partition("=")
            value = inline if eq else None
            display = _display(name)
        elif arg.startswith("-") and len(arg) >= 2 and arg[:2] in _SHORT:
            name = _SHORT[arg[:2]]
            value = arg[2:] or None
            if value is not None and value.startswith("="):
                value = value[1:]
            display = _display(name)
        else:
            raise UsageError(f'unknown command "{arg}" for "flowtrail observe"' if not arg.startswith("-")
                             else f"unknown shorthand flag: {arg!r}")
        takes_value = name in _VALUE_OPTS or (name in FILTER_FLAGS and name not in BOOL_FILTER_FLAGS)
        if takes_value and value is None:
            if i >= len(argv):
                raise UsageError(f"flag needs an argument: {display.split(', ')[-1]}")
            value = argv[i]
            i += 1
        if name in FILTER_FLAGS or name == "not":
            if name in BOOL_FILTER_FLAGS or name == "not":
                # hubble's filter flag type ignores the value pflag hands it (`--not=false`
                # still negates, `--ipv4=anything` still filters): flows_filter.go Set
                value = "true"
            assert value is not None
            flags.set(name, value, display)
            continue
        if name not in _VALUE_OPTS and name not in _BOOL_OPTS:
            raise UsageError(f"unknown flag: --{name}")
        _apply_option(opts, name, value)
    return opts, flags


def _int(name: str, value: str) -> int:
    if not value.isdigit():
        raise UsageError(f'invalid argument "{value}" for "--{name}" flag: not a non-negative integer')
    return int(value)


def _apply_option(opts: Options, name: str, value: str | None) -> None:
    if name == "input-file":
        assert value is not None
        opts.inputs.append(value)
    elif name == "output":
        assert value is not None
        if value not in OUTPUT_FORMATS:
            raise UsageError(f"invalid output format: {value}")
        opts.output = value
    elif name == "json":
        opts.output = "json"
    elif name == "time-format":
        assert value is not None
        if value not in TIME_FORMATS:
            raise UsageError(f"invalid time format: {value}; one of: {', '.join(TIME_FORMATS)}")
        opts.time_format = value
    elif name == "color":
        assert value is not None
        if value not in ("auto", "always", "never"):
            raise UsageError(f"invalid --color value: {value}; one of auto, always, never")
        opts.color = value
    elif name == "field-mask":
        assert value is not None
        for path in (p.strip() for p in value.split(",")):
            if path:
                try:
                    lookup(path)
                except KeyError as exc:
                    raise UsageError(f"invalid --field-mask: {exc.args[0]}") from None
                opts.field_mask.append(path)
    elif name in ("first", "last", "workers"):
        assert value is not None
        setattr(opts, name, _int(name, value))
    elif name in ("since", "until"):
        setattr(opts, name, value)
    elif name in ("allowlist", "denylist"):
        assert value is not None
        getattr(opts, name).extend(parse_filter_json(value))
    elif name == "ip-translation":
        opts.ip_translation = _bool_value(name, value)
    elif name == "numeric":
        if _bool_value(name, value):
            opts.ip_translation = False
    elif name in ("print-node-name", "print-policy-names", "all", "print-raw-filters", "strict", "stats", "help"):
        setattr(opts, name.replace("-", "_"), _bool_value(name, value))
    # follow, use-default-field-masks and debug are accepted and, as in hubble with --input-file, have no effect


def _yaml_quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def raw_filters_yaml(allow: list[dict[str, Any]], deny: list[dict[str, Any]]) -> str:
    import orjson

    out = []
    for title, filters in (("allowlist", allow), ("denylist", deny)):
        if filters:
            out.append(f"{title}:\n")
            out.extend(f"    - {_yaml_quote(orjson.dumps(f).decode())}\n" for f in filters)
    return "".join(out) if out else "{}\n"


def observe_main(argv: list[str], stdout: BinaryIO | None = None) -> int:
    out = stdout or sys.stdout.buffer
    try:
        opts, flags = parse_args(argv)
        if opts.help:
            sys.stdout.write(OBSERVE_HELP)
            return 0
        allow, deny = flags.finish()
        allow += opts.allowlist
        deny += opts.denylist
        if opts.print_raw_filters:
            out.write(raw_filters_yaml(allow, deny).encode())
            return 0
        filters = FilterSet.compile(allow, deny)
        if opts.first and opts.last:
            raise UsageError("cannot set both --first and --last")
        if (opts.first or opts.last) and opts.all:
            raise UsageError("cannot combine --all with --first or --last")
        if not opts.inputs:
            raise UsageError("no flow source: use --input-file FILE (or '-' for stdin); live Relay comes with `flowtrail run`")
        since = parse_time_arg(opts.since) if opts.since else None
        until = parse_time_arg(opts.until) if opts.until else None
        inputs = expand_inputs(opts.inputs)
    except (UsageError, FilterError, ValueError, FileNotFoundError) as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    last = opts.last
    if not (opts.first or opts.last or opts.all or opts.since or opts.until):
        last = DEFAULT_LAST
    color = opts.color == "always" or (
        opts.color == "auto" and out is sys.stdout.buffer and sys.stdout.isatty() and "NO_COLOR" not in os.environ
    )
    popts = PrintOptions(
        output=opts.output,
        time_format=opts.time_format,
        node_name=opts.print_node_name,
        ip_translation=opts.ip_translation,
        color=color,
        policy_names=opts.print_policy_names,
    )
    spec = ObserveSpec(filters, popts, since, until, want_times=len(inputs) > 1)
    proc = BlockProcessor(spec)
    totals = Totals()
    try:
        sink = _Sink(out, popts)
        if len(inputs) == 1:
            blocks = _results(proc, inputs[0], opts, totals)
            # closed however the writing ends (--first, a closed pipe): the workers are stopped
            # and their spool files removed before the process exits
            with contextlib.closing(blocks):
                _write_blocks(sink, blocks, opts.first, last)
        else:
            merged = _merged(proc, inputs, opts, totals)
            with contextlib.closing(merged):
                records: Iterator[Any] = merged
                if opts.first:
                    records = _take(records, opts.first)
                elif last:
                    records = iter(deque(records, maxlen=last))
                for rec in records:
                    sink.record(rec)
        sink.close()
    except _StrictError as exc:
        sys.stderr.write(f"flowtrail: {exc}\n")
        return 1
    except BrokenPipeError:
        _silence_stdout()
        return 0
    except OSError as exc:
        sys.stderr.write(f"flowtrail: {exc}\n")
        return 1
    st = totals.stats
    if st.errors:
        sys.stderr.write(f"flowtrail: skipped {st.errors} bad line(s) of {st.lines}\n")
    if opts.stats:
        sys.stderr.write(
            f"flowtrail: lines={st.lines} flows={st.flows} lost_events={st.lost_events} "
            f"other_events={st.other_events} blank={st.blank} errors={st.errors} slow_path={st.slow_path} "
            f"matched={totals.matched}\n"
        )
    return 0


class _StrictError(Exception):
    pass


def _take(it: Iterator[Any], n: int) -> Iterator[Any]:
    for k, rec in enumerate(it):
        if k >= n:
            return
        yield rec


def _results(proc: BlockProcessor, inp: Any, opts: Options, totals: Totals) -> Generator[BlockResult, None, None]:
    """Blocks of one input, their bad lines reported (or fatal with --strict) and counted."""
    for res in run_input(proc, inp, opts.workers):
        totals.stats.add(res.stats)
        for err in res.errors:
            if opts.strict:
                raise _StrictError(f"bad line {err}")
            sys.stderr.write(f"flowtrail: warning: skipping bad line {err}\n")
        totals.matched += res.count
        yield res


def _write_blocks(sink: _Sink, results: Iterator[BlockResult], first: int, last: int) -> None:
    """One input: whole blocks go to the sink; --first and --last cut them, not single records."""
    if first:
        left = first
        for res in results:
            sink.block(res.slice(0, left))
            left -= min(res.count, left)
            if not left:
                return
        return
    if not last:
        for res in results:
            sink.block(res)
        return
    kept: deque[BlockResult] = deque()
    held = 0
    for res in results:
        if not res.count:
            continue
        res = res.slice(max(res.count - last, 0), res.count)
        kept.append(res)
        held += res.count
        while held - kept[0].count >= last:
            held -= kept.popleft().count
    if kept and held > last:
        kept[0] = kept[0].slice(held - last, kept[0].count)
    for res in kept:
        sink.block(res)


def _merged(proc: BlockProcessor, inputs: list[Any], opts: Options, totals: Totals) -> Generator[Any, None, None]:
    """Several inputs (e.g. rotated exporter files): records merged by event time, stable per input."""

    def one(inp: Any) -> Iterator[tuple[int, Any]]:
        for res in _results(proc, inp, opts, totals):
            times = res.times.tolist() if res.times is not None else [0] * res.count
            yield from zip(times, res.records(), strict=True)

    streams = [((t, k, rec) for t, rec in one(inp)) for k, inp in enumerate(inputs)]
    for _, _, rec in heapq.merge(*streams, key=lambda x: (x[0], x[1])):
        yield rec


class _Sink:
    """Writes records in the chosen format; the table format is laid out at the end."""

    def __init__(self, out: BinaryIO, popts: PrintOptions) -> None:
        self.out = out
        self.fmt = popts.output
        self.popts = popts
        self.rows: list[list[str]] = []
        self.first = True

    def block(self, res: BlockResult) -> None:
        if not res.count:
            return
        if self.fmt in ("table", "tab"):
            self.rows.extend(res.cells or [])
        elif self.fmt == "dict":
            for rec in res.records():
                self.record(rec)
        else:
            res.write(self.out)
            self.first = False

    def record(self, rec: Any) -> None:
        if self.fmt in ("table", "tab"):
            self.rows.append(rec)
        elif self.fmt in ("json", "jsonpb"):
            self.out.write(rec + b"\n")
        elif self.fmt == "dict":
            self.out.write(rec if self.first else b"------------\n" + rec)
        else:
            self.out.write(rec)
        self.first = False

    def close(self) -> None:
        if self.fmt in ("table", "tab") and self.rows:
            self.out.write("".join(tabulate([table_header(self.popts), *self.rows])).encode())
        self.out.flush()


def _silence_stdout() -> None:
    # after a closed pipe (e.g. `| head`), stop Python from complaining at exit
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
