"""Hubble's FlowFilter, compiled once into vectorized predicates over Arrow batches.

Semantics follow cilium/cilium pkg/hubble/filters: a FlowFilter is the AND of its fields, a field
is the OR of its values, the allowlist is OR-ed, the denylist NOR-ed.
"""

from flowtrail.filters.compile import FilterError, FilterSet

__all__ = ["FilterError", "FilterSet"]
