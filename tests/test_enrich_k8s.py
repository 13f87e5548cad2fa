"""Kubernetes enrichment (flowtrail.enrich.k8s): lab flows stripped to their IP addresses, the way
Retina leaves them, get back what Cilium printed; the API watch keeps the index current against a
small kube-apiserver served over HTTP by the test, through the official client and a kubeconfig."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlparse

import numpy as np
import orjson
import pytest

from flowtrail.enrich.k8s import PodIndex, SnapshotError
from flowtrail.filters import FilterSet
from flowtrail.lab.cluster import Cluster, load_cluster
from flowtrail.sources.decode import Decoder

SEED = 1
# label keys the API server / controllers put on pods and that Cilium leaves out of identities
HASH = "7d4b9c8f6"


# ---- a kubectl snapshot of the lab's demo cluster -------------------------------------------------

def _pod_object(c: Cluster, wl: Any, pod: Any, i: int) -> dict[str, Any]:
    labels = dict(wl.labels)
    if wl.kind == "Deployment":
        rs_hash = pod.name[len(wl.name) + 1:].rsplit("-", 1)[0]
        labels["pod-template-hash"] = rs_hash
        owner = {"kind": "ReplicaSet", "name": f"{wl.name}-{rs_hash}", "apiVersion": "apps/v1"}
    elif wl.kind == "StatefulSet":
        labels.update({"controller-revision-hash": f"{wl.name}-{HASH}", "apps.kubernetes.io/pod-index": str(i),
                       "statefulset.kubernetes.io/pod-name": pod.name})
        owner = {"kind": "StatefulSet", "name": wl.name, "apiVersion": "apps/v1"}
    else:
        labels.update({"controller-revision-hash": HASH, "pod-template-generation": "1"})
        owner = {"kind": wl.kind, "name": wl.name, "apiVersion": "apps/v1"}
    node = c.nodes[pod.node]
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod.name, "namespace": wl.ns, "uid": f"uid-{wl.ns}-{pod.name}", "labels": labels,
                     "ownerReferences": [{**owner, "uid": f"uid-owner-{wl.name}", "controller": True,
                                          "blockOwnerDeletion": True}]},
        "spec": {"serviceAccountName": wl.service_account, "nodeName": node.host,
                 "containers": [{"name": wl.name, "image": f"registry.example/{wl.name}:1.0",
                                 "ports": [{"containerPort": p["port"], "protocol": p.get("protocol", "TCP"),
                                            **({"name": p["name"]} if "name" in p else {})} for p in wl.ports]}]},
        "status": {"phase": "Running", "hostIP": node.ip, "podIP": pod.ip, "podIPs": [{"ip": pod.ip}]},
    }


def lab_snapshot(c: Cluster) -> dict[str, Any]:
    """``kubectl get namespaces,pods,services -A -o json`` of the simulated cluster."""
    items: list[dict[str, Any]] = []
    for ns, labels in {**c.namespaces, "default": {}}.items():
        items.append({"apiVersion": "v1", "kind": "Namespace",
                      "metadata": {"name": ns, "uid": f"uid-ns-{ns}",
                                   "labels": {"kubernetes.io/metadata.name": ns, **labels}}})
    for wl in c.workloads.values():
        items += [_pod_object(c, wl, p, i) for i, p in enumerate(wl.pods)]
        if wl.service:
            items.append({"apiVersion": "v1", "kind": "Service",
                          "metadata": {"name": wl.service, "namespace": wl.ns, "uid": f"uid-svc-{wl.key}"},
                          "spec": {"type": "ClusterIP", "clusterIP": wl.svc_ip, "clusterIPs": [wl.svc_ip],
                                   "selector": dict(wl.labels),
                                   "ports": [{"name": p.get("name", str(p["port"])), "port": p["port"],
                                              "targetPort": p["port"], "protocol": p.get("protocol", "TCP")}
                                             for p in wl.ports]}})
    # hostNetwork pods have the node's address: they must not claim it (Cilium reports the host)
    for n in c.nodes:
        items.append({"apiVersion": "v1", "kind": "Pod",
                      "metadata": {"name": f"kube-proxy-{n.host}", "namespace": "kube-system",
                                   "uid": f"uid-kp-{n.host}", "labels": {"k8s-app": "kube-proxy"}},
                      "spec": {"hostNetwork": True, "nodeName": n.host},
                      "status": {"phase": "Running", "podIP": n.ip, "podIPs": [{"ip": n.ip}]}})
    items.append({"apiVersion": "v1", "kind": "Service",
                  "metadata": {"name": "kubernetes", "namespace": "default", "uid": "uid-svc-kubernetes"},
                  "spec": {"type": "ClusterIP", "clusterIP": c.apiserver_svc_ip, "clusterIPs": [c.apiserver_svc_ip],
                           "ports": [{"name": "https", "port": 443, "targetPort": c.apiserver_port}]}})
    return {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": items}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("k8s")
    flows = d / "flows.jsonl"
    subprocess.run([sys.executable, "-m", "flowtrail.cli.main", "simulate", "--duration", "100s", "--seed", str(SEED),
                    "-o", str(flows), "-q"], check=True)
    cluster = load_cluster(None, SEED)
    snap = d / "snapshot.json"
    full = lab_snapshot(cluster)
    snap.write_text(json.dumps(full))
    # the same as two files: `kubectl get namespaces,pods` and `kubectl get services` (one object each)
    parts = [d / "ns-pods.json", d / "services.json"]
    parts[0].write_text(json.dumps({**full, "items": [o for o in full["items"] if o["kind"] != "Service"]}))
    parts[1].write_text(json.dumps([o for o in full["items"] if o["kind"] == "Service"]))
    lines = flows.read_bytes().splitlines()
    return {"cluster": cluster, "snapshot": str(snap), "parts": [str(p) for p in parts], "lines": lines, "dir": d}


def _strip(lines: list[bytes], to_cluster_ip: dict[tuple[str, str], str] | None = None) -> list[bytes]:
    """Endpoints and services removed, IPs kept (every 7th row drops the endpoint keys altogether,
    the others print them as {}). With ``to_cluster_ip``, flows that went through a Service show
    its ClusterIP instead of the backend (the pre-DNAT view at the client's interface)."""
    out = []
    for i, line in enumerate(lines):
        env = orjson.loads(line)
        f = env.get("flow")
        if f is not None:
            if to_cluster_ip is not None:
                for svc, side in (("destination_service", "destination"), ("source_service", "source")):
                    if svc in f:
                        f["IP"][side] = to_cluster_ip[(f[svc]["namespace"], f[svc]["name"])]
            for side in ("source", "destination"):
                if i % 7 == 0:
                    f.pop(side, None)
                else:
                    f[side] = {}
            f.pop("source_service", None)
            f.pop("destination_service", None)
        out.append(orjson.dumps(env))
    return out


FILTERS: list[dict[str, Any]] = [
    {"source_pod": ["app/"]},
    {"destination_pod": ["database/postgres-"]},
    {"source_pod": ["payments/"], "destination_pod": ["payments/"]},
    {"source_label": ["k8s:app=api"]},
    {"destination_label": ["tier=backend"]},
    {"source_label": ["k8s:io.cilium.k8s.namespace.labels.pci=true"]},
    {"destination_label": ["io.cilium.k8s.policy.serviceaccount=prometheus"]},
    {"destination_workload": [{"name": "postgres", "kind": "StatefulSet"}]},
    {"source_workload": [{"name": "web"}]},
    {"destination_cluster_name": ["prod-eu1"]},
]


def _decode(lines: list[bytes], paths: set[str]) -> Any:
    d = Decoder(paths).decode_block(b"\n".join(lines) + b"\n", "flows")
    assert not d.errors, d.errors[:3]
    return d


def test_snapshot_enrichment_restores_lab_metadata(lab: dict[str, Any]) -> None:
    index = PodIndex.from_snapshot(lab["snapshot"], cluster="prod-eu1")
    st = index.stats
    c = lab["cluster"]
    assert st["pods"] == len(c.pods) and st["services"] == sum(1 for w in c.workloads.values() if w.service) + 1
    fs = [FilterSet.compile([f]) for f in FILTERS]
    paths = index.paths | set().union(*(f.paths for f in fs))
    lines = lab["lines"]
    original = _decode(lines, paths)
    stripped = _decode(_strip(lines), paths)
    t0 = time.perf_counter()
    table, rows, changed = index.enrich(stripped.table, stripped.rows)
    took = time.perf_counter() - t0
    n = len(lines)
    print(f"\nenrich: {n} stripped lab flows in {took:.2f} s = {n / took:,.0f} flows/s ({changed} rows changed)")
    assert n >= 90_000 and changed > 0.9 * n

    pod_ips = {p.ip for p in c.pods}
    checked = 0
    for before, after in zip(lines, rows.to_list(), strict=True):
        fb, fa = orjson.loads(before).get("flow"), orjson.loads(after).get("flow")
        if fb is None:
            assert fa is None
            continue
        for side in ("source", "destination"):
            eb, ea = fb.get(side) or {}, fa.get(side) or {}
            if eb.get("pod_name") and fb["IP"][side] in pod_ips:
                assert {k: ea.get(k) for k in ("cluster_name", "namespace", "pod_name", "labels", "workloads")} == \
                       {k: eb.get(k) for k in ("cluster_name", "namespace", "pod_name", "labels", "workloads")}
                checked += 1
            else:  # world, host, health, kube-apiserver: nothing to claim them
                assert "pod_name" not in ea and "namespace" not in ea, (side, fb["IP"])
        assert "destination_service" not in fa  # backends are not ClusterIPs
    assert checked > n  # most flows have two pod endpoints

    # the table says what the rewritten JSON says, field for field
    again = _decode(rows.to_list(), paths)
    assert again.table.column("flow").combine_chunks().equals(table.column("flow").combine_chunks())
    # filters select the same rows as on Cilium's own flows
    for f, spec in zip(fs, FILTERS, strict=True):
        want = f.mask(original.table)
        assert want.any(), spec
        assert np.array_equal(f.mask(table), want), spec
        assert np.array_equal(f.mask(stripped.table), np.zeros(n, bool)) or "cluster" in str(spec)
    st = index.stats
    assert st["enriched"] == checked and st["unresolved"] > 0 and st["bad_objects"] == 0

    # a second batch reuses the frozen index; nothing left to fill in enriched flows
    t2, r2, changed2 = index.enrich(table, rows)
    assert changed2 == 0 and t2 is table and r2 is rows


def test_cluster_ip_destinations_get_their_service(lab: dict[str, Any]) -> None:
    c = lab["cluster"]
    index = PodIndex.from_snapshot(lab["parts"], cluster="prod-eu1")
    svc_ip = {(w.ns, w.service): w.svc_ip for w in c.workloads.values() if w.service}
    svc_ip[("default", "kubernetes")] = c.apiserver_svc_ip
    lines = lab["lines"][:30_000]
    fs = [FilterSet.compile([{"destination_service": ["payments/billing"]}]),
          FilterSet.compile([{"source_service": ["database/"]}]),
          FilterSet.compile([{"destination_service": ["app/"]}], [{"source_service": ["app/cart"]}])]
    paths = index.paths | set().union(*(f.paths for f in fs))
    original = _decode(lines, paths)
    stripped = _decode(_strip(lines, svc_ip), paths)
    table, rows, changed = index.enrich(stripped.table, stripped.rows)
    assert changed > 0
    with_svc = 0
    for before, after in zip(lines, rows.to_list(), strict=True):
        fb, fa = orjson.loads(before).get("flow") or {}, orjson.loads(after).get("flow") or {}
        for key in ("destination_service", "source_service"):
            assert fa.get(key) == fb.get(key)
            with_svc += key in fb
        assert list(fa) == [k for k in fb if k in fa]  # Hubble's field order kept
    assert with_svc > 1000 and index.stats["services_filled"] == with_svc
    for f in fs:
        want = f.mask(original.table)
        assert want.any() and np.array_equal(f.mask(table), want)


def test_enrich_needs_its_paths_and_rejects_bad_snapshots(lab: dict[str, Any], tmp_path: Path) -> None:
    index = PodIndex.from_snapshot(lab["snapshot"])
    d = _decode(lab["lines"][:10], {"verdict"})
    with pytest.raises(ValueError, match=r"IP\.source"):
        index.enrich(d.table, d.rows)
    bad = tmp_path / "bad.json"
    bad.write_text('{"kind": "List", "items": {"a": 1}}')
    with pytest.raises(SnapshotError, match="items"):
        PodIndex.from_snapshot(str(bad))
    with pytest.raises(SnapshotError, match="No such file"):
        PodIndex.from_snapshot(str(tmp_path / "missing.json"))
    # malformed objects are counted and skipped; YAML works as well
    y = tmp_path / "snap.yaml"
    y.write_text("kind: List\nitems:\n- kind: Pod\n  metadata: {}\n- kind: Service\n  metadata: {name: s}\n"
                 "  spec: {clusterIP: 10.96.0.9}\n")
    idx = PodIndex.from_snapshot(str(y))
    assert idx.stats["bad_objects"] == 1 and idx.resolve("10.96.0.9") == {"service": {"name": "s",
                                                                                      "namespace": "default"}}


# ---- a small kube-apiserver: list + streaming watch with resourceVersions -------------------------

class FakeAPIServer:
    RESOURCES: ClassVar[dict[str, str]] = {"/api/v1/namespaces": "namespaces", "/api/v1/pods": "pods", "/api/v1/services": "services"}

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.rv = 100
        self.objects: dict[str, dict[str, dict[str, Any]]] = {r: {} for r in self.RESOURCES.values()}
        self.events: dict[str, list[tuple[int, str, dict[str, Any]]]] = {r: [] for r in self.RESOURCES.values()}
        self.compacted = dict.fromkeys(self.RESOURCES.values(), 0)
        self.generation = 0  # bumped to end the open watches
        self.requests: list[tuple[str, dict[str, str], str]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                url = urlparse(self.path)
                q = {k: v[0] for k, v in parse_qs(url.query).items()}
                api.requests.append((url.path, q, self.headers.get("Authorization", "")))
                res = api.RESOURCES.get(url.path)
                if res is None:
                    self._send(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
                elif q.get("watch") == "true":
                    self._watch(res, int(q.get("resourceVersion") or 0), float(q.get("timeoutSeconds") or 5))
                else:
                    with api.cond:
                        items = [copy.deepcopy(o) for o in api.objects[res].values()]
                        for o in items:
                            o.pop("kind", None)  # list items carry no kind
                        self._send(200, {"kind": res.title()[:-1] + "List", "apiVersion": "v1",
                                         "metadata": {"resourceVersion": str(api.rv)}, "items": items})

            def _send(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _chunk(self, event: dict[str, Any]) -> None:
                data = json.dumps(event).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

            def _watch(self, res: str, since: int, timeout: float) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                deadline = time.monotonic() + timeout
                with api.cond:
                    gen = api.generation
                    if since < api.compacted[res]:
                        self._chunk({"type": "ERROR", "object": {
                            "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410,
                            "reason": "Expired", "message": f"too old resource version: {since}"}})
                    else:
                        while time.monotonic() < deadline and api.generation == gen:
                            for rv, typ, obj in api.events[res]:
                                if rv > since:
                                    self._chunk({"type": typ, "object": obj})
                                    since = rv
                            api.cond.wait(min(0.1, max(deadline - time.monotonic(), 0)))
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def put(self, res: str, typ: str, obj: dict[str, Any], record: bool = True) -> None:
        with self.cond:
            self.rv += 1
            obj = copy.deepcopy(obj)
            obj["metadata"]["resourceVersion"] = str(self.rv)
            key = f"{obj['metadata'].get('namespace', '')}/{obj['metadata']['name']}"
            if typ == "DELETED":
                self.objects[res].pop(key, None)
            else:
                self.objects[res][key] = obj
            if record:
                self.events[res].append((self.rv, typ, obj))
            self.cond.notify_all()

    def compact(self, res: str) -> None:
        """Forget the event history (etcd compaction) and end the open watches."""
        with self.cond:
            self.compacted[res] = self.rv
            self.events[res] = []
            self.generation += 1
            self.cond.notify_all()


def _pod(name: str, ip: str, labels: dict[str, str], owner: tuple[str, str] | None = None,
         ns: str = "shop") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns, "uid": f"uid-{name}", "labels": labels}
    if owner:
        meta["ownerReferences"] = [{"kind": owner[0], "name": owner[1], "controller": True, "uid": "u"}]
    return {"kind": "Pod", "apiVersion": "v1", "metadata": meta, "spec": {"serviceAccountName": name.split("-")[0]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}


def _flow(src: str, dst: str) -> bytes:
    return orjson.dumps({"flow": {"time": "2026-11-26T08:00:00Z", "verdict": "FORWARDED",
                                  "IP": {"source": src, "destination": dst, "ipVersion": "IPv4"},
                                  "l4": {"TCP": {"source_port": 40000, "destination_port": 8080}},
                                  "source": {}, "destination": {}, "Type": "L3_L4"},
                         "node_name": "n1", "time": "2026-11-26T08:00:00Z"})


def _enriched(index: PodIndex, *pairs: tuple[str, str]) -> list[dict[str, Any]]:
    d = _decode([_flow(s, t) for s, t in pairs], index.paths)
    _, rows, _ = index.enrich(d.table, d.rows)
    return [orjson.loads(r)["flow"] for r in rows.to_list()]


def _wait(cond: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture()
def apiserver() -> Iterator[FakeAPIServer]:
    api = FakeAPIServer()
    api.thread.start()
    yield api
    api.server.shutdown()
    api.server.server_close()


def test_watch_follows_the_api_server(apiserver: FakeAPIServer, tmp_path: Path) -> None:
    api = apiserver
    api.put("namespaces", "ADDED", {"kind": "Namespace", "metadata": {
        "name": "shop", "labels": {"kubernetes.io/metadata.name": "shop", "team": "shop"}}})
    api.put("pods", "ADDED", _pod("web-5f9c-abcde", "10.1.0.5", {"app": "web", "pod-template-hash": "5f9c"},
                                  ("ReplicaSet", "web-5f9c")))
    api.put("pods", "ADDED", _pod("db-0", "10.1.0.6", {"app": "db"}, ("StatefulSet", "db")))
    api.put("services", "ADDED", {"kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
                                  "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"]}})
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{api.port}"}}],
        "users": [{"name": "reader", "user": {"token": "test-token"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "reader"}}]}))
    now = [1000.0]
    index = PodIndex(grace_s=60, clock=lambda: now[0])
    stop = threading.Event()
    thread = index.start_watch(stop, kubeconfig=str(kubeconfig), watch_timeout_s=2)
    try:
        _wait(lambda: index.stats["pods"] == 2 and index.stats["services"] == 1, "the initial list")
        f = _enriched(index, ("10.1.0.5", "10.96.0.10"), ("10.1.0.5", "10.1.0.6"))
        assert f[0]["source"] == {
            "namespace": "shop",
            "labels": ["k8s:app=web", "k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=shop",
                       "k8s:io.cilium.k8s.namespace.labels.team=shop", "k8s:io.cilium.k8s.policy.cluster=default",
                       "k8s:io.cilium.k8s.policy.serviceaccount=web", "k8s:io.kubernetes.pod.namespace=shop"],
            "pod_name": "web-5f9c-abcde", "workloads": [{"name": "web", "kind": "Deployment"}]}
        assert f[0]["destination"] == {} and f[0]["destination_service"] == {"name": "web", "namespace": "shop"}
        assert f[1]["destination"]["workloads"] == [{"name": "db", "kind": "StatefulSet"}]

        # added, modified; a namespace's labels reach its pods
        api.put("pods", "ADDED", _pod("api-1", "10.1.0.7", {"app": "api"}))
        api.put("pods", "MODIFIED", _pod("web-5f9c-abcde", "10.1.0.5", {"app": "web", "version": "v2"}))
        api.put("namespaces", "MODIFIED", {"kind": "Namespace", "metadata": {
            "name": "shop", "labels": {"kubernetes.io/metadata.name": "shop", "team": "store"}}})
        _wait(lambda: index.stats["watch_events"] >= 3, "the watch events")
        f = _enriched(index, ("10.1.0.7", "10.1.0.5"))
        assert f[0]["source"]["pod_name"] == "api-1" and "workloads" not in f[0]["source"]
        assert "k8s:version=v2" in f[0]["destination"]["labels"]
        assert "k8s:io.cilium.k8s.namespace.labels.team=store" in f[0]["destination"]["labels"]

        # the history is compacted while db-0 goes away unseen: 410 Gone, relist, db-0 kept for grace
        api.put("pods", "DELETED", _pod("db-0", "10.1.0.6", {}), record=False)
        api.compact("pods")
        _wait(lambda: index.stats["relists"] >= 1 and index.stats["deleted_in_grace"] == 1, "the relist")
        assert index.stats["watch_restarts"] >= 1 and index.stats["pods"] == 2
        assert _enriched(index, ("10.1.0.5", "10.1.0.6"))[0]["destination"]["pod_name"] == "db-0"
        now[0] += 61
        assert _enriched(index, ("10.1.0.5", "10.1.0.6"))[0]["destination"] == {}
        assert index.stats["deleted_in_grace"] == 0

        # a deleted pod resolves within the grace period, not after
        api.put("pods", "DELETED", _pod("api-1", "10.1.0.7", {"app": "api"}))
        _wait(lambda: index.stats["deleted_in_grace"] == 1, "the delete event")
        before = index.stats["resolved_deleted"]
        now[0] += 59
        assert _enriched(index, ("10.1.0.7", "10.1.0.5"))[0]["source"]["pod_name"] == "api-1"
        assert index.stats["resolved_deleted"] == before + 1
        now[0] += 2
        assert _enriched(index, ("10.1.0.7", "10.1.0.5"))[0]["source"] == {}
        unresolved = index.stats["unresolved"]
        assert unresolved >= 2
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    watches = [(p, q) for p, q, _ in api.requests if q.get("watch") == "true"]
    lists = [p for p, q, _ in api.requests if q.get("watch") != "true"]
    assert all(auth == "Bearer test-token" for _, _, auth in api.requests)
    assert lists.count("/api/v1/pods") == 2 and lists.count("/api/v1/services") == 1
    # watches resume from the last resourceVersion seen (timeouts do not relist)
    svc_watches = [int(q["resourceVersion"]) for p, q in watches if p == "/api/v1/services"]
    assert len(svc_watches) >= 2 and all(v == svc_watches[0] for v in svc_watches)
    pod_watches = [int(q["resourceVersion"]) for p, q in watches if p == "/api/v1/pods"]
    assert pod_watches == sorted(pod_watches) and pod_watches[-1] > pod_watches[0]


def test_rbac_grants_what_the_watch_reads() -> None:
    import yaml

    from flowtrail.enrich.k8swatch import RESOURCES
    docs = list(yaml.safe_load_all((Path(__file__).parent.parent / "deploy/kubernetes/rbac.yaml").read_text()))
    role = next(d for d in docs if d["kind"] == "ClusterRole")
    binding = next(d for d in docs if d["kind"] == "ClusterRoleBinding")
    sa = next(d for d in docs if d["kind"] == "ServiceAccount")
    granted = {r for rule in role["rules"] if rule["apiGroups"] == [""] for r in rule["resources"]}
    assert granted == {k.lower() + "s" for k in RESOURCES}
    assert all(set(rule["verbs"]) == {"get", "list", "watch"} for rule in role["rules"])  # read-only
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": sa["metadata"]["namespace"]}]
