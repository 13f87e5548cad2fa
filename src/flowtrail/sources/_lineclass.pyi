from typing import Any

def classify(data: Any, starts: Any, ends: Any, lines: Any, candidate: Any, fqdn: bool,
             /) -> tuple[bytes, bytes, bytes, bytes, bytes, bytes, bytes, bytes]: ...
