"""The simulator's random stream: random.Random with cheaper integer draws, the same numbers."""

from __future__ import annotations

import random
from typing import Any


class SimRandom(random.Random):
    """`randrange(start, stop)` (and so `randint`) for ints without the argument checks of
    random.Random's: the simulator makes several per flow, and those checks were most of their
    cost. The draws are CPython's own (`_randbelow_with_getrandbits`: k = width.bit_length() bits,
    drawn again while out of range), so a seed gives the same numbers as random.Random; a test
    compares the two."""

    def randrange(self, start: Any, stop: Any = None, step: Any = 1) -> int:
        if stop is None or step != 1 or type(start) is not int or type(stop) is not int or stop <= start:
            return super().randrange(start, stop, step)
        n = stop - start
        k = n.bit_length()
        getrandbits = self.getrandbits
        r = getrandbits(k)
        while r >= n:
            r = getrandbits(k)
        return start + r
