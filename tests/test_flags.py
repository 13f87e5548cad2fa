"""`hubble observe` filter flags → allowlist/denylist, via ``flowtrail observe ... --print-raw-filters``.

Expected filters follow hubble 1.19.4 ``hubble/cmd/observe/flows_filter.go`` (and the rules in
../shared/docs/hubble-reference.md §4.1-4.2): either-direction flags pair up per side, ``--from-*``
/ ``--to-*`` go into both filters, namespaces are applied when the filters are materialised,
``--not`` negates exactly one flag and all negated flags share one denylist tracker.
Cases where flowtrail differs from hubble are ``xfail(strict=True)`` with the rule as the reason.
"""

from __future__ import annotations

import io
import itertools
from typing import Any

import orjson
import pytest

from flowtrail.cli.observe import observe_main
from flowtrail.filters.flags import CONFLICTS
from tests.conftest import GOLDEN_DIR
from tests.reference_filter import Reference

# flow.proto FlowFilter declaration order: protojson prints fields in this order.
FLOWFILTER_ORDER = [
    "uuid", "source_ip", "source_ip_xlated", "source_pod", "source_fqdn", "source_label", "source_service",
    "source_workload", "source_cluster_name", "destination_ip", "destination_pod", "destination_fqdn",
    "destination_label", "destination_service", "destination_workload", "destination_cluster_name",
    "traffic_direction", "verdict", "drop_reason_desc", "interface", "event_type", "http_status_code", "protocol",
    "source_port", "destination_port", "reply", "dns_query", "source_identity", "destination_identity",
    "http_method", "http_path", "http_url", "http_header", "tcp_flags", "node_name", "node_labels", "ip_version",
    "trace_id", "ip_trace_id", "encrypted", "experimental",
]


def _unyaml(text: str) -> dict[str, list[str]]:
    """The YAML hubble prints for --print-raw-filters: lists of single-quoted JSON strings."""
    if text == "{}\n":
        return {}
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line in ("allowlist:", "denylist:"):
            current = out.setdefault(line[:-1], [])
        else:
            assert current is not None and line.startswith("    - '") and line.endswith("'"), line
            current.append(line[len("    - '"):-1].replace("''", "'"))
    return out


def raw(*argv: str, capsys: pytest.CaptureFixture[str] | None = None) -> tuple[list[Any], list[Any]]:
    out = io.BytesIO()
    rc = observe_main([*argv, "--print-raw-filters"], stdout=out)
    err = capsys.readouterr().err if capsys else ""
    assert rc == 0, err
    parsed = _unyaml(out.getvalue().decode())
    allow = [orjson.loads(s) for s in parsed.get("allowlist", [])]
    deny = [orjson.loads(s) for s in parsed.get("denylist", [])]
    for f in allow + deny:  # protojson prints FlowFilter fields in declaration order
        assert list(f) == [k for k in FLOWFILTER_ORDER if k in f], f
    return allow, deny


def error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    out = io.BytesIO()
    rc = observe_main([*argv, "--print-raw-filters"], stdout=out)
    assert rc == 1 and out.getvalue() == b""
    return capsys.readouterr().err.splitlines()[0]


def _pair(left: dict[str, Any], right: dict[str, Any]) -> list[dict[str, Any]]:
    return [left, right]


# (argv, allowlist, denylist)
MAPPING: list[tuple[list[str], list[dict[str, Any]], list[dict[str, Any]]]] = [
    # either-direction flags: source field left, destination field right, paired per side
    (["--pod", "default/a", "--port", "80"],
     _pair({"source_pod": ["default/a"], "source_port": ["80"]},
           {"destination_pod": ["default/a"], "destination_port": ["80"]}), []),
    (["--ip", "10.0.0.1", "--label", "app=x"],
     _pair({"source_ip": ["10.0.0.1"], "source_label": ["app=x"]},
           {"destination_ip": ["10.0.0.1"], "destination_label": ["app=x"]}), []),
    (["--fqdn", "*.example.com", "--fqdn", "a.b"],
     _pair({"source_fqdn": ["*.example.com", "a.b"]}, {"destination_fqdn": ["*.example.com", "a.b"]}), []),
    (["--service", "kube-system/kube-dns", "--cluster", "c1"],
     _pair({"source_service": ["kube-system/kube-dns"], "source_cluster_name": ["c1"]},
           {"destination_service": ["kube-system/kube-dns"], "destination_cluster_name": ["c1"]}), []),
    (["--identity", "world", "--identity", "1563"],
     _pair({"source_identity": [2, 1563]}, {"destination_identity": [2, 1563]}), []),
    (["-l", "k8s:app=web"], _pair({"source_label": ["k8s:app=web"]}, {"destination_label": ["k8s:app=web"]}), []),
    # --from-* / --to-* write into both filters, which then collapse into one
    (["--from-pod", "app/api", "--to-port", "5432", "--protocol", "tcp"],
     [{"source_pod": ["app/api"], "protocol": ["tcp"], "destination_port": ["5432"]}], []),
    (["--from-label", "a=b", "--to-label", "c", "--from-identity", "host", "--to-identity", "7"],
     [{"source_label": ["a=b"], "destination_label": ["c"], "source_identity": [1], "destination_identity": [7]}], []),
    (["--from-service", "s", "--to-workload", "Deployment/api", "--from-cluster", "c1", "--to-cluster", "c2"],
     [{"source_service": ["s"], "source_cluster_name": ["c1"], "destination_workload": [{"name": "api", "kind": "Deployment"}],
       "destination_cluster_name": ["c2"]}], []),
    (["--snat-ip", "192.168.0.1", "--from-fqdn", "a.com"],
     [{"source_ip_xlated": ["192.168.0.1"], "source_fqdn": ["a.com"]}], []),
    # either-direction + from/to: the from/to field is in both filters
    (["--ip", "10.0.0.1", "--to-port", "443"],
     _pair({"source_ip": ["10.0.0.1"], "destination_port": ["443"]},
           {"destination_ip": ["10.0.0.1"], "destination_port": ["443"]}), []),
    (["--label", "a", "--label", "b", "--to-pod", "x/y"],
     _pair({"source_label": ["a", "b"], "destination_pod": ["x/y"]},
           {"destination_pod": ["x/y"], "destination_label": ["a", "b"]}), []),
    # namespaces
    (["-n", "kube-system"], _pair({"source_pod": ["kube-system/"]}, {"destination_pod": ["kube-system/"]}), []),
    (["--namespace", "a", "--namespace", "b"],
     _pair({"source_pod": ["a/", "b/"]}, {"destination_pod": ["a/", "b/"]}), []),
    (["-n", "ns", "--pod", "xwing"], _pair({"source_pod": ["ns/xwing"]}, {"destination_pod": ["ns/xwing"]}), []),
    (["-n", "ns", "--pod", "ns/xwing"], _pair({"source_pod": ["ns/xwing"]}, {"destination_pod": ["ns/xwing"]}), []),
    (["-n", "a", "--service", "s", "--pod", "p"],
     _pair({"source_pod": ["a/p"], "source_service": ["a/s"]},
           {"destination_pod": ["a/p"], "destination_service": ["a/s"]}), []),
    (["-n", "a", "--service", "s"], _pair({"source_service": ["a/s"]}, {"destination_service": ["a/s"]}), []),
    (["--from-namespace", "a"], [{"source_pod": ["a/"]}], []),
    (["--to-namespace", "b", "--to-namespace", "c"], [{"destination_pod": ["b/", "c/"]}], []),
    (["--from-namespace", "a", "--to-namespace", "b"], [{"source_pod": ["a/"], "destination_pod": ["b/"]}], []),
    (["--from-namespace", "a", "--to-pod", "x"], [{"source_pod": ["a/"], "destination_pod": ["x"]}], []),
    (["-A"], _pair({"source_pod": ["/"]}, {"destination_pod": ["/"]}), []),
    (["--all-namespaces", "--verdict", "DROPPED"],
     _pair({"source_pod": ["/"], "verdict": ["DROPPED"]}, {"destination_pod": ["/"], "verdict": ["DROPPED"]}), []),
    (["--from-all-namespaces", "--not", "--to-all-namespaces"],
     [{"source_pod": ["/"]}], [{"destination_pod": ["/"]}]),
    (["-n", "ns", "--port", "53"],
     _pair({"source_pod": ["ns/"], "source_port": ["53"]}, {"destination_pod": ["ns/"], "destination_port": ["53"]}), []),
    # --not: exactly one flag; several negated flags share one denylist tracker (AND)
    (["--not", "--verdict", "DROPPED", "--protocol", "tcp"], [{"protocol": ["tcp"]}], [{"verdict": ["DROPPED"]}]),
    (["--protocol", "tcp", "--not", "--verdict", "DROPPED", "--verdict", "ERROR"],
     [{"verdict": ["ERROR"], "protocol": ["tcp"]}], [{"verdict": ["DROPPED"]}]),
    (["--not", "--namespace", "kube-system"], [],
     _pair({"source_pod": ["kube-system/"]}, {"destination_pod": ["kube-system/"]})),
    (["--not", "--protocol", "tcp", "--not", "--namespace", "kube-system"], [],
     _pair({"source_pod": ["kube-system/"], "protocol": ["tcp"]},
           {"destination_pod": ["kube-system/"], "protocol": ["tcp"]})),
    (["--not", "--http-method", "put", "--not", "--http-method", "get", "--not", "--to-namespace", "foo"], [],
     [{"destination_pod": ["foo/"], "http_method": ["put", "get"]}]),
    (["--namespace", "payments", "--not", "--label", "k8s:app=web"],
     _pair({"source_pod": ["payments/"]}, {"destination_pod": ["payments/"]}),
     _pair({"source_label": ["k8s:app=web"]}, {"destination_label": ["k8s:app=web"]})),
    (["--not", "--pod", "a/b", "--not", "--port", "80"], [],
     _pair({"source_pod": ["a/b"], "source_port": ["80"]}, {"destination_pod": ["a/b"], "destination_port": ["80"]})),
    (["--not", "--label", "x", "--from-label", "y"], [{"source_label": ["y"]}],
     _pair({"source_label": ["x"]}, {"destination_label": ["x"]})),  # conflicts are checked per tracker
    # enums, types, L7, misc
    (["--verdict", "DROPPED", "--verdict", "ERROR"], [{"verdict": ["DROPPED", "ERROR"]}], []),
    (["--drop-reason-desc", "POLICY_DENIED"], [{"drop_reason_desc": ["POLICY_DENIED"]}], []),
    (["--traffic-direction", "INGRESS", "--traffic-direction", "egress"],
     [{"traffic_direction": ["INGRESS", "EGRESS"]}], []),
    (["-4"], [{"ip_version": ["IPv4"]}], []),
    (["-4", "-6"], [{"ip_version": ["IPv4", "IPv6"]}], []),
    (["--ip-version", "none", "--ip-version", "v6"], [{"ip_version": ["IP_NOT_USED", "IPv6"]}], []),
    (["--type", "trace"], [{"event_type": [{"type": 4}]}], []),
    (["-t", "trace:to-endpoint"], [{"event_type": [{"type": 4, "match_sub_type": True}]}], []),
    (["--type", "trace:from-network"], [{"event_type": [{"type": 4, "match_sub_type": True, "sub_type": 10}]}], []),
    (["--type", "4:3"], [{"event_type": [{"type": 4, "match_sub_type": True, "sub_type": 3}]}], []),
    (["--type", "drop:133"], [{"event_type": [{"type": 1, "match_sub_type": True, "sub_type": 133}]}], []),
    (["--type", "l7", "--type", "policy-verdict", "--type", "trace-sock", "--type", "capture", "--type", "debug",
      "--type", "agent", "--type", "129"],
     [{"event_type": [{"type": 129}, {"type": 5}, {"type": 7}, {"type": 3}, {"type": 2}, {"type": 130}, {"type": 129}]}],
     []),
    (["--http-status", "5+", "--http-method", "GET", "--http-path", "^/api", "--http-url", "x"],
     [{"http_status_code": ["5+"], "http_method": ["GET"], "http_path": ["^/api"], "http_url": ["x"]}], []),
    (["--http-header", "X-Foo:bar:baz"], [{"http_header": [{"key": "X-Foo", "value": "bar:baz"}]}], []),
    (["--tcp-flags", "syn,ack"], [{"tcp_flags": [{"SYN": True, "ACK": True}]}], []),
    (["--tcp-flags", "ACK,syn", "--tcp-flags", "rst"], [{"tcp_flags": [{"SYN": True, "ACK": True}, {"RST": True}]}], []),
    (["--tcp-flags", "fin,syn,rst,psh,ack,urg,ece,cwr,ns"],
     [{"tcp_flags": [{f: True for f in ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS")}]}], []),
    (["--identity", "kube-apiserver", "--to-port", "443"],
     _pair({"source_identity": [7], "destination_port": ["443"]},
           {"destination_port": ["443"], "destination_identity": [7]}), []),
    (["--from-identity", "overlay-to-encrypt"], [{"source_identity": [11]}], []),
    (["--workload", "Deployment/api", "--identity", "world"],
     _pair({"source_workload": [{"name": "api", "kind": "Deployment"}], "source_identity": [2]},
           {"destination_workload": [{"name": "api", "kind": "Deployment"}], "destination_identity": [2]}), []),
    (["--from-workload", "api"], [{"source_workload": [{"name": "api"}]}], []),
    (["--to-workload", "StatefulSet/db/x"], [{"destination_workload": [{"name": "db/x", "kind": "StatefulSet"}]}], []),
    (["--node-name", "kind-*", "--node-label", "zone=a"], [{"node_name": ["kind-*"], "node_labels": ["zone=a"]}], []),
    (["--uuid", "u1", "--trace-id", "t1", "--ip-trace-id", "5", "--interface", "eth0"],
     [{"uuid": ["u1"], "interface": [{"name": "eth0"}], "trace_id": ["t1"], "ip_trace_id": ["5"]}], []),
    (["--encrypted"], [{"encrypted": [True]}], []),
    (["--unencrypted"], [{"encrypted": [False]}], []),
    (["--cel-expression", "_flow.verdict == 2"], [{"experimental": {"cel_expression": ["_flow.verdict == 2"]}}], []),
    (["--protocol", "bogus", "--http-status", "600"], [{"http_status_code": ["600"], "protocol": ["bogus"]}], []),
    # --allowlist / --denylist: raw JSON filters appended after the flag filters
    (["--allowlist", '{"verdict":["DROPPED"]}{"protocol":["tcp"]}'], [{"verdict": ["DROPPED"]}, {"protocol": ["tcp"]}], []),
    (["--allowlist", '{"verdict":["DROPPED"]}\n{"protocol":["tcp"]}', "--allowlist", '{"dns_query":["x"]}'],
     [{"verdict": ["DROPPED"]}, {"protocol": ["tcp"]}, {"dns_query": ["x"]}], []),
    (["--denylist", '{"source_pod":["kube-system/"]} {"destination_pod":["kube-system/"]}'], [],
     [{"source_pod": ["kube-system/"]}, {"destination_pod": ["kube-system/"]}]),
    (["--allowlist", '{"sourcePod":["a/"],"destinationPort":["53"]}'],
     [{"source_pod": ["a/"], "destination_port": ["53"]}], []),
    (["--allowlist", '{"protocol":["udp"]}', "--verdict", "DROPPED", "--not", "--port", "53", "--denylist", '{"uuid":["u"]}'],
     [{"verdict": ["DROPPED"]}, {"protocol": ["udp"]}],
     [{"source_port": ["53"]}, {"destination_port": ["53"]}, {"uuid": ["u"]}]),
    # flows_filter.go agentEventSubtypes: `--type agent:<name>` takes agent sub-type names
    (["--type", "agent:policy-updated"], [{"event_type": [{"type": 130, "match_sub_type": True, "sub_type": 5}]}], []),
    (["--type", "agent:unspecified"], [{"event_type": [{"type": 130, "match_sub_type": True}]}], []),
    # ParseUint(.., 10, 32) stored with int32(): the high half wraps
    (["--type", "2147483648:4294967295"],
     [{"event_type": [{"type": -2147483648, "match_sub_type": True, "sub_type": -1}]}], []),
    # parseWorkload gives Workload{Kind: 'Deployment', Name: ''} and protojson omits the empty name
    (["--workload", "Deployment/"], _pair({"source_workload": [{"kind": "Deployment"}]},
                                          {"destination_workload": [{"kind": "Deployment"}]}), []),
    (["--from-workload", ""], [{"source_workload": [{}]}], []),
    # identity.ParseNumericIdentity uses strconv.ParseUint(id, 0, 32): base prefixes and _ separators
    (["--identity", "0x10"], _pair({"source_identity": [16]}, {"destination_identity": [16]}), []),
    (["--from-identity", "0o17", "--from-identity", "010", "--from-identity", "1_000"],
     [{"source_identity": [15, 8, 1000]}], []),
    # only the literal "0" is refused; ParseUint("00") is 0
    (["--ip-trace-id", "00", "--ip-trace-id", "007"], [{"ip_trace_id": ["0", "7"]}], []),
    (["--interface", ""], [{"interface": [{}]}], []),
    # hubble unmarshals --allowlist into flow.FlowFilter and prints it back with protojson: enum names,
    # uint32 as numbers, uint64 as strings, zero values omitted, proto names in declaration order
    (["--allowlist", '{"verdict":[2],"source_identity":["2"],"ip_trace_id":[5],"event_type":[{"type":4,"sub_type":0}]}'],
     [{"source_identity": [2], "verdict": ["DROPPED"], "event_type": [{"type": 4}], "ip_trace_id": ["5"]}], []),
    (["--allowlist", '{"eventType":[{"matchSubType":true,"type":"4"}],"tcpFlags":[{"SYN":true,"ACK":false}],'
      '"sourceWorkload":[{"kind":"Deployment","name":""}],"verdict":null,"uuid":[]}'],
     [{"source_workload": [{"kind": "Deployment"}], "event_type": [{"type": 4, "match_sub_type": True}],
       "tcp_flags": [{"SYN": True}]}], []),
    ([], [], []),
]


@pytest.mark.parametrize("argv,allow,deny", MAPPING, ids=[" ".join(m[0]) or "(none)" for m in MAPPING])
def test_flags_to_raw_filters(argv: list[str], allow: list[Any], deny: list[Any],
                              capsys: pytest.CaptureFixture[str]) -> None:
    assert raw(*argv, capsys=capsys) == (allow, deny)


def test_raw_filters_yaml_text(capsys: pytest.CaptureFixture[str]) -> None:
    out = io.BytesIO()
    assert observe_main(["--http-path", "it's", "--not", "--verdict", "DROPPED", "--print-raw-filters"], stdout=out) == 0
    assert out.getvalue().decode() == (
        "allowlist:\n    - '{\"http_path\":[\"it''s\"]}'\ndenylist:\n    - '{\"verdict\":[\"DROPPED\"]}'\n"
    )
    out = io.BytesIO()
    assert observe_main(["--print-raw-filters"], stdout=out) == 0
    assert out.getvalue() == b"{}\n"


def test_short_flags_and_equals_forms(capsys: pytest.CaptureFixture[str]) -> None:
    assert raw("-nkube-system") == raw("--namespace=kube-system") == raw("-n", "kube-system")
    assert raw("-l=app=x") == raw("--label", "app=x")
    assert raw("-ttrace:to-stack") == raw("--type=trace:to-stack")
    assert raw("-A", "-4") == raw("--all-namespaces", "--ipv4")


# -- errors --------------------------------------------------------------------------------------------

ERRORS: list[tuple[list[str], str, str | None]] = [
    (["--not", "--not", "--verdict", "DROPPED"], 'invalid argument "true" for "--not" flag: consecutive --not statements', None),
    (["--verdict", "bogus"], 'invalid argument "bogus" for "--verdict" flag: invalid --verdict value: bogus', None),
    (["--verdict", "dropped"], 'invalid argument "dropped" for "--verdict" flag: invalid --verdict value: dropped', None),
    (["--drop-reason-desc", "nope"],
     'invalid argument "nope" for "--drop-reason-desc" flag: invalid --drop-reason-desc value: nope', None),
    (["--traffic-direction", "sideways"],
     'invalid argument "sideways" for "--traffic-direction" flag: sideways: invalid traffic direction, expected ingress or egress',
     None),
    (["--tcp-flags", "syn,foo"], 'invalid argument "syn,foo" for "--tcp-flags" flag: unknown tcp flag: foo', None),
    # flows_filter.go formats the value with %q
    (["--http-header", "nocolon"],
     'invalid argument "nocolon" for "--http-header" flag: invalid http-header value "nocolon", expected name:value',
     None),
    (["--http-header", 'a"b'],
     'invalid argument "a\\"b" for "--http-header" flag: invalid http-header value "a\\"b", expected name:value',
     None),
    (["--ip-trace-id", "0"], 'invalid argument "0" for "--ip-trace-id" flag: invalid --ip-trace-id value; must be greater than 0',
     None),
    (["-n", "a", "--pod", "b/x"], 'invalid argument "b/x" for "--pod" flag: namespace conflict: "a" does not contain "b/x"', None),
    (["--from-namespace", "a", "--from-service", "b/s"],
     'invalid argument "b/s" for "--from-service" flag: namespace conflict: "a" does not contain "b/s"', None),
    (["--from-pod", "a/p", "--from-service", "b/s"],
     'invalid argument "b/s" for "--from-service" flag: namespace of service "b/s" conflict with pod "a"', None),
    # flows.go handleFlowArgs
    (["--verdict", "DROPPED", "--not"], "trailing --not found in the arguments", None),
    # observe/flows_filter.go formats reservedIdentitiesNames() with %v: space-separated, sorted by id, 11
    # (overlay-to-encrypt) as a number as it has no name in reservedIdentityNames, no 'unknown'
    (["--identity", "bogus"],
     'invalid argument "bogus" for "--identity" flag: invalid security identity, expected one of [host world '
     'unmanaged health init remote-node kube-apiserver ingress world-ipv4 world-ipv6 11] or a numeric value',
     None),
    # observe/identity.go parseIdentity: GetReservedID('unknown') is IdentityUnknown (0), which means 'not a
    # reserved name', then ParseNumericIdentity('unknown') fails
    (["--identity", "unknown"],
     'invalid argument "unknown" for "--identity" flag: invalid security identity, expected one of [host world '
     'unmanaged health init remote-node kube-apiserver ingress world-ipv4 world-ipv6 11] or a numeric value',
     None),
    (["--identity", "4294967296"],
     'invalid argument "4294967296" for "--identity" flag: invalid security identity, expected one of [host world '
     'unmanaged health init remote-node kube-apiserver ingress world-ipv4 world-ipv6 11] or a numeric value',
     None),
    # flows_filter.go wraps the strconv error (`...numeric value: %w`)
    (["--type", "bogus"],
     'invalid argument "bogus" for "-t, --type" flag: unable to parse type \'bogus\', not a known type name and unable '
     'to parse as numeric value: strconv.ParseUint: parsing "bogus": invalid syntax',
     None),
    (["--type", "trace:bogus"],
     'invalid argument "trace:bogus" for "-t, --type" flag: unable to parse event sub-type \'bogus\', not a known '
     'sub-type name and unable to parse as numeric value: strconv.ParseUint: parsing "bogus": invalid syntax',
     None),
    (["--type", "99999999999"],
     'invalid argument "99999999999" for "-t, --type" flag: unable to parse type \'99999999999\', not a known type '
     'name and unable to parse as numeric value: strconv.ParseUint: parsing "99999999999": value out of range',
     None),
    # flows_filter.go only resolves sub-type names when the type was given by name (`switch t` uses the
    # name lookup's t, 0 for a numeric type)
    (["--type", "4:to-stack"],
     'invalid argument "4:to-stack" for "-t, --type" flag: unable to parse event sub-type \'to-stack\', not a known '
     'sub-type name and unable to parse as numeric value: strconv.ParseUint: parsing "to-stack": invalid syntax',
     None),
    (["--type", "trace:policy-updated"],
     'invalid argument "trace:policy-updated" for "-t, --type" flag: unable to parse event sub-type '
     '\'policy-updated\', not a known sub-type name and unable to parse as numeric value: strconv.ParseUint: '
     'parsing "policy-updated": invalid syntax',
     None),
    # flows_filter.go: `fmt.Errorf("invalid --ip-trace-id value: %w", err)` with the strconv error
    (["--ip-trace-id", "x"],
     'invalid argument "x" for "--ip-trace-id" flag: invalid --ip-trace-id value: strconv.ParseUint: parsing "x": '
     'invalid syntax',
     None),
]


@pytest.mark.parametrize(
    "argv,message",
    [pytest.param(a, m, id=" ".join(a), marks=[pytest.mark.xfail(strict=True, reason=b)] if b else [])
     for a, m, b in ERRORS],
)
def test_flag_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert error(argv, capsys) == message


# pflag hands the value of a bool-typed filter flag to flowFilter.Set, which ignores it: `--not=false`
# still negates the next flag, `--ipv4=false` still filters IPv4 (hubble flows_filter.go).
VALUE_IGNORED: list[tuple[list[str], list[Any], list[Any]]] = [
    (["--not=false", "--verdict", "DROPPED"], [], [{"verdict": ["DROPPED"]}]),
    (["--ipv4=false"], [{"ip_version": ["IPv4"]}], []),
]


@pytest.mark.parametrize("argv,allow,deny", VALUE_IGNORED, ids=lambda v: " ".join(v) if isinstance(v, list)
                         and v and isinstance(v[0], str) else None)
def test_bool_filter_flag_values_are_ignored_like_hubble(argv: list[str], allow: list[Any], deny: list[Any],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert raw(*argv, capsys=capsys) == (allow, deny)


BAD_RAW_FILTERS = [
    '{"verdict":["DROPPED"]},{"protocol":["tcp"]}',  # json.Decoder takes whitespace between values, not commas
    '[{"verdict":["DROPPED"]}]',
    '{"source_pods":["a/"]}',  # protojson: unknown field
    '{"verdict":["DROPPED"],"verdict":["ERROR"]}',  # duplicate field
    '{"source_pod":["a/"],"sourcePod":["b/"]}',  # the same field by both names
    '{"source_pod":"a/"}',  # a repeated field needs an array
    '{"source_pod":[null]}',
    '{"verdict":["2"]}',  # an enum by number is a JSON number, not a string
    '{"source_identity":["world"]}',  # names are a flag feature
    '{"source_identity":[4294967296]}',
    '{"ip_trace_id":[1.5]}',
    '{"event_type":[{"type":4,"subtype":1}]}',
    '{"source_workload":[{"name":"x","namespace":"y"}]}',
    '{"tcp_flags":[{"SYN":"true"}]}',
]


@pytest.mark.parametrize("text", BAD_RAW_FILTERS)
def test_bad_raw_filters_are_errors(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    """hubble decodes --allowlist/--denylist with encoding/json + protojson and refuses these."""
    error(["--allowlist", text], capsys)
    error(["--denylist", text], capsys)


# -- conflicts: every pair of every group in hubble's newFlowFilter().conflicts ----------------------

HUBBLE_CONFLICTS = [
    ["from-fqdn", "from-ip", "ip", "fqdn", "from-namespace", "namespace", "from-all-namespaces", "all-namespaces"],
    ["from-fqdn", "from-ip", "ip", "fqdn", "from-pod", "pod"],
    ["to-fqdn", "to-ip", "ip", "fqdn", "to-namespace", "namespace", "to-all-namespaces", "all-namespaces"],
    ["to-fqdn", "to-ip", "ip", "fqdn", "to-pod", "pod"],
    ["to-pod", "namespace", "all-namespaces"],
    ["from-pod", "namespace", "all-namespaces"],
    ["to-service", "namespace", "all-namespaces"],
    ["from-service", "namespace", "all-namespaces"],
    ["snat-ip"],
    ["label", "from-label"],
    ["label", "to-label"],
    ["service", "from-service"],
    ["service", "to-service"],
    ["verdict"], ["drop-reason-desc"], ["type"], ["http-status"], ["http-method"], ["http-path"], ["http-url"],
    ["http-header"], ["protocol"],
    ["port", "to-port"],
    ["port", "from-port"],
    ["identity", "to-identity"],
    ["identity", "from-identity"],
    ["workload", "to-workload"],
    ["workload", "from-workload"],
    ["node-label"], ["tcp-flags"], ["uuid"], ["traffic-direction"], ["cel-expression"],
    ["encrypted", "unencrypted"],
]
SHORT = {"namespace": "n", "all-namespaces": "A", "label": "l", "type": "t", "ipv4": "4", "ipv6": "6"}
BOOL_FLAGS = {"all-namespaces", "from-all-namespaces", "to-all-namespaces", "encrypted", "unencrypted"}
VALUES = {
    "pod": "a", "from-pod": "a", "to-pod": "a", "ip": "10.0.0.1", "from-ip": "10.0.0.1", "to-ip": "10.0.0.2",
    "fqdn": "x.com", "from-fqdn": "x.com", "to-fqdn": "y.com", "namespace": "ns", "from-namespace": "ns",
    "to-namespace": "ns", "label": "app=x", "from-label": "app=x", "to-label": "app=y", "service": "svc",
    "from-service": "svc", "to-service": "svc", "port": "80", "from-port": "80", "to-port": "443",
    "identity": "1", "from-identity": "1", "to-identity": "2", "workload": "Deployment/x",
    "from-workload": "x", "to-workload": "Deployment/", "verdict": "DROPPED", "protocol": "tcp",
}


def _args(flag: str) -> list[str]:
    return [f"--{flag}"] if flag in BOOL_FLAGS else [f"--{flag}", VALUES[flag]]


def _conflict_message(first: str, second: str) -> str:
    """hubble's checkConflict after setting ``first`` then ``second``: the first group (in list order)
    holding both, and in it the flag listed first, names the pair."""
    changed = [first, second]
    for group in HUBBLE_CONFLICTS:
        for flag in group:
            if flag in changed:
                for other in group:
                    if other != flag and other in changed:
                        display = f"-{SHORT[second]}, --{second}" if second in SHORT else f"--{second}"
                        value = "true" if second in BOOL_FLAGS else VALUES[second]
                        return (f'invalid argument "{value}" for "{display}" flag: '
                                f"filters --{flag} and --{other} cannot be combined")
    raise AssertionError("no conflict")


PAIRS = sorted({(a, b) for g in HUBBLE_CONFLICTS for a, b in itertools.permutations(g, 2)})


def test_src_conflict_groups_are_hubbles() -> None:
    assert [g for g in HUBBLE_CONFLICTS if len(g) > 1] == CONFLICTS


@pytest.mark.parametrize("first,second", PAIRS, ids=[f"{a}+{b}" for a, b in PAIRS])
def test_conflicting_flags_are_rejected(first: str, second: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert error([*_args(first), *_args(second)], capsys) == _conflict_message(first, second)


@pytest.mark.parametrize("first,second", PAIRS[::7], ids=[f"{a}+{b}" for a, b in PAIRS[::7]])
def test_conflicts_are_per_tracker(first: str, second: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A negated flag and a plain flag never conflict: they live in different trackers."""
    out = io.BytesIO()
    rc = observe_main(["--not", *_args(first), *_args(second), "--print-raw-filters"], stdout=out)
    assert rc == 0, capsys.readouterr().err


def test_same_flag_repeated_never_conflicts(capsys: pytest.CaptureFixture[str]) -> None:
    for flag in VALUES:
        raw(*_args(flag), *_args(flag), capsys=capsys)


# -- end to end: the printed raw filters select what the reference selects -----------------------------

INPUT = GOLDEN_DIR / "public-samples.input.jsonl"
INPUT_LINES = INPUT.read_bytes().splitlines()
END_TO_END = [
    ["--pod", "kube-system/kube-dns", "--port", "53"],
    ["--from-namespace", "bookinfo", "--to-port", "9080"],
    ["--not", "--protocol", "tcp", "--not", "--namespace", "kube-system"],
    ["--label", "reserved:host", "--not", "--type", "trace:to-stack"],
    ["-n", "kube-system", "--http-method", "get"],
    ["--identity", "world", "--verdict", "FORWARDED"],
    ["--to-label", "k8s-app in (kube-dns)", "--not", "--from-identity", "1563"],
    ["--tcp-flags", "ack", "--not", "--tcp-flags", "fin"],
    ["--node-name", "kind-kind/", "--not", "--drop-reason-desc", "POLICY_DENIED"],
    ["--from-all-namespaces", "--not", "--to-all-namespaces"],
    ["--fqdn", "*.cluster.local", "--protocol", "udp"],
    ["--ip", "10.244.0.0/16", "--not", "--ip", "10.244.1.227"],
    ["--allowlist", '{"dns_query":["svc\\\\.cluster"]}', "--not", "--to-namespace", "kube-system"],
    ["--http-status", "5+", "--not", "--http-path", "^/metrics$"],
    ["--traffic-direction", "ingress", "--not", "--from-label", "reserved:host"],
]


@pytest.mark.parametrize("argv", END_TO_END, ids=[" ".join(a) for a in END_TO_END])
def test_flags_end_to_end_match_reference(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    allow, deny = raw(*argv, capsys=capsys)
    ref = Reference(allow, deny)
    expected = []
    for line in INPUT_LINES:
        resp = orjson.loads(line)
        if ("flow" in resp or "lost_events" in resp) and ref(resp):
            expected.append(resp)
    out = io.BytesIO()
    assert observe_main(["--input-file", str(INPUT), "--all", "-o", "json", *argv], stdout=out) == 0
    assert [orjson.loads(x) for x in out.getvalue().splitlines()] == expected


GOLDEN = orjson.loads((GOLDEN_DIR / "public-samples.golden.json").read_bytes())
_SELECTION = ("--first", "--last", "--since", "--until", "--field-mask")
GOLDEN_FILTER_CASES = [c for c in GOLDEN["cases"] if c["format"] == "json" and c["exit_code"] == 0
                       and not any(a in _SELECTION for a in c["args"])]


@pytest.mark.parametrize("case", GOLDEN_FILTER_CASES, ids=[" ".join(c["args"]) or "(none)" for c in GOLDEN_FILTER_CASES])
def test_reference_reproduces_real_hubble(case: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """tests/reference_filter.py, fed the raw filters of the flags, selects what hubble 1.19.4 printed."""
    allow, deny = raw(*case["args"], capsys=capsys)
    ref = Reference(allow, deny)
    selected = [resp for resp in map(orjson.loads, INPUT_LINES)
                if ("flow" in resp or "lost_events" in resp) and ref(resp)]
    assert selected == [orjson.loads(x) for x in case["stdout"].splitlines()]
