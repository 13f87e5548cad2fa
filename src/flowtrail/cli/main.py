"""`flowtrail` entry point.

Subcommands are imported when invoked (flowtrail.cli.group): importing every one costs ~1.5 s,
against ~0.35 s for `observe` alone, and a user piping `flowtrail observe` into `head` pays that on
every call. `observe` parses hubble's flags itself, so it does not import click either (~0.06 s).
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import Any, NoReturn

# Commands whose every output is stdout or stderr, so nothing is left to flush or close once
# they return: the process ends without Python's teardown of its modules (~0.18 s after
# `detect`, ~0.07 s after `observe`, which main() runs itself: freeing numpy, pyarrow and their
# objects one by one).
FAST_EXIT = frozenset({"detect"})


def main() -> None:
    if sys.argv[1:2] == ["observe"]:
        from flowtrail.cli.observe import observe_main

        _exit_now(observe_main(sys.argv[2:]))
    from flowtrail.cli.group import cli

    try:
        cli()
    except SystemExit as exc:
        if len(sys.argv) > 1 and sys.argv[1] in FAST_EXIT:
            _exit_now(exc.code)
        raise


def _exit_now(code: object) -> NoReturn:
    status = code if isinstance(code, int) else (0 if code is None else 1)
    if code is not None and not isinstance(code, int):
        sys.stderr.write(f"{code}\n")
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            status = status or 120  # what Python's own exit returns when the last flush fails
    atexit._run_exitfuncs()  # what registered itself (pools, finalizers) still runs
    os._exit(status)


def __getattr__(name: str) -> Any:
    # `from flowtrail.cli.main import cli` (tests, embedding) without importing click up front
    if name in ("cli", "COMMANDS"):
        from flowtrail.cli import group

        return getattr(group, name)
    raise AttributeError(name)


if __name__ == "__main__":
    main()
