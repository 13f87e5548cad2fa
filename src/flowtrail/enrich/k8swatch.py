"""Keep a :class:`~flowtrail.enrich.k8s.PodIndex` current from the Kubernetes API.

One thread per resource (namespaces, pods, services) runs the usual informer loop with the
official ``kubernetes`` client: a paginated list, then a watch from the list's resourceVersion
that resumes from the last version seen (bookmarks included) when the server ends it; a
``410 Gone`` (the version was compacted away) makes it list again, and a list replaces what the
index held for that kind, so nothing missed while disconnected stays behind (missing pods are
kept as deleted for the grace period). Other errors back off exponentially up to 30 s.

Objects are read as plain JSON (``_preload_content=False``) rather than the client's models:
the index needs a handful of fields, and the model classes cost more than the parse.

The client is configured from a kubeconfig (``kubeconfig``/``context``, default ``~/.kube/config``
or ``$KUBECONFIG``) or from the pod's service account (``in_cluster``); the read-only RBAC it needs
is in deploy/kubernetes/rbac.yaml.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from flowtrail.enrich.k8s import PodIndex

log = logging.getLogger(__name__)

# kind -> CoreV1Api method listing it across namespaces
RESOURCES = {"Namespace": "list_namespace", "Pod": "list_pod_for_all_namespaces",
             "Service": "list_service_for_all_namespaces"}
LIST_PAGE = 500
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0


class WatchConfigError(RuntimeError):
    """The Kubernetes client could not be configured (no kubeconfig, not in a cluster, …)."""


class _Gone(Exception):
    """The watch's resourceVersion is too old: list again."""


class _HTTPError(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:300].decode('utf-8', 'replace')}")
        self.status = status


def api_client(kubeconfig: str | None = None, in_cluster: bool = False, context: str | None = None) -> Any:
    """A ``kubernetes.client.ApiClient`` of its own (the client's global default is left alone)."""
    from kubernetes import client, config

    cfg = client.Configuration()
    try:
        if in_cluster:
            config.load_incluster_config(client_configuration=cfg)
        else:
            config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg)
    except (config.ConfigException, OSError, TypeError, ValueError) as exc:
        where = "in-cluster service account" if in_cluster else (kubeconfig or "default kubeconfig")
        raise WatchConfigError(f"cannot configure the Kubernetes client from the {where}: {exc}") from None
    return client.ApiClient(cfg)


def start_watch(index: PodIndex, stop: threading.Event, kubeconfig: str | None = None, in_cluster: bool = False,
                context: str | None = None, watch_timeout_s: int = 300) -> threading.Thread:
    """Start watching; the returned (daemon) thread ends when ``stop`` is set and every resource
    thread has finished (each notices within ``watch_timeout_s`` plus one read)."""
    from kubernetes import client

    api = client.CoreV1Api(api_client(kubeconfig, in_cluster, context))
    workers = [threading.Thread(target=_run, name=f"k8s-watch-{kind.lower()}", daemon=True,
                                args=(index, stop, getattr(api, fn), kind, watch_timeout_s))
               for kind, fn in RESOURCES.items()]

    def supervise() -> None:
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    t = threading.Thread(target=supervise, name="k8s-watch", daemon=True)
    t.start()
    return t


def _run(index: PodIndex, stop: threading.Event, list_fn: Callable[..., Any], kind: str, timeout_s: int) -> None:
    rv: str | None = None
    backoff = BACKOFF_START_S
    listed = False
    while not stop.is_set():
        try:
            if rv is None:
                rv = _list(index, list_fn, kind, timeout_s)
                if listed:
                    index.count("relists")
                listed = True
            for event in _watch(list_fn, rv, timeout_s, stop):
                typ = event.get("type")
                obj = event.get("object")
                if not isinstance(obj, dict):
                    index.count("bad_objects")
                    continue
                if typ == "ERROR":
                    if obj.get("code") == 410:
                        raise _Gone()
                    raise _HTTPError(int(obj.get("code") or 0), orjson.dumps(obj))
                version = (obj.get("metadata") or {}).get("resourceVersion")
                if typ in ("ADDED", "MODIFIED", "DELETED"):
                    index.apply_event(kind, str(typ), obj)
                    index.count("watch_events")
                if version:
                    rv = str(version)
            backoff = BACKOFF_START_S  # the server ended the watch normally: resume from rv
        except _Gone:
            log.info("watch of %s: resourceVersion %s expired (410 Gone), listing again", kind, rv)
            rv = None
            index.count("watch_restarts")
        except Exception as exc:  # any transport or API failure: back off and retry
            if stop.is_set():
                break
            log.warning("watch of %s failed (%s); retrying in %.1f s", kind, exc, backoff)
            index.count("watch_restarts")
            if isinstance(exc, _HTTPError) and exc.status == 410:
                rv = None
            stop.wait(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)


def _check(resp: Any) -> None:
    status = getattr(resp, "status", 200)
    if not 200 <= int(status) <= 299:
        body = resp.data if hasattr(resp, "data") else b""
        with contextlib.suppress(AttributeError):
            resp.release_conn()
        if status == 410:
            raise _Gone()
        raise _HTTPError(int(status), body or b"")


def _list(index: PodIndex, list_fn: Callable[..., Any], kind: str, timeout_s: int) -> str:
    items: list[Any] = []
    cont: str | None = None
    while True:
        kwargs: dict[str, Any] = {"limit": LIST_PAGE, "_preload_content": False, "_request_timeout": timeout_s + 30}
        if cont:
            kwargs["_continue"] = cont
        resp = list_fn(**kwargs)
        _check(resp)
        body = orjson.loads(resp.data)
        items.extend(body.get("items") or [])
        meta = body.get("metadata") or {}
        cont = meta.get("continue")
        if not cont:
            index.replace_objects(kind, [o for o in items if isinstance(o, dict)])
            return str(meta.get("resourceVersion") or "")


def _watch(list_fn: Callable[..., Any], rv: str, timeout_s: int, stop: threading.Event) -> Iterator[dict[str, Any]]:
    resp = list_fn(watch=True, resource_version=rv, allow_watch_bookmarks=True, timeout_seconds=timeout_s,
                   _preload_content=False, _request_timeout=(10, timeout_s + 30))
    try:
        _check(resp)
        buf = b""
        for chunk in resp.stream(amt=None, decode_content=True):
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if line.strip():
                    yield orjson.loads(line)
            if stop.is_set():
                return
        if buf.strip():
            yield orjson.loads(buf)
    finally:
        resp.release_conn()
