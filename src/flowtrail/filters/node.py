"""Node name filter: ``[cluster/]node`` patterns with ``*`` wildcards."""

from __future__ import annotations

from typing import Any

from flowtrail.filters.base import Columns, FilterError, Mask, Predicate, str_list, to_mask
from flowtrail.filters.fqdn import FQDN_RE, fqdn_pattern_regex
from flowtrail.util import compute as pc

DEFAULT_CLUSTER = "default"


def _node_pattern_regex(pattern: str) -> str:
    if pattern == "":
        raise FilterError("node_name: empty pattern")
    parts = pattern.split("/")
    if len(parts) > 2:
        raise FilterError(f"node_name: invalid pattern {pattern!r}: too many slashes in pattern")
    cluster, node = parts if len(parts) == 2 else ("", parts[0])
    # an empty part is not "anything": it is a non-empty lower-case FQDN
    c = FQDN_RE if cluster == "" else fqdn_pattern_regex(cluster, "node_name")
    n = FQDN_RE if node == "" else fqdn_pattern_regex(node, "node_name")
    return f"{c}/{n}"


def node_name(values: Any) -> Predicate:
    patterns = str_list("node_name", values)
    regex = r"\A(?:" + "|".join(_node_pattern_regex(p) for p in patterns) + r")\z"

    def fn(cols: Columns) -> Mask:
        name = cols.get("node_name")
        nonempty = to_mask(pc.not_equal(pc.fill_null(name, ""), ""))
        # a node name without cluster belongs to the default cluster
        has_slash = pc.fill_null(pc.match_substring(name, "/"), False)
        full = pc.if_else(has_slash, name, pc.binary_join_element_wise(DEFAULT_CLUSTER, name, "/"))
        return nonempty & to_mask(pc.match_substring_regex(full, regex))

    return Predicate("node_name", ("node_name",), fn, None)
