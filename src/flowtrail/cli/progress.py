"""A progress bar for commands that read large input files, shown where people watch them."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from flowtrail.sources.files import Input

MIN_BYTES = 64 << 20  # smaller inputs are read before a bar would be worth drawing


@contextmanager
def input_progress(inputs: Sequence[Input], label: str) -> Iterator[Callable[[int], None] | None]:
    """A callback advancing a bar by bytes read (of the files as stored: compressed for `.gz`),
    or None: drawn only when stderr is a terminal, on stderr (stdout carries the output, often
    to a file or a pipe), and removed when done."""
    total = sum(i.size() for i in inputs if not i.is_stdin)
    if not sys.stderr.isatty() or total <= MIN_BYTES:
        yield None
        return
    from rich.console import Console
    from rich.progress import Progress
    bar = Progress(console=Console(stderr=True), transient=True)
    task = bar.add_task(label, total=total)
    bar.start()
    try:
        yield lambda n: bar.advance(task, n)
    finally:
        bar.stop()
