from collections.abc import Sequence
from typing import Any

Body = str | tuple[str, Sequence[str]]

def flatten(sessions: list[list[tuple[int, int, Body]]], /) -> tuple[bytes, bytes, bytes, list[Body]]: ...
def lines(bodies: list[Body], order: Any, times: Any, nodes: Any, uuids: Any, tails: list[bytes], head: bytes,
          emitter: bytes, split: int, out: int | Any = None, /) -> tuple[bytes | None, bytes, list[str]]: ...
