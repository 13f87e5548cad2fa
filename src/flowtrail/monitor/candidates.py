"""The rows of a block that may matter to a detection rule, and the clock of all of them.

Most rules read a few percent of the flows (`flowtrail detect` decodes only the lines their
prefilter patterns match). The live monitor decodes every line anyway, for its Hubble metrics,
but hands the engine only the candidate rows, and the time and node of every flow separately
(Engine.process's ``clock``), so the engine's time, warm-ups and node silences follow every flow.
The candidates are a superset of what the rules select, so the alerts are the same.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from flowtrail.sources.decode import Decoded, Decoder
from flowtrail.util import compute as pc


class Prefilter:
    """The engine's prefilter patterns (Engine.prefilter), compiled once for every block."""

    def __init__(self, patterns: list[str]) -> None:
        from flowtrail.sources.batches import LinePrefilter
        self.lines = LinePrefilter(patterns)

    def decode(self, decoder: Decoder, data: Any, source: str, first_line: int) -> tuple[Decoded, np.ndarray]:
        """Every line of ``data`` decoded, and per row whether it is a candidate."""
        if not data:
            dec = decoder.decode_block(data, source, first_line)
            return dec, np.zeros(0 if dec.table is None else dec.table.num_rows, bool)
        ix, matched = self.lines.lines(data, decoder.max_line)
        dec = decoder.decode_block(data, source, first_line, index=ix)
        # rows the decoder rewrote (other spellings) are candidates whatever they match
        return dec, matched[dec.line_numbers - first_line] | (dec.rows.starts < 0)


def clock(table: pa.Table) -> tuple[pa.Array, pa.Array]:
    """(time in ns, node name) of every flow row of a decoded table, for Engine.process."""
    from flowtrail.detect.features import Batch, Enrichment

    flows = table
    if "flow" in table.column_names and table.column("flow").null_count:
        flows = table.filter(pc.is_valid(table.column("flow")))
    if not flows.num_rows:
        return pa.array([], pa.int64()), pa.array([], pa.string())
    batch = Batch(flows, Enrichment())  # held while its frame computes
    times = batch.all["time"]
    if isinstance(times, pa.ChunkedArray):
        times = times.combine_chunks()
    if "node_name" not in flows.column_names:
        return times, pa.nulls(flows.num_rows, pa.string())
    nodes = flows.column("node_name")
    return times, nodes.combine_chunks() if isinstance(nodes, pa.ChunkedArray) else nodes
