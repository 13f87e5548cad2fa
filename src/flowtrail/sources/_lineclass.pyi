from typing import Any

def classify(data: Any, starts: Any, ends: Any, lines: Any, candidate: Any, fqdn: bool, replay: bool = True,
             /) -> tuple[bytes, bytes, bytes, bytes, bytes, bytes, bytes, bytes, bytes]: ...
