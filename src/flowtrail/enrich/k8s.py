"""Kubernetes enrichment: fill the endpoint metadata of flows that carry only IP addresses.

Retina on CNIs other than Cilium (and sensors without a Kubernetes cache) report flows whose
``source``/``destination`` endpoints are empty. :class:`PodIndex` maps IP addresses to what
Cilium's Hubble would have printed for them — namespace, pod name, identity labels in Hubble's
spelling (``k8s:key=value``, the namespace labels as ``k8s:io.cilium.k8s.namespace.labels.*``,
service account, cluster, pod namespace), workloads ``[{name, kind}]``, ``cluster_name`` — and
ClusterIP / external / load-balancer addresses to their Service, so filters (``--pod``,
``--label``, ``--namespace``, ``--workload``, ``--to-service``) and detection rules work on
enriched flows as they do on Cilium's.

The index is fed by a ``kubectl get namespaces,pods,services -A -o json`` snapshot
(:meth:`PodIndex.from_snapshot`) or kept current by list+watch on the API
(:meth:`PodIndex.start_watch`, see :mod:`flowtrail.enrich.k8swatch`). Deleted pods stay
resolvable for ``grace_s`` seconds, so late flows of short-lived pods still get their names.

Enrichment is columnar: the index is frozen into Arrow arrays (one row per known address) that
are rebuilt only when the cluster changed; a batch is joined to it with ``pyarrow.compute.index_in``
and the filled columns are built with ``take``. Only the JSON text of changed rows is rewritten
row by row, because those bytes have to be produced anyway.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import yaml

from flowtrail.model.schema import ENDPOINT, FLOW
from flowtrail.policy.endpoints import CLUSTER_KEY, NS_NAME_LABEL, SA_KEY, parse_ip
from flowtrail.policy.selectors import NS_KEY, NS_LABELS_PREFIX
from flowtrail.sources.decode import Rows
from flowtrail.util import compute as pc
from flowtrail.util.arrays import bool_mask

DEFAULT_GRACE_S = 300.0
DEFAULT_CLUSTER = "default"  # what Cilium calls a cluster whose cluster-name is not set

# Label keys Cilium leaves out of a pod's identity by default (docs "Limiting Identity-Relevant
# Labels"), matched as key prefixes; hashes and per-pod names would otherwise make every pod its
# own identity. Namespace labels are always kept (under io.cilium.k8s.namespace.labels.).
DEFAULT_EXCLUDED_LABEL_PREFIXES: tuple[str, ...] = (
    "io.kubernetes",
    "kubernetes.io",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "batch.kubernetes.io/job-completion-index",
    "batch.kubernetes.io/controller-uid",
    "k8s.io",
    "pod-template-generation",
    "pod-template-hash",
    "controller-revision-hash",
    "annotation",
    "etcd_node",
)
_BETA = "beta.kubernetes.io"  # Cilium excludes `.*beta.kubernetes.io` anywhere in the key

# Hubble identities below 256 are reserved or well-known (hubble-reference §2.6): never a plain pod.
_MAX_RESERVED_IDENTITY = 255
_TERMINATED = ("Succeeded", "Failed")
_SIDES = ("source", "destination")
_SERVICE_OF = (("destination_service", "destination"), ("source_service", "source"))
_DECIDE_FIELDS = ("namespace", "pod_name", "labels")
_FLOW_ORDER = {k: i for i, k in enumerate(FLOW)}
_ENDPOINT_ORDER = tuple(ENDPOINT)
_WORKLOAD_TYPE = pa.struct([("name", pa.string()), ("kind", pa.string())])
_LABELS_TYPE = pa.list_(pa.string())
_WORKLOADS_TYPE = pa.list_(_WORKLOAD_TYPE)
KINDS = ("Namespace", "Pod", "Service")


class SnapshotError(ValueError):
    """A snapshot file that cannot be read; the message names the file."""


@dataclass
class _Pod:
    uid: str
    namespace: str
    name: str
    ips: tuple[str, ...]
    labels: dict[str, str]
    service_account: str
    workloads: tuple[tuple[str, str], ...]
    deleted_at: float | None = None


@dataclass
class _Service:
    namespace: str
    name: str
    ips: tuple[str, ...]


def _str_map(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def _canonical_ip(value: Any) -> str | None:
    # Hubble prints Go's net.IP String(): IPv6 compressed and lower-case, as Python's str() does
    addr = parse_ip(str(value)) if value else None
    return str(addr) if addr is not None else None


def workloads_of(meta: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """The pod's workload as Hubble names it: the controller owner, with a ReplicaSet created by a
    Deployment named after the Deployment (its name minus the ``pod-template-hash`` suffix)."""
    owners = [o for o in meta.get("ownerReferences") or [] if isinstance(o, dict)]
    if not owners:
        return ()
    owner = next((o for o in owners if o.get("controller")), owners[0])
    name, kind = str(owner.get("name") or ""), str(owner.get("kind") or "")
    if not name or not kind:
        return ()
    if kind == "ReplicaSet":
        h = _str_map(meta.get("labels")).get("pod-template-hash")
        if h and name.endswith("-" + h) and len(name) > len(h) + 1:
            return ((name[: -len(h) - 1], "Deployment"),)
    return ((name, kind),)


def _sections(obj: Mapping[str, Any], kind: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """metadata (which must name the object), spec and status of a Kubernetes object; a missing or
    malformed spec or status reads as empty."""
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or not meta.get("name"):
        raise ValueError(f"{kind} without metadata.name")
    spec, status = obj.get("spec"), obj.get("status")
    return meta, spec if isinstance(spec, dict) else {}, status if isinstance(status, dict) else {}


def pod_from_object(obj: Mapping[str, Any]) -> _Pod | None:
    """A pod as the index keeps it; None for pods that have no address of their own (not yet
    scheduled, or hostNetwork: they share the node's address and Cilium reports them as host)."""
    meta, spec, status = _sections(obj, "pod")
    if spec.get("hostNetwork"):
        return None
    raw = [x.get("ip") for x in status.get("podIPs") or [] if isinstance(x, dict)] or [status.get("podIP")]
    ips = tuple(dict.fromkeys(a for a in (_canonical_ip(x) for x in raw) if a is not None))
    if not ips:
        return None
    ns = str(meta.get("namespace") or "default")
    return _Pod(uid=str(meta.get("uid") or f"{ns}/{meta['name']}"), namespace=ns, name=str(meta["name"]), ips=ips,
                labels=_str_map(meta.get("labels")),
                service_account=str(spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"),
                workloads=workloads_of(meta))


def service_from_object(obj: Mapping[str, Any]) -> _Service:
    """A Service and every address that fronts it: ClusterIPs, externalIPs, load-balancer IPs."""
    meta, spec, status = _sections(obj, "service")
    raw: list[Any] = list(spec.get("clusterIPs") or [spec.get("clusterIP")])  # "None" = headless
    raw += list(spec.get("externalIPs") or [])
    raw += [i.get("ip") for i in ((status.get("loadBalancer") or {}).get("ingress") or []) if isinstance(i, dict)]
    ips = tuple(dict.fromkeys(a for a in (_canonical_ip(x) for x in raw if x and x != "None") if a is not None))
    return _Service(namespace=str(meta.get("namespace") or "default"), name=str(meta["name"]), ips=ips)


class _Frozen:
    """The index at one moment as Arrow arrays, one entry per known address (immutable)."""

    def __init__(self, version: int, keys: list[str], pods: list[_Pod | None], services: list[_Service | None],
                 labels: list[list[str] | None], cluster: str | None, next_expiry: float) -> None:
        self.version = version
        self.next_expiry = next_expiry
        self.size = len(keys)
        self.keys = pa.array(keys, pa.string())
        self.is_pod = np.array([p is not None for p in pods], dtype=bool)
        self.is_service = np.array([s is not None for s in services], dtype=bool)
        self.deleted = np.array([p is not None and p.deleted_at is not None for p in pods], dtype=bool)
        self.pod_values: dict[str, pa.Array] = {
            "namespace": pa.array([p.namespace if p else None for p in pods], pa.string()),
            "pod_name": pa.array([p.name if p else None for p in pods], pa.string()),
            "labels": pa.array(labels, _LABELS_TYPE),
            "workloads": pa.array([[{"name": n, "kind": k} for n, k in p.workloads] if p and p.workloads else None
                                   for p in pods], _WORKLOADS_TYPE),
        }
        if cluster is not None:
            self.pod_values["cluster_name"] = pa.array([cluster if p else None for p in pods], pa.string())
        self.service_values: dict[str, pa.Array] = {
            "name": pa.array([s.name if s else None for s in services], pa.string()),
            "namespace": pa.array([s.namespace if s else None for s in services], pa.string()),
        }
        # JSON of each entry in Hubble's field order, for rewriting rows
        self.endpoint_json: list[dict[str, Any] | None] = []
        self.endpoint_bytes: list[bytes] = []
        for p, lab in zip(pods, labels, strict=True):
            if p is None:
                self.endpoint_json.append(None)
                self.endpoint_bytes.append(b"")
                continue
            ep: dict[str, Any] = {}
            if cluster is not None:
                ep["cluster_name"] = cluster
            ep.update(namespace=p.namespace, labels=lab, pod_name=p.name)
            if p.workloads:
                ep["workloads"] = [{"name": n, "kind": k} for n, k in p.workloads]
            self.endpoint_json.append(ep)
            self.endpoint_bytes.append(orjson.dumps(ep))
        self.service_json = [{"name": s.name, "namespace": s.namespace} if s else None for s in services]
        self._conformed: dict[tuple[str, str, pa.DataType], pa.Array] = {}
        self._lock = threading.Lock()

    def lookup(self, ips: pa.Array) -> np.ndarray:
        """Entry of each address, -1 where unknown or null."""
        idx = pc.index_in(ips, value_set=self.keys)
        return np.asarray(pc.fill_null(idx, -1).to_numpy(zero_copy_only=False), dtype=np.int64)

    def values(self, group: str, name: str, target: pa.DataType) -> pa.Array | None:
        """The entries' values of one field, cast to the projected type of the batch (a projection
        may keep only some fields of ``workloads``)."""
        src = (self.pod_values if group == "pod" else self.service_values).get(name)
        if src is None:
            return None
        if src.type == target:
            return src
        key = (group, name, target)
        with self._lock:
            out = self._conformed.get(key)
            if out is None:
                out = self._conformed[key] = src.cast(target)
        return out


def _combined(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _child(arr: pa.StructArray, name: str) -> pa.Array | None:
    i = arr.type.get_field_index(name)
    return arr.field(i) if i >= 0 else None


def _nonempty(arr: pa.Array | None, n: int) -> np.ndarray:
    if arr is None:
        return np.zeros(n, dtype=bool)
    return bool_mask(pc.not_equal(pc.fill_null(arr, ""), ""))


def _merge(old: pa.Array, new: pa.Array, entry: np.ndarray, hit: np.ndarray) -> pa.Array:
    """``old`` with rows ``hit`` replaced by ``new[entry]``: one take over both, any type."""
    n = len(old)
    sel = np.arange(n, dtype=np.int64)
    sel[hit] = n + entry[hit]
    return pa.concat_arrays([old, new]).take(pa.array(sel))


def _fill_struct(old: pa.StructArray, values: Callable[[str, pa.DataType], pa.Array | None],
                 entry: np.ndarray, hit: np.ndarray) -> pa.StructArray:
    """``old`` with the fields ``values`` knows replaced in rows ``hit``; rows that were null
    become valid, their other fields null."""
    valid = bool_mask(old.is_valid())
    newly = hit & ~valid
    zeros = np.zeros(len(old), dtype=np.int64)
    children = []
    for i, f in enumerate(old.type):
        child = old.field(i)
        src = values(f.name, f.type)
        if src is not None:
            child = _merge(child, src, entry, hit)
        elif newly.any():
            child = _merge(child, pa.nulls(1, f.type), zeros, newly)
        children.append(child)
    now_valid = valid | hit
    mask = None if now_valid.all() else pa.array(~now_valid)
    return pa.StructArray.from_arrays(children, fields=list(old.type), mask=mask)


def _merge_endpoint(current: Mapping[str, Any], ours: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: ours[k] if k in ours else current[k] for k in _ENDPOINT_ORDER if k in ours or k in current}
    out.update((k, v) for k, v in current.items() if k not in out)
    return out


class PodIndex:
    """IP -> endpoint metadata; thread-safe (the watch thread updates it while the pipeline reads).

    ``cluster``: the cluster name Cilium would report (``cluster_name`` and the
    ``io.cilium.k8s.policy.cluster`` label); without it the label says ``default`` and
    ``cluster_name`` is left out. ``clock`` (seconds, monotonic) is for tests.
    """

    def __init__(self, grace_s: float = DEFAULT_GRACE_S, cluster: str | None = None,
                 excluded_label_prefixes: Sequence[str] = DEFAULT_EXCLUDED_LABEL_PREFIXES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.grace_s = float(grace_s)
        self.cluster = cluster
        self.excluded_label_prefixes = tuple(excluded_label_prefixes)
        self.clock = clock
        self._lock = threading.RLock()
        self._pods: dict[str, _Pod] = {}  # by uid: a StatefulSet pod re-created under its name is another pod
        self._services: dict[tuple[str, str], _Service] = {}
        self._namespaces: dict[str, dict[str, str]] = {}
        self._label_cache: dict[str, tuple[int, list[str]]] = {}
        self._ns_gen: dict[str, int] = {}
        self._version = 0
        self._frozen: _Frozen | None = None
        self._counters = {"enriched": 0, "unresolved": 0, "services_filled": 0, "resolved_deleted": 0,
                          "watch_restarts": 0, "relists": 0, "watch_events": 0, "bad_objects": 0}

    # -- construction -----------------------------------------------------------------------------

    @classmethod
    def from_snapshot(cls, path: str | Sequence[str], **kwargs: Any) -> PodIndex:
        """Index built from ``kubectl get namespaces,pods,services -A -o json`` (a ``kind: List``,
        JSON or YAML), or several such files; single objects and plain JSON arrays are accepted."""
        index = cls(**kwargs)
        for p in [path] if isinstance(path, str) else list(path):
            index.add_snapshot(p)
        return index

    def add_snapshot(self, path: str) -> None:
        """Add the objects of one more snapshot file (see :meth:`from_snapshot`)."""
        self.add_objects(_read_objects(path), source=path)

    def add_objects(self, items: Iterable[Any], source: str = "") -> None:
        """Add API objects that carry their ``kind`` (kubectl output); other kinds are ignored."""
        by_kind: dict[str, list[Mapping[str, Any]]] = {k: [] for k in KINDS}
        for i, obj in enumerate(items):
            if not isinstance(obj, dict):
                raise SnapshotError(f"{source}: items[{i}] is not an object")
            kind = obj.get("kind")
            if kind in by_kind:
                by_kind[str(kind)].append(obj)
        with self._lock:
            for kind in KINDS:  # namespaces first: pods' labels depend on them
                for obj in by_kind[kind]:
                    self.apply_event(kind, "ADDED", obj)

    # -- updates (snapshot loader and watch thread) --------------------------------------------------

    def apply_event(self, kind: str, event: str, obj: Mapping[str, Any]) -> None:
        """One API change: ``event`` ADDED, MODIFIED or DELETED of a Namespace, Pod or Service.
        A malformed object is counted in ``stats['bad_objects']`` and skipped."""
        try:
            with self._lock:
                if kind == "Pod":
                    self._apply_pod(event, obj)
                elif kind == "Service":
                    svc = service_from_object(obj)
                    key = (svc.namespace, svc.name)
                    if event == "DELETED":
                        self._services.pop(key, None)
                    else:
                        self._services[key] = svc
                elif kind == "Namespace":
                    meta = obj.get("metadata") or {}
                    name = str(meta.get("name") or "")
                    if not name:
                        raise ValueError("namespace without metadata.name")
                    if event == "DELETED":
                        self._namespaces.pop(name, None)
                    else:
                        self._namespaces[name] = _str_map(meta.get("labels"))
                    self._ns_gen[name] = self._ns_gen.get(name, 0) + 1
                else:
                    raise ValueError(f"unsupported kind {kind!r}")
                self._version += 1
        except (ValueError, TypeError, AttributeError):
            with self._lock:
                self._counters["bad_objects"] += 1

    def _apply_pod(self, event: str, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        ns = str(meta.get("namespace") or "default")
        uid = str(meta.get("uid") or f"{ns}/{meta.get('name')}")
        known = self._pods.get(uid)
        if event == "DELETED":
            if known is not None and known.deleted_at is None:
                known.deleted_at = self.clock()
            return
        pod = pod_from_object(obj)
        phase = (obj.get("status") or {}).get("phase")
        if pod is None:
            if known is not None and known.deleted_at is None:
                known.deleted_at = self.clock()
            return
        if phase in _TERMINATED:  # its address is free for the next pod; keep it for late flows
            pod.deleted_at = known.deleted_at if known is not None and known.deleted_at else self.clock()
        self._pods[uid] = pod
        self._label_cache.pop(uid, None)

    def replace_objects(self, kind: str, items: Iterable[Mapping[str, Any]]) -> None:
        """The full list of one kind (a (re)list): objects missing from it are gone — pods are kept
        as deleted for the grace period, services and namespaces dropped."""
        items = list(items)
        with self._lock:
            if kind == "Pod":
                seen = set()
                for obj in items:
                    meta = obj.get("metadata") or {}
                    seen.add(str(meta.get("uid") or f"{meta.get('namespace') or 'default'}/{meta.get('name')}"))
                now = self.clock()
                for uid, pod in self._pods.items():
                    if uid not in seen and pod.deleted_at is None:
                        pod.deleted_at = now
            elif kind == "Service":
                self._services.clear()
            elif kind == "Namespace":
                for name in self._namespaces:
                    self._ns_gen[name] = self._ns_gen.get(name, 0) + 1
                self._namespaces.clear()
            for obj in items:
                self.apply_event(kind, "ADDED", obj)
            self._version += 1

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counters[name] = self._counters.get(name, 0) + n

    # -- reading ----------------------------------------------------------------------------------

    @property
    def stats(self) -> dict[str, int]:
        """Counters (enriched / unresolved endpoints, services filled, …) and the index's size now."""
        with self._lock:
            out = dict(self._counters)
            live = sum(1 for p in self._pods.values() if p.deleted_at is None)
            out.update(pods=live, deleted_in_grace=len(self._pods) - live, services=len(self._services),
                       namespaces=len(self._namespaces))
        return out

    @property
    def paths(self) -> set[str]:
        """Flow paths the enrichment reads and writes (decode them together with the consumer's)."""
        ep_fields = ("identity", "cluster_name", "namespace", "labels", "pod_name", "workloads")
        return {"IP.source", "IP.destination", "source_service", "destination_service",
                *(f"{side}.{f}" for side in _SIDES for f in ep_fields)}

    def labels_of(self, pod: _Pod) -> list[str]:
        """The pod's identity labels as Hubble prints them (sorted ``k8s:key=value``)."""
        gen = self._ns_gen.get(pod.namespace, 0)
        cached = self._label_cache.get(pod.uid)
        if cached is not None and cached[0] == gen:
            return cached[1]
        excluded = self.excluded_label_prefixes
        out = [f"k8s:{k}={v}" for k, v in pod.labels.items()
               if not k.startswith(excluded) and _BETA not in k]
        ns_labels = dict(self._namespaces.get(pod.namespace, {}))
        ns_labels.setdefault(NS_NAME_LABEL, pod.namespace)  # the API server sets it on every namespace
        out += [f"k8s:{NS_LABELS_PREFIX}{k}={v}" for k, v in ns_labels.items()]
        out += [f"k8s:{SA_KEY}={pod.service_account}", f"k8s:{CLUSTER_KEY}={self.cluster or DEFAULT_CLUSTER}",
                f"k8s:{NS_KEY}={pod.namespace}"]
        out.sort()
        self._label_cache[pod.uid] = (gen, out)
        return out

    def resolve(self, ip: str) -> dict[str, Any] | None:
        """What the index knows of one address (for diagnostics): the endpoint or the service."""
        frozen = self._current()
        key = _canonical_ip(ip)
        if key is None or not frozen.size:
            return None
        e = int(frozen.lookup(pa.array([key]))[0])
        if e < 0:
            return None
        if frozen.is_pod[e]:
            return {"endpoint": frozen.endpoint_json[e], "deleted": bool(frozen.deleted[e])}
        return {"service": frozen.service_json[e]}

    def _current(self) -> _Frozen:
        with self._lock:
            frozen = self._frozen
            now = self.clock()
            if frozen is not None and frozen.version == self._version and now < frozen.next_expiry:
                return frozen
            expired = [uid for uid, p in self._pods.items()
                       if p.deleted_at is not None and now - p.deleted_at >= self.grace_s]
            for uid in expired:
                del self._pods[uid]
                self._label_cache.pop(uid, None)
            by_ip: dict[str, _Pod] = {}
            # live pods own their addresses; among deleted ones the most recently deleted wins
            order = sorted(self._pods.values(),
                           key=lambda p: (p.deleted_at is None, p.deleted_at if p.deleted_at is not None else 0.0))
            for p in order:
                for a in p.ips:
                    by_ip[a] = p
            keys: list[str] = []
            pods: list[_Pod | None] = []
            services: list[_Service | None] = []
            labels: list[list[str] | None] = []
            for a, p in by_ip.items():
                keys.append(a)
                pods.append(p)
                services.append(None)
                labels.append(self.labels_of(p))
            claimed = set(by_ip)
            for s in self._services.values():
                for a in s.ips:
                    if a not in claimed:  # an address is a pod's, else the first service's
                        claimed.add(a)
                        keys.append(a)
                        pods.append(None)
                        services.append(s)
                        labels.append(None)
            expiries = [p.deleted_at + self.grace_s for p in self._pods.values() if p.deleted_at is not None]
            self._frozen = frozen = _Frozen(self._version, keys, pods, services, labels, self.cluster,
                                            min(expiries) if expiries else float("inf"))
            return frozen

    # -- enrichment -------------------------------------------------------------------------------

    def enrich(self, table: pa.Table, rows: Rows) -> tuple[pa.Table, Rows, int]:
        """Fill the endpoints (and services) of flows that lack them; see the module docstring.

        ``table``: decoder envelope table whose ``flow`` struct holds at least ``IP.source``,
        ``IP.destination`` and ``{source,destination}.{namespace,pod_name,labels}`` (decode with
        :attr:`paths`); other fields of :attr:`paths` are filled when projected. ``rows``: the
        rows' JSON, rewritten for changed rows. Returns (table, rows, number of rows changed).
        """
        n = table.num_rows
        if n == 0 or "flow" not in table.column_names:
            return table, rows, 0
        flow = _combined(table.column("flow"))
        assert isinstance(flow, pa.StructArray)
        ip = _child(flow, "IP")
        missing = [f"IP.{s}" for s in _SIDES if ip is None or _child(ip, s) is None]
        for side in _SIDES:
            ep = _child(flow, side)
            missing += [f"{side}.{f}" for f in _DECIDE_FIELDS if ep is None or _child(ep, f) is None]
        if missing:
            raise ValueError(f"Kubernetes enrichment needs the flow fields {', '.join(missing)} decoded "
                             "(add PodIndex.paths to the decoder's paths)")
        assert ip is not None
        frozen = self._current()
        if not frozen.size:
            return table, rows, 0
        children = {f.name: flow.field(i) for i, f in enumerate(flow.type)}
        lookups = {side: frozen.lookup(ip.field(side)) for side in _SIDES}
        fills: dict[str, np.ndarray] = {}
        enriched = unresolved = deleted = services = 0
        for side in _SIDES:
            ep = children[side]
            assert isinstance(ep, pa.StructArray)
            idx = lookups[side]
            need = self._needs(ep, n) & bool_mask(ip.field(side).is_valid())
            known = idx >= 0
            hit = need & known & frozen.is_pod[np.maximum(idx, 0)]
            unresolved += int((need & ~known).sum())
            enriched += int(hit.sum())
            deleted += int((hit & frozen.deleted[np.maximum(idx, 0)]).sum())
            entry = np.where(hit, idx, -1)
            if hit.any():
                children[side] = _fill_struct(ep, lambda name, t: frozen.values("pod", name, t), entry, hit)
            fills[side] = entry
        svc_fills: dict[str, np.ndarray] = {}
        for field, side in _SERVICE_OF:
            idx = lookups[side]
            old = children.get(field)
            if old is None:
                raise ValueError(f"Kubernetes enrichment needs the flow field {field} decoded")
            assert isinstance(old, pa.StructArray)
            name = _child(old, "name")
            has = _nonempty(name, n) if name is not None else bool_mask(old.is_valid())
            hit = ~has & (idx >= 0) & frozen.is_service[np.maximum(idx, 0)]
            services += int(hit.sum())
            entry = np.where(hit, idx, -1)
            if hit.any():
                children[field] = _fill_struct(old, lambda nm, t: frozen.values("service", nm, t), entry, hit)
            svc_fills[field] = entry
        changed = np.zeros(n, dtype=bool)
        for entry in [*fills.values(), *svc_fills.values()]:
            changed |= entry >= 0
        with self._lock:
            c = self._counters
            c["enriched"] += enriched
            c["unresolved"] += unresolved
            c["resolved_deleted"] += deleted
            c["services_filled"] += services
        n_changed = int(changed.sum())
        if not n_changed:
            return table, rows, 0
        mask = None if flow.null_count == 0 else flow.is_null()
        new_flow = pa.StructArray.from_arrays(list(children.values()), fields=list(flow.type), mask=mask)
        pos = table.schema.get_field_index("flow")
        table = table.set_column(pos, table.schema.field(pos), new_flow)
        return table, _rewrite_rows(rows, frozen, fills, svc_fills, changed), n_changed

    @staticmethod
    def _needs(ep: pa.StructArray, n: int) -> np.ndarray:
        """Endpoints with no Kubernetes metadata and no reserved identity (world, host, …)."""
        has = _nonempty(_child(ep, "namespace"), n) | _nonempty(_child(ep, "pod_name"), n)
        labels = _child(ep, "labels")
        if labels is not None:
            has |= bool_mask(pc.greater(pc.fill_null(pc.list_value_length(labels), 0), 0))
        ident = _child(ep, "identity")
        if ident is not None:
            i = np.asarray(pc.fill_null(ident, 0).to_numpy(zero_copy_only=False))
            has |= (i > 0) & (i <= _MAX_RESERVED_IDENTITY)
        return ~has

    # -- watch ------------------------------------------------------------------------------------

    def start_watch(self, stop: threading.Event, kubeconfig: str | None = None, in_cluster: bool = False,
                    context: str | None = None, watch_timeout_s: int = 300) -> threading.Thread:
        """Keep the index current from the API server (list + watch pods, services, namespaces;
        resumes from the last resourceVersion, relists on 410 Gone, backs off on errors) until
        ``stop`` is set. Raises a clear error at once when the client cannot be configured."""
        from flowtrail.enrich.k8swatch import start_watch

        return start_watch(self, stop, kubeconfig=kubeconfig, in_cluster=in_cluster, context=context,
                           watch_timeout_s=watch_timeout_s)


def _rewrite_rows(rows: Rows, frozen: _Frozen, fills: Mapping[str, np.ndarray],
                  svc_fills: Mapping[str, np.ndarray], changed: np.ndarray) -> Rows:
    starts = rows.starts.copy()
    ends = rows.ends.copy()
    replaced = dict(rows.replaced)
    idx = np.flatnonzero(changed)
    src, dst = fills["source"][idx].tolist(), fills["destination"][idx].tolist()
    dsvc, ssvc = svc_fills["destination_service"][idx].tolist(), svc_fills["source_service"][idx].tolist()
    ep_bytes = frozen.endpoint_bytes
    data = rows.data if isinstance(rows.data, bytes) else None
    base = rows.base
    old_starts, old_ends = rows.starts[idx].tolist(), rows.ends[idx].tolist()
    # per row: the JSON text of a changed row has to be produced anyway
    for i, a, b, se, de, dv, sv in zip(idx.tolist(), old_starts, old_ends, src, dst, dsvc, ssvc, strict=True):
        raw = data[base + a : base + b] if data is not None and a >= 0 else rows[i]
        out: bytes | None = None
        if dv < 0 and sv < 0:
            # an endpoint printed as {} (Retina's "IPs only") takes the filled one in place
            out = raw
            for pat, e in ((b'"source":{}', se), (b'"destination":{}', de)):
                if e >= 0:
                    at = out.find(pat)
                    if at < 0 or out.find(pat, at + len(pat)) >= 0:
                        out = None
                        break
                    out = b"".join((out[:at + len(pat) - 2], ep_bytes[e], out[at + len(pat):]))
        if out is None:
            out = _rewrite_json(raw, frozen, se, de, dv, sv)
        replaced[i] = out
        starts[i] = ends[i] = -1
    return Rows(rows.data, starts, ends, replaced, rows.base)


def _rewrite_json(raw: bytes, frozen: _Frozen, se: int, de: int, dv: int, sv: int) -> bytes:
    env = orjson.loads(raw)
    flow = env["flow"]
    added: dict[str, Any] = {}
    for side, e in (("source", se), ("destination", de)):
        if e >= 0:
            ours = frozen.endpoint_json[e]
            assert ours is not None
            cur = flow.get(side)
            value = _merge_endpoint(cur, ours) if isinstance(cur, dict) and cur else ours
            if side in flow:
                flow[side] = value
            else:
                added[side] = value
    for field, e in (("destination_service", dv), ("source_service", sv)):
        if e >= 0:
            if field in flow:
                flow[field] = frozen.service_json[e]
            else:
                added[field] = frozen.service_json[e]
    if added:
        env["flow"] = _insert_ordered(flow, added)
    return orjson.dumps(env)


def _insert_ordered(flow: dict[str, Any], added: dict[str, Any]) -> dict[str, Any]:
    """``flow`` with the ``added`` keys at their place in Hubble's field order."""
    pending = sorted(added, key=_FLOW_ORDER.__getitem__)
    out: dict[str, Any] = {}
    last = len(_FLOW_ORDER)
    for k, v in flow.items():
        rank = _FLOW_ORDER.get(k, last)
        while pending and _FLOW_ORDER[pending[0]] < rank:
            p = pending.pop(0)
            out[p] = added[p]
        out[k] = v
    for p in pending:
        out[p] = added[p]
    return out


def _read_objects(path: str) -> list[Any]:
    p = Path(path)
    try:
        text = p.read_bytes()
    except OSError as exc:
        raise SnapshotError(f"{path}: {exc.strerror}") from None
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        try:
            data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        except yaml.YAMLError as exc:
            raise SnapshotError(f"{path}: neither JSON nor YAML: {exc}") from None
    if isinstance(data, list):
        return data
    if not isinstance(data, dict):
        raise SnapshotError(f"{path}: expected a kubectl List (kubectl get namespaces,pods,services -A -o json)")
    if str(data.get("kind", "")).endswith("List"):
        items = data.get("items")
        if not isinstance(items, list):
            raise SnapshotError(f"{path}: `items` must be a list")
        return items
    return [data]


__all__ = ["PodIndex", "SnapshotError", "pod_from_object", "service_from_object", "workloads_of"]
