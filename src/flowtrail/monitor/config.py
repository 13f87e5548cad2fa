"""`flowtrail run` configuration: one YAML file, validated by a JSON schema (errors name file:line),
with the common cases also available as command-line flags (flags win).

The documented default configuration is `DEFAULT_CONFIG_YAML` (printed by
`flowtrail run --print-default-config`); every key not given takes its value from it.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from flowtrail.detect.rules import _locate
from flowtrail.model.timeutil import parse_go_duration_ns
from flowtrail.sinks.alerting import ALERT_SINK_SCHEMA
from flowtrail.sinks.export import EXPORT_SCHEMA


class ConfigError(ValueError):
    """An invalid configuration; the message starts with file:line where known."""


DEFAULT_CONFIG_YAML = """\
# flowtrail run: default configuration. Every key is optional; flags override the file.
sources: []              # - {type: file, path: /var/run/cilium/hubble/events.log, start: beginning}
                         # - {type: relay, address: hubble-relay.kube-system.svc:80, tls: false}
                         # - {type: stdin}
state_dir: null          # offsets of followed files, relay positions, alert and flow-export spools, detection state (restarts resume)
filter:                  # Hubble FlowFilters (JSON field names); after enrichment, before metrics, export, detection
  allow: []
  deny: []
enrich:
  kubernetes: null       # {snapshot: FILE} or {watch: true, kubeconfig: null, in_cluster: false, grace: 5m}
                         # (+ cluster: NAME for cluster_name); see docs/kubernetes-enrichment.md
detect:
  enabled: true
  rules: []              # extra rule files/directories beside the built-in pack
  cluster: {}            # pod_cidrs, service_cidrs, node_ips, apiserver_ips (as in `detect --config`)
  overrides: {}          # per-rule overrides (the `rules:` section of `detect --config`)
  intel: []              # threat-intel feed files
  baseline: null         # file from `flowtrail baseline learn`
  policies: []           # NetworkPolicy / CiliumNetworkPolicy files or dirs: forwarded flows they deny alert
  inventory: null
  cni: auto
  min_severity: info
  node_silence: 2m       # flow-gap alert when a node sends no flows this long while others do (0s: off)
  checkpoint_interval: 10s # with state_dir: detection state saved this often and at stop (a crash re-reads
                         # at most this much input into the state of the last checkpoint)
metrics:
  listen: null           # e.g. ":9965" (Hubble's metrics port); serves /metrics, /healthz, /readyz
  hubble: default        # list of Hubble metric specs ("dns:query;ignoreAAAA", "drop:sourceContext=namespace", ...)
alerts: []               # alert sinks; none given: JSON lines on stdout
export: []               # flow exporters (Hubble exporter files, Elasticsearch, Splunk HEC); Cilium's
                         # flowlogs.yaml ({flowLogs: [...]}) is accepted as it is
pipeline:
  batch_max_flows: 65536 # a batch is processed when this many flows are queued ...
  batch_max_delay: 100ms # ... or when its first flow waited this long (bounds alert latency)
  queue_max_mb: 64        # raw input waiting to be processed (memory bound)
  overload: block        # block: sources wait (files, stdin: nothing is lost, lag grows)
                         # shed: chunks that do not fit are dropped and counted (flowtrail_flows_shed_total)
  shutdown_timeout: 10s  # SIGTERM: time allowed to drain the queue and flush the sinks
  decode_workers: 0      # extra processes decoding JSON, computing the Hubble metrics and prefiltering for
                         # detection (0: a decode thread in this process; on 2 CPUs the thread is faster)
log:
  level: info
  format: json           # json (one object per line on stderr) or text
"""

DEFAULTS: dict[str, Any] = yaml.safe_load(DEFAULT_CONFIG_YAML)

_DURATION = {"type": "string", "pattern": r"^([0-9]+(\.[0-9]*)?(ns|us|µs|ms|s|m|h))+$"}
_FILTERS = {"type": "array", "items": {"type": "object"}}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "sources": {"type": "array", "items": {"oneOf": [
            {"type": "object", "additionalProperties": False, "required": ["type", "path"],
             "properties": {"type": {"const": "file"}, "path": {"type": "string"},
                            "start": {"enum": ["beginning", "end"]}, "poll_interval": _DURATION}},
            {"type": "object", "additionalProperties": False, "required": ["type", "address"],
             "properties": {"type": {"const": "relay"}, "address": {"type": "string"},
                            "allow": _FILTERS, "deny": _FILTERS, "since": {"type": ["string", "null"]},
                            "tls": {"type": "boolean"}, "tls_allow_insecure": {"type": "boolean"},
                            "tls_ca_cert_files": {"type": "array", "items": {"type": "string"}},
                            "tls_client_cert_file": {"type": ["string", "null"]},
                            "tls_client_key_file": {"type": ["string", "null"]},
                            "tls_server_name": {"type": ["string", "null"]},
                            "overload": {"enum": ["block", "shed"]}}},
            {"type": "object", "additionalProperties": False, "required": ["type"],
             "properties": {"type": {"const": "stdin"}}},
        ]}},
        "state_dir": {"type": ["string", "null"]},
        "filter": {"type": "object", "additionalProperties": False,
                   "properties": {"allow": _FILTERS, "deny": _FILTERS}},
        "enrich": {"type": "object", "additionalProperties": False, "properties": {
            "kubernetes": {"oneOf": [{"type": "null"}, {
                "type": "object", "additionalProperties": False,
                "properties": {"snapshot": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
                               "watch": {"type": "boolean"}, "kubeconfig": {"type": ["string", "null"]},
                               "context": {"type": ["string", "null"]},
                               "cluster": {"type": ["string", "null"]},
                               "in_cluster": {"type": "boolean"}, "grace": _DURATION}}]}}},
        "detect": {"type": "object", "additionalProperties": False, "properties": {
            "enabled": {"type": "boolean"},
            "rules": {"type": "array", "items": {"type": "string"}},
            "cluster": {"type": "object"}, "overrides": {"type": "object"},
            "intel": {"type": "array", "items": {"type": "string"}},
            "baseline": {"type": ["string", "null"]},
            "policies": {"type": "array", "items": {"type": "string"}},
            "inventory": {"type": ["string", "null"]},
            "cni": {"enum": ["auto", "kubernetes", "cilium"]},
            "min_severity": {"enum": ["info", "low", "medium", "high", "critical"]},
            "node_silence": _DURATION, "checkpoint_interval": _DURATION}},
        "metrics": {"type": "object", "additionalProperties": False, "properties": {
            "listen": {"type": ["string", "null"]},
            "hubble": {"oneOf": [{"const": "default"}, {"type": "array", "items": {"type": "string"}}]}}},
        "alerts": {"type": "array", "items": ALERT_SINK_SCHEMA},
        # a list of entries, or Cilium's own flowlogs.yaml pasted as it is ({flowLogs: [...]})
        "export": {"oneOf": [{"type": "array", "items": EXPORT_SCHEMA},
                             {"type": "object", "additionalProperties": False, "required": ["flowLogs"],
                              "properties": {"flowLogs": {"type": "array", "items": EXPORT_SCHEMA}}}]},
        "pipeline": {"type": "object", "additionalProperties": False, "properties": {
            "batch_max_flows": {"type": "integer", "minimum": 1},
            "batch_max_delay": _DURATION,
            "queue_max_mb": {"type": "number", "exclusiveMinimum": 0},
            "overload": {"enum": ["block", "shed"]},
            "shutdown_timeout": _DURATION,
            "decode_workers": {"oneOf": [{"const": "auto"}, {"type": "integer", "minimum": 0, "maximum": 64}]}}},
        "log": {"type": "object", "additionalProperties": False, "properties": {
            "level": {"enum": ["debug", "info", "warning", "error"]},
            "format": {"enum": ["json", "text"]}}},
    },
}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def validate(data: Any, source: str, node: yaml.Node | None = None) -> dict[str, Any]:
    if data is None:
        data = {}
    errors = list(jsonschema.Draft202012Validator(SCHEMA).iter_errors(data))
    if errors:
        best = jsonschema.exceptions.best_match(errors)
        assert best is not None
        path = list(best.absolute_path)
        where = "/".join(str(p) for p in path) or "(top)"
        line = f":{_locate(node, path)}" if node is not None else ""
        raise ConfigError(f"{source}{line}: {where}: {best.message}")
    return _merge(DEFAULTS, data)


def load(path: str | None) -> dict[str, Any]:
    """The configuration in `path` merged over the defaults (the defaults alone without a path)."""
    if not path:
        return copy.deepcopy(DEFAULTS)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        raise ConfigError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}:1: expected a mapping")
    return validate(data, path, node)


def duration_s(value: str | None, what: str) -> float:
    if value is None:
        return 0.0
    try:
        ns = parse_go_duration_ns(value)
    except ValueError as exc:
        raise ConfigError(f"{what}: {exc}") from None
    if ns is None:
        raise ConfigError(f"{what}: invalid duration {value!r}")
    return ns / 1e9
