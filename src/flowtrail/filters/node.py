"""Node name filter: ``[cluster/]node`` patterns with ``*`` wildcards."""

from __future__ import annotations

import re
from typing import Any

import pyarrow.compute as pc

from flowtrail.filters.base import Columns, FilterError, Mask, Predicate, str_list, to_mask

_ALLOWED = re.compile(r"^[-0-9_a-z.*]*$")
DEFAULT_CLUSTER = "default"


def _part(p: str, field: str) -> str:
    p = p.strip().lower()
    if not p:
        return "[^/]*"
    if not _ALLOWED.match(p):
        raise FilterError(f"{field}: invalid node name pattern {p!r}")
    return p.replace(".", "[.]").replace("*", "[-.0-9a-z]*")


def node_name(values: Any) -> Predicate:
    patterns = str_list("node_name", values)
    parts = []
    for p in patterns:
        if p == "":
            raise FilterError("node_name: empty pattern")
        if "/" in p:
            cluster, _, node = p.partition("/")
            parts.append(f"{_part(cluster, 'node_name')}/{_part(node, 'node_name')}")
        else:
            parts.append(f"[^/]*/{_part(p, 'node_name')}")
    regex = r"\A(?:" + "|".join(parts) + r")\z"

    def fn(cols: Columns) -> Mask:
        name = cols.get("node_name")
        nonempty = to_mask(pc.not_equal(pc.fill_null(name, ""), ""))
        # a node name without cluster belongs to the default cluster
        has_slash = pc.fill_null(pc.match_substring(name, "/"), False)
        full = pc.if_else(has_slash, name, pc.binary_join_element_wise(DEFAULT_CLUSTER, name, "/"))
        return nonempty & to_mask(pc.match_substring_regex(full, regex))

    return Predicate("node_name", ("node_name",), fn, None)
