"""Types of the C extension _hsmatch.c (Hyperscan line matcher on the system's libhs)."""

from typing import Any

class Database:
    def __init__(self, patterns: list[bytes], ids: list[int]) -> None: ...
    def lines(self, data: Any, starts: Any, nsets: int, /) -> tuple[bytes, bytes]: ...
