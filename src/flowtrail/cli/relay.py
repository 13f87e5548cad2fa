"""`flowtrail relay-replay`: serve a Hubble JSON-lines file as a Hubble Relay (observer.Observer).

For trying `flowtrail run --relay` (or `hubble observe --server`) without a cluster, and for
testing clients against broken streams (--cut-after), lost events and TLS/mTLS.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

import click

from flowtrail.lab.relay_server import ReplayLog, ReplayOptions, ReplayServer


@click.command("relay-replay", context_settings={"help_option_names": ["-h", "--help"]},
               short_help="Serve a Hubble JSON file as a Hubble Relay (gRPC Observer API).")
@click.option("--input-file", required=True, type=click.Path(dir_okay=False, exists=True),
              help="Hubble JSON lines (`hubble observe -o json`, exporter events.log, `flowtrail simulate`).")
@click.option("--listen", default="127.0.0.1:4245", show_default=True, metavar="HOST:PORT",
              help="Address to serve on (port 0: any free port, printed on stderr).")
@click.option("--follow-file", is_flag=True, help="Followed streams also get lines appended to the file later.")
@click.option("--cut-after", type=click.IntRange(min=1), default=None, metavar="N",
              help="Abort a stream with UNAVAILABLE after N responses (the first stream only, see --cut-every).")
@click.option("--cut-every", is_flag=True, help="With --cut-after: cut every stream, not just the first.")
@click.option("--lost-every", type=click.IntRange(min=0), default=0, metavar="N",
              help="Inject a lost_events response after every N-th flow of the file.")
@click.option("--lost-num", type=click.IntRange(min=1), default=1, show_default=True,
              help="num_events_lost of each injected lost_events response.")
@click.option("--no-node-status", is_flag=True, help="Do not start streams with a node_status message.")
@click.option("--tls-cert", type=click.Path(dir_okay=False, exists=True), default=None, help="Server certificate (PEM).")
@click.option("--tls-key", type=click.Path(dir_okay=False, exists=True), default=None, help="Server key (PEM).")
@click.option("--tls-client-ca", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Require client certificates signed by this CA (mTLS).")
def relay_replay_cmd(input_file: str, listen: str, follow_file: bool, cut_after: int | None, cut_every: bool,
                     lost_every: int, lost_num: int, no_node_status: bool, tls_cert: str | None,
                     tls_key: str | None, tls_client_ca: str | None) -> None:
    """Replay recorded Hubble flows over Hubble's gRPC Observer API (GetFlows, ServerStatus).

    Honours the request's since/until, first/number, follow and allow/deny filters like a Hubble
    server. Runs until interrupted.
    """
    if bool(tls_cert) != bool(tls_key):
        raise click.UsageError("--tls-cert and --tls-key go together")
    if tls_client_ca and not tls_cert:
        raise click.UsageError("--tls-client-ca (mTLS) needs --tls-cert and --tls-key")
    if cut_every and cut_after is None:
        raise click.UsageError("--cut-every needs --cut-after")
    replay = ReplayLog(input_file, lost_every=lost_every, lost_num=lost_num)
    for err in replay.errors[:5]:
        click.echo(f"relay-replay: {input_file}: skipped {err}", err=True)
    if len(replay.errors) > 5:
        click.echo(f"relay-replay: {input_file}: {len(replay.errors) - 5} more bad lines skipped", err=True)
    opts = ReplayOptions(cut_after=cut_after, cut_every=cut_every, tail=follow_file, node_status=not no_node_status,
                         tls_cert=tls_cert, tls_key=tls_key, tls_client_ca=tls_client_ca)
    try:
        server = ReplayServer(replay, listen, opts)
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    server.start()
    mode = "mTLS" if tls_client_ca else "TLS" if tls_cert else "plaintext"
    click.echo(f"relay-replay: serving {replay.flows} flows from {input_file} on {server.address} ({mode})",
               err=True)
    sys.stderr.flush()
    while not stop.wait(0.5):
        pass
    server.stop(1.0)
    click.echo(f"relay-replay: stopped after {server.stats.streams} streams, {server.stats.responses} responses, "
               f"{server.stats.cuts} cuts", err=True)
