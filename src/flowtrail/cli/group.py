"""The `flowtrail` click group: subcommands are imported when invoked (importing every one:
the detection engine, gRPC, the Kubernetes client, Prometheus, costs ~1.5 s)."""

from __future__ import annotations

import importlib

import click

from flowtrail import __version__

# name -> (module, attribute); in the order `flowtrail --help` lists them
COMMANDS: dict[str, tuple[str, str]] = {
    "observe": ("flowtrail.cli.group", "observe_cmd"),
    "simulate": ("flowtrail.cli.simulate", "simulate_cmd"),
    "detect": ("flowtrail.cli.detect", "detect_cmd"),
    "rules": ("flowtrail.cli.detect", "rules_cmd"),
    "baseline": ("flowtrail.cli.detect", "baseline_cmd"),
    "policy": ("flowtrail.cli.policy", "policy_cmd"),
    "run": ("flowtrail.cli.run", "run_cmd"),
    "relay-replay": ("flowtrail.cli.relay", "relay_replay_cmd"),
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        spec = COMMANDS.get(cmd_name)
        if spec is None:
            return None
        cmd = getattr(importlib.import_module(spec[0]), spec[1])
        assert isinstance(cmd, click.Command)
        return cmd


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="flowtrail")
def cli() -> None:
    """flowtrail: security monitoring of Kubernetes network flows (Cilium Hubble, Retina)."""


@click.command("observe", context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                            "help_option_names": []},
               add_help_option=False,
               short_help="Filter and print Hubble flows, like `hubble observe --input-file`.")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def observe_cmd(args: tuple[str, ...]) -> None:
    """Filter and print Hubble flows like `hubble observe --input-file` (`flowtrail observe
    --help` lists the flags)."""
    # hubble's flags are order-sensitive (--not applies to the next filter flag), so they are
    # parsed by observe_main rather than by click; `flowtrail observe` itself skips click
    # (flowtrail.cli.main)
    from flowtrail.cli.observe import observe_main

    raise SystemExit(observe_main(list(args)))
