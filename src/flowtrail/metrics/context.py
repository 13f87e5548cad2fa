"""Hubble's metric context options, computed column-wise.

Every Hubble metric handler accepts these options (reference §5.2; Cilium
``pkg/hubble/metrics/api/context.go``):

* ``sourceContext`` / ``destinationContext`` = identifiers joined with ``|``; the first one
  giving a non-empty value wins. Adds the label ``source`` / ``destination``.
  ``sourceEgressContext`` / ``sourceIngressContext`` / ``destinationEgressContext`` /
  ``destinationIngressContext`` replace them for flows of that traffic direction (they need
  the plain option too: that is what adds the label).
* ``labelsContext`` = comma list of ``source_ip``, ``source_pod``, ``source_namespace``,
  ``source_workload``, ``source_workload_kind``, ``source_app``, the same with
  ``destination_``, and ``traffic_direction``; one label each, always present (maybe empty).

Identifiers: ``identity`` (all labels, comma-joined), ``namespace``, ``pod`` (namespace/pod),
``pod-name``, ``pod-short`` (pod name without its ``-<hash>`` suffixes), ``dns`` (the side's
``*_names``, comma-joined), ``ip``, ``reserved-identity`` (``reserved:kube-apiserver`` if present,
else the first ``reserved:`` label), ``workload`` (namespace/first workload name),
``workload-name`` (first workload name), ``app`` (``k8s:app.kubernetes.io/name``, else
``k8s:k8s-app``, else ``k8s:app``).

Label order follows Hubble: labelsContext labels in the order above, then ``source``, then
``destination``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from flowtrail.metrics.columns import FlowView, choose, const, per_list
from flowtrail.util import compute as pc

IDENTIFIERS = ("identity", "namespace", "pod", "pod-name", "pod-short", "dns", "ip", "reserved-identity",
               "workload", "workload-name", "app")
LABELS = ("source_ip", "source_pod", "source_namespace", "source_workload", "source_workload_kind", "source_app",
          "destination_ip", "destination_pod", "destination_namespace", "destination_workload",
          "destination_workload_kind", "destination_app", "traffic_direction")
CONTEXT_KEYS = {
    "sourcecontext": ("source", ""),
    "sourceegresscontext": ("source", "EGRESS"),
    "sourceingresscontext": ("source", "INGRESS"),
    "destinationcontext": ("destination", ""),
    "destinationegresscontext": ("destination", "EGRESS"),
    "destinationingresscontext": ("destination", "INGRESS"),
}
APP_LABELS = ("k8s:app.kubernetes.io/name", "k8s:k8s-app", "k8s:app")
KUBE_APISERVER = "reserved:kube-apiserver"
# a pod name's ReplicaSet/pod hash suffixes (Hubble's pod-short); RE2 syntax, run by Arrow
SHORT_POD = r"^(.+?)(-[a-z0-9]+){1,2}$"
_IP_SIDE = {"source": "IP.source", "destination": "IP.destination"}
_NAMES_SIDE = {"source": "source_names", "destination": "destination_names"}


def is_context_option(key: str) -> bool:
    return key.lower() in CONTEXT_KEYS or key.lower() == "labelscontext"


@dataclass
class ContextOptions:
    """The context options of one metric spec."""

    source: tuple[str, ...] = ()
    destination: tuple[str, ...] = ()
    # direction ("EGRESS"/"INGRESS") -> identifiers overriding source/destination for it
    source_by_direction: dict[str, tuple[str, ...]] = field(default_factory=dict)
    destination_by_direction: dict[str, tuple[str, ...]] = field(default_factory=dict)
    labels: tuple[str, ...] = ()

    @classmethod
    def parse(cls, spec: str, options: Mapping[str, str]) -> ContextOptions:
        """Context options out of a metric's options; ValueError names ``spec`` and the option."""
        out = cls()
        for key, value in options.items():
            low = key.lower()
            if low == "labelscontext":
                wanted = [v for v in value.replace("\\,", ",").split(",")]
                bad = [v for v in wanted if v not in LABELS]
                if bad or not value:
                    raise ValueError(f"metric {spec!r}: option {key}={value!r}: unknown label "
                                     f"{(bad or [''])[0]!r} (labels: {', '.join(LABELS)})")
                out.labels = tuple(lab for lab in LABELS if lab in wanted)
                continue
            if low not in CONTEXT_KEYS:
                continue
            side, direction = CONTEXT_KEYS[low]
            ids = tuple(v.lower() for v in value.split("|"))
            bad = [v for v in ids if v not in IDENTIFIERS]
            if bad:
                raise ValueError(f"metric {spec!r}: option {key}={value!r}: unknown context {bad[0]!r} "
                                 f"(contexts: {', '.join(IDENTIFIERS)})")
            if direction:
                getattr(out, f"{side}_by_direction")[direction] = ids
            else:
                setattr(out, side, ids)
        for side in ("source", "destination"):
            if getattr(out, f"{side}_by_direction") and not getattr(out, side):
                raise ValueError(f"metric {spec!r}: a per-direction {side} context needs {side}Context too "
                                 f"(it is what adds the {side!r} label; Hubble ignores the override alone)")
        return out

    @property
    def label_names(self) -> list[str]:
        names = list(self.labels)
        if self.source:
            names.append("source")
        if self.destination:
            names.append("destination")
        return names

    @property
    def paths(self) -> set[str]:
        """Flow fields the labels read."""
        out: set[str] = set()
        for side in ("source", "destination"):
            ids = set(getattr(self, side))
            for extra in getattr(self, f"{side}_by_direction").values():
                ids.update(extra)
            for ident in ids:
                out |= _identifier_paths(ident, side)
            if getattr(self, f"{side}_by_direction"):
                out.add("traffic_direction")
        for lab in self.labels:
            if lab == "traffic_direction":
                out.add("traffic_direction")
                continue
            side, _, what = lab.partition("_")
            out |= {
                "ip": {_IP_SIDE["source"], _IP_SIDE["destination"]},
                "pod": {"source.pod_name", "destination.pod_name"},
                "namespace": {"source.namespace", "destination.namespace"},
                "workload": {"source.workloads", "destination.workloads"},
                "workload_kind": {"source.workloads", "destination.workloads"},
                "app": {"source.labels", "destination.labels"},
            }[what]
        return out

    def values(self, view: FlowView, invert: bool = False) -> list[pa.Array]:
        """One string column per name of :attr:`label_names`. ``invert``: label values from the
        request's point of view on a response flow (httpV2): source and destination swap."""
        out: list[pa.Array] = []
        for lab in self.labels:
            if lab == "traffic_direction":
                direction = view.text("traffic_direction", "TRAFFIC_DIRECTION_UNKNOWN")
                out.append(pc.if_else(pc.equal(direction, "TRAFFIC_DIRECTION_UNKNOWN"), "unknown",
                                      pc.utf8_lower(direction)))
                continue
            side, _, what = lab.partition("_")
            if invert:
                side = "destination" if side == "source" else "source"
            out.append(_endpoint_label(view, side, what))
        src = self._side(view, "source") if self.source else None
        dst = self._side(view, "destination") if self.destination else None
        if invert:
            # Hubble computes each side with its own identifiers, then swaps the two values
            src, dst = dst, src
            if not self.source:
                src = None
            if not self.destination:
                dst = None
        if self.source:
            out.append(src if src is not None else const("", view.n))
        if self.destination:
            out.append(dst if dst is not None else const("", view.n))
        return out

    def _side(self, view: FlowView, side: str) -> pa.Array:
        result = _first_non_empty(view, getattr(self, side), side)
        overrides: dict[str, tuple[str, ...]] = getattr(self, f"{side}_by_direction")
        for direction, ids in overrides.items():
            rows = view.equals("traffic_direction", direction)
            if rows.any():
                result = choose(rows, _first_non_empty(view, ids, side), result)
        return result


def _first_non_empty(view: FlowView, ids: tuple[str, ...], side: str) -> pa.Array:
    result: pa.Array | None = None
    for ident in ids:
        value = identifier_value(view, ident, side)
        if result is None:
            result = value
        else:
            empty = np.asarray(pc.equal(result, "").to_numpy(zero_copy_only=False), bool)
            if not empty.any():
                break
            result = choose(empty, value, result)
    assert result is not None
    return result


def _identifier_paths(ident: str, side: str) -> set[str]:
    return {
        "identity": {f"{side}.labels"},
        "namespace": {f"{side}.namespace"},
        "pod": {f"{side}.namespace", f"{side}.pod_name"},
        "pod-name": {f"{side}.pod_name"},
        "pod-short": {f"{side}.namespace", f"{side}.pod_name"},
        "dns": {_NAMES_SIDE[side]},
        "ip": {_IP_SIDE[side]},
        "reserved-identity": {f"{side}.labels"},
        "workload": {f"{side}.namespace", f"{side}.workloads"},
        "workload-name": {f"{side}.workloads"},
        "app": {f"{side}.labels"},
    }[ident]


def identifier_value(view: FlowView, ident: str, side: str) -> pa.Array:
    """The value of one context identifier for endpoint ``side`` ("source"/"destination")."""
    if ident == "namespace":
        return view.text(f"{side}.namespace")
    if ident == "identity":
        got = per_list(view, f"{side}.labels", "identity", ",".join)
        return got if got is not None else view.joined(f"{side}.labels")
    if ident in ("pod", "pod-short"):
        pod = view.text(f"{side}.pod_name")
        if ident == "pod-short":
            pod = pc.replace_substring_regex(pod, pattern=SHORT_POD, replacement=r"\1")
        return _with_namespace(view, side, pod)
    if ident == "pod-name":
        return view.text(f"{side}.pod_name")
    if ident == "dns":
        return view.joined(_NAMES_SIDE[side])
    if ident == "ip":
        return view.text(_IP_SIDE[side])
    if ident == "reserved-identity":
        return reserved_identity(view, side)
    if ident == "workload-name":
        return view.first_where(f"{side}.workloads", field="name")
    if ident == "workload":
        name = view.first_where(f"{side}.workloads", field="name")
        return pc.if_else(pc.equal(name, ""), "", _with_namespace(view, side, name))
    if ident == "app":
        return app_label(view, side)
    raise ValueError(f"unknown context {ident!r}")


def _with_namespace(view: FlowView, side: str, value: pa.Array) -> pa.Array:
    ns = view.text(f"{side}.namespace")
    return pc.if_else(pc.equal(ns, ""), value, pc.binary_join_element_wise(ns, value, "/"))


def _reserved_of(labels: list[str]) -> str:
    if KUBE_APISERVER in labels:
        return KUBE_APISERVER
    return next((lab for lab in labels if lab.startswith("reserved:")), "")


def _app_of(labels: list[str]) -> str:
    for key in APP_LABELS:
        prefix = key + "="
        for lab in labels:
            # a label with an empty value does not count (Hubble skips it)
            if lab.startswith(prefix) and len(lab) > len(prefix):
                return lab[len(prefix):]
    return ""


def reserved_identity(view: FlowView, side: str) -> pa.Array:
    got = per_list(view, f"{side}.labels", "reserved", _reserved_of)
    if got is not None:
        return got
    flat, _ = view.flat(f"{side}.labels")
    is_reserved = np.asarray(pc.fill_null(pc.starts_with(flat, "reserved:"), False).to_numpy(zero_copy_only=False),
                             bool)
    first = view.first_where(f"{side}.labels", is_reserved)
    api = view.contains(f"{side}.labels", KUBE_APISERVER)
    return choose(api, const(KUBE_APISERVER, view.n), first) if api.any() else first


def app_label(view: FlowView, side: str) -> pa.Array:
    """The app name from the endpoint's labels, by the priority Cilium documents."""
    got = per_list(view, f"{side}.labels", "app", _app_of)
    if got is not None:
        return got
    flat, _ = view.flat(f"{side}.labels")
    flat = pc.fill_null(flat, "")
    result: pa.Array | None = None
    for key in APP_LABELS:
        prefix = key + "="
        hit = np.asarray(pc.starts_with(flat, prefix).to_numpy(zero_copy_only=False), bool)
        # a label with an empty value does not count (Hubble skips it)
        hit &= np.asarray(pc.binary_length(flat).to_numpy(zero_copy_only=False)) > len(prefix)
        value = view.first_where(f"{side}.labels", hit)
        value = pc.utf8_slice_codeunits(value, len(prefix))
        result = value if result is None else pc.if_else(pc.equal(result, ""), value, result)
    assert result is not None
    return result


def _endpoint_label(view: FlowView, side: str, what: str) -> pa.Array:
    if what == "ip":
        return view.text(_IP_SIDE[side])
    if what == "pod":
        return view.text(f"{side}.pod_name")
    if what == "namespace":
        return view.text(f"{side}.namespace")
    if what == "workload":
        return view.first_where(f"{side}.workloads", field="name")
    if what == "workload_kind":
        return view.first_where(f"{side}.workloads", field="kind")
    if what == "app":
        return app_label(view, side)
    raise ValueError(f"unknown label {side}_{what}")
