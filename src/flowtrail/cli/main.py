"""`flowtrail` entry point."""

from __future__ import annotations

import click

from flowtrail import __version__
from flowtrail.cli.detect import baseline_cmd, detect_cmd, rules_cmd
from flowtrail.cli.observe import OBSERVE_HELP, observe_main
from flowtrail.cli.policy import policy_cmd
from flowtrail.cli.relay import relay_replay_cmd
from flowtrail.cli.run import run_cmd
from flowtrail.cli.simulate import simulate_cmd

_RAW = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="flowtrail")
def cli() -> None:
    """flowtrail: security monitoring of Kubernetes network flows (Cilium Hubble, Retina)."""


@cli.command("observe", context_settings=_RAW, add_help_option=False, help=OBSERVE_HELP,
             short_help="Filter and print Hubble flows, like `hubble observe --input-file`.")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def observe(args: tuple[str, ...]) -> None:
    # hubble's flags are order-sensitive (--not applies to the next filter flag), so they are
    # parsed by observe_main rather than by click.
    raise SystemExit(observe_main(list(args)))


cli.add_command(simulate_cmd)
cli.add_command(detect_cmd)
cli.add_command(rules_cmd)
cli.add_command(baseline_cmd)
cli.add_command(policy_cmd)
cli.add_command(run_cmd)
cli.add_command(relay_replay_cmd)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
