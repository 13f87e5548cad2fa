"""Enumerations of Cilium's flow.proto and monitor API, with the names Hubble prints.

Numbers and names come from Cilium v1.19.4 (see ../shared/docs/hubble-reference.md §2.3-2.6).
"""

from __future__ import annotations


def _invert(d: dict[str, int]) -> dict[int, str]:
    return {v: k for k, v in d.items()}


VERDICT = {
    "VERDICT_UNKNOWN": 0,
    "FORWARDED": 1,
    "DROPPED": 2,
    "ERROR": 3,
    "AUDIT": 4,
    "REDIRECTED": 5,
    "TRACED": 6,
    "TRANSLATED": 7,
}
FLOW_TYPE = {"UNKNOWN_TYPE": 0, "L3_L4": 1, "L7": 2, "SOCK": 3}
L7_FLOW_TYPE = {"UNKNOWN_L7_TYPE": 0, "REQUEST": 1, "RESPONSE": 2, "SAMPLE": 3}
TRAFFIC_DIRECTION = {"TRAFFIC_DIRECTION_UNKNOWN": 0, "INGRESS": 1, "EGRESS": 2}
IP_VERSION = {"IP_NOT_USED": 0, "IPv4": 1, "IPv6": 2}
TRACE_OBSERVATION_POINT = {
    "UNKNOWN_POINT": 0,
    "TO_PROXY": 1,
    "TO_HOST": 2,
    "TO_STACK": 3,
    "TO_OVERLAY": 4,
    "TO_ENDPOINT": 101,
    "FROM_ENDPOINT": 5,
    "FROM_PROXY": 6,
    "FROM_HOST": 7,
    "FROM_STACK": 8,
    "FROM_OVERLAY": 9,
    "FROM_NETWORK": 10,
    "TO_NETWORK": 11,
    "FROM_CRYPTO": 12,
    "TO_CRYPTO": 13,
}
TRACE_REASON = {
    "TRACE_REASON_UNKNOWN": 0,
    "NEW": 1,
    "ESTABLISHED": 2,
    "REPLY": 3,
    "RELATED": 4,
    "REOPENED": 5,
    "SRV6_ENCAP": 6,
    "SRV6_DECAP": 7,
    "ENCRYPT_OVERLAY": 8,
}
AUTH_TYPE = {"DISABLED": 0, "SPIRE": 1, "TEST_ALWAYS_FAIL": 2}
LOST_EVENT_SOURCE = {
    "UNKNOWN_LOST_EVENT_SOURCE": 0,
    "PERF_EVENT_RING_BUFFER": 1,
    "OBSERVER_EVENTS_QUEUE": 2,
    "HUBBLE_RING_BUFFER": 3,
}
SOCKET_TRANSLATION_POINT = {
    "SOCK_XLATE_POINT_UNKNOWN": 0,
    "SOCK_XLATE_POINT_PRE_DIRECTION_FWD": 1,
    "SOCK_XLATE_POINT_POST_DIRECTION_FWD": 2,
    "SOCK_XLATE_POINT_PRE_DIRECTION_REV": 3,
    "SOCK_XLATE_POINT_POST_DIRECTION_REV": 4,
}
DEBUG_CAPTURE_POINT = {
    "DBG_CAPTURE_POINT_UNKNOWN": 0,
    "DBG_CAPTURE_DELIVERY": 4,
    "DBG_CAPTURE_FROM_LB": 5,
    "DBG_CAPTURE_AFTER_V46": 6,
    "DBG_CAPTURE_AFTER_V64": 7,
    "DBG_CAPTURE_PROXY_PRE": 8,
    "DBG_CAPTURE_PROXY_POST": 9,
    "DBG_CAPTURE_SNAT_PRE": 10,
    "DBG_CAPTURE_SNAT_POST": 11,
}
TUNNEL_PROTOCOL = {"UNKNOWN": 0, "VXLAN": 1, "GENEVE": 2}
# SCTP chunk types Cilium decodes (pkg/hubble/parser/threefour/parser.go; field SCTP.chunk_type = 3)
SCTP_CHUNK_TYPE = {"UNSUPPORTED": 0, "INIT": 1, "INIT_ACK": 2, "SHUTDOWN": 3, "SHUTDOWN_ACK": 4,
                   "SHUTDOWN_COMPLETE": 5, "ABORT": 6}

# (number, enum name, text the hubble printer shows for drop events) — pkg/monitor/api/drop.go
_DROP_REASONS: list[tuple[int, str, str]] = [
    (0, "DROP_REASON_UNKNOWN", "Success"),
    (130, "INVALID_SOURCE_MAC", "Invalid source mac"),
    (131, "INVALID_DESTINATION_MAC", "Invalid destination mac"),
    (132, "INVALID_SOURCE_IP", "Invalid source ip"),
    (133, "POLICY_DENIED", "Policy denied"),
    (134, "INVALID_PACKET_DROPPED", "Invalid packet"),
    (135, "CT_TRUNCATED_OR_INVALID_HEADER", "CT: Truncated or invalid header"),
    (136, "CT_MISSING_TCP_ACK_FLAG", "Fragmentation needed"),
    (137, "CT_UNKNOWN_L4_PROTOCOL", "CT: Unknown L4 protocol"),
    (138, "CT_CANNOT_CREATE_ENTRY_FROM_PACKET", "CT: Can't create entry from packet"),
    (139, "UNSUPPORTED_L3_PROTOCOL", "Unsupported L3 protocol"),
    (140, "MISSED_TAIL_CALL", "Missed tail call"),
    (141, "ERROR_WRITING_TO_PACKET", "Error writing to packet"),
    (142, "UNKNOWN_L4_PROTOCOL", "Unknown L4 protocol"),
    (143, "UNKNOWN_ICMPV4_CODE", "Unknown ICMPv4 code"),
    (144, "UNKNOWN_ICMPV4_TYPE", "Unknown ICMPv4 type"),
    (145, "UNKNOWN_ICMPV6_CODE", "Unknown ICMPv6 code"),
    (146, "UNKNOWN_ICMPV6_TYPE", "Unknown ICMPv6 type"),
    (147, "ERROR_RETRIEVING_TUNNEL_KEY", "Error retrieving tunnel key"),
    (148, "ERROR_RETRIEVING_TUNNEL_OPTIONS", "Error retrieving tunnel options"),
    (149, "INVALID_GENEVE_OPTION", "Invalid Geneve option"),
    (150, "UNKNOWN_L3_TARGET_ADDRESS", "Unknown L3 target address"),
    (151, "STALE_OR_UNROUTABLE_IP", "Stale or unroutable IP"),
    (152, "NO_MATCHING_LOCAL_CONTAINER_FOUND", "No matching local container found"),
    (153, "ERROR_WHILE_CORRECTING_L3_CHECKSUM", "Error while correcting L3 checksum"),
    (154, "ERROR_WHILE_CORRECTING_L4_CHECKSUM", "Error while correcting L4 checksum"),
    (155, "CT_MAP_INSERTION_FAILED", "CT: Map insertion failed"),
    (156, "INVALID_IPV6_EXTENSION_HEADER", "Invalid IPv6 extension header"),
    (157, "IP_FRAGMENTATION_NOT_SUPPORTED", "IP fragmentation not supported"),
    (158, "SERVICE_BACKEND_NOT_FOUND", "Service backend not found"),
    (160, "NO_TUNNEL_OR_ENCAPSULATION_ENDPOINT", "No tunnel/encapsulation endpoint (datapath BUG!)"),
    (161, "FAILED_TO_INSERT_INTO_PROXYMAP", "NAT 46/64 not enabled"),
    (162, "REACHED_EDT_RATE_LIMITING_DROP_HORIZON", "Reached EDT rate-limiting drop horizon"),
    (163, "UNKNOWN_CONNECTION_TRACKING_STATE", "Unknown connection tracking state"),
    (164, "LOCAL_HOST_IS_UNREACHABLE", "Local host is unreachable"),
    (165, "NO_CONFIGURATION_AVAILABLE_TO_PERFORM_POLICY_DECISION", "No configuration available to perform policy decision"),
    (166, "UNSUPPORTED_L2_PROTOCOL", "Unsupported L2 protocol"),
    (167, "NO_MAPPING_FOR_NAT_MASQUERADE", "No mapping for NAT masquerade"),
    (168, "UNSUPPORTED_PROTOCOL_FOR_NAT_MASQUERADE", "Unsupported protocol for NAT masquerade"),
    (169, "FIB_LOOKUP_FAILED", "FIB lookup failed"),
    (170, "ENCAPSULATION_TRAFFIC_IS_PROHIBITED", "Encapsulation traffic is prohibited"),
    (171, "INVALID_IDENTITY", "Invalid identity"),
    (172, "UNKNOWN_SENDER", "Unknown sender"),
    (173, "NAT_NOT_NEEDED", "NAT not needed"),
    (174, "IS_A_CLUSTERIP", "Is a ClusterIP"),
    (175, "FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND", "First logical datagram fragment not found"),
    (176, "FORBIDDEN_ICMPV6_MESSAGE", "Forbidden ICMPv6 message"),
    (177, "DENIED_BY_LB_SRC_RANGE_CHECK", "Denied by LB src range check"),
    (178, "SOCKET_LOOKUP_FAILED", "Socket lookup failed"),
    (179, "SOCKET_ASSIGN_FAILED", "Socket assign failed"),
    (180, "PROXY_REDIRECTION_NOT_SUPPORTED_FOR_PROTOCOL", "Proxy redirection not supported for protocol"),
    (181, "POLICY_DENY", "Policy denied by denylist"),
    (182, "VLAN_FILTERED", "VLAN traffic disallowed by VLAN filter"),
    (183, "INVALID_VNI", "Incorrect VNI from VTEP"),
    (184, "INVALID_TC_BUFFER", "Failed to update or lookup TC buffer"),
    (185, "NO_SID", "No SID was found for the IP address"),
    (186, "MISSING_SRV6_STATE", "SRv6 state was removed during tail call"),
    (187, "NAT46", "L3 translation from IPv4 to IPv6 failed (NAT46)"),
    (188, "NAT64", "L3 translation from IPv6 to IPv4 failed (NAT64)"),
    (189, "AUTH_REQUIRED", "Authentication required"),
    (190, "CT_NO_MAP_FOUND", "No conntrack map found"),
    (191, "SNAT_NO_MAP_FOUND", "No nat map found"),
    (192, "INVALID_CLUSTER_ID", "Invalid ClusterID"),
    (193, "UNSUPPORTED_PROTOCOL_FOR_DSR_ENCAP", "Unsupported packet protocol for DSR encapsulation"),
    (194, "NO_EGRESS_GATEWAY", "No egress gateway found"),
    (195, "UNENCRYPTED_TRAFFIC", "Traffic is unencrypted"),
    (196, "TTL_EXCEEDED", "TTL exceeded"),
    (197, "NO_NODE_ID", "No node ID found"),
    (198, "DROP_RATE_LIMITED", "Rate limited"),
    (199, "IGMP_HANDLED", "IGMP handled"),
    (200, "IGMP_SUBSCRIBED", "IGMP subscribed"),
    (201, "MULTICAST_HANDLED", "Multicast handled"),
    (202, "DROP_HOST_NOT_READY", "Host datapath not ready"),
    (203, "DROP_EP_NOT_READY", "Endpoint policy program not available"),
    (204, "DROP_NO_EGRESS_IP", "No Egress IP configured"),
    (205, "DROP_PUNT_PROXY", "Punt to proxy"),
]
DROP_REASON = {name: num for num, name, _ in _DROP_REASONS}
DROP_REASON_TEXT = {num: text for num, _, text in _DROP_REASONS}

# Every enum-typed field of the flow model, by its dotted path below the Flow message.
ENUM_FIELDS: dict[str, dict[str, int]] = {
    "verdict": VERDICT,
    "drop_reason_desc": DROP_REASON,
    "Type": FLOW_TYPE,
    "l7.type": L7_FLOW_TYPE,
    "traffic_direction": TRAFFIC_DIRECTION,
    "IP.ipVersion": IP_VERSION,
    "tunnel.IP.ipVersion": IP_VERSION,
    "tunnel.protocol": TUNNEL_PROTOCOL,
    "l4.SCTP.chunk_type": SCTP_CHUNK_TYPE,
    "tunnel.l4.SCTP.chunk_type": SCTP_CHUNK_TYPE,
    "trace_observation_point": TRACE_OBSERVATION_POINT,
    "trace_reason": TRACE_REASON,
    "auth_type": AUTH_TYPE,
    "sock_xlate_point": SOCKET_TRANSLATION_POINT,
    "debug_capture_point": DEBUG_CAPTURE_POINT,
}
ENUM_NAMES_BY_NUMBER: dict[str, dict[int, str]] = {k: _invert(v) for k, v in ENUM_FIELDS.items()}

# Monitor API event types (Flow.event_type.type) and the names `hubble observe -t` accepts.
EVENT_TYPE_NAMES = {
    "drop": 1,
    "debug": 2,
    "capture": 3,
    "trace": 4,
    "policy-verdict": 5,
    "trace-sock": 7,
    "l7": 129,
    "agent": 130,
}
EVENT_DROP = 1
EVENT_DEBUG = 2
EVENT_CAPTURE = 3
EVENT_TRACE = 4
EVENT_POLICY_VERDICT = 5
EVENT_TRACE_SOCK = 7
EVENT_L7 = 129
EVENT_AGENT = 130

# Trace sub-types use the monitor numbering (to-endpoint = 0), unlike the proto enum (TO_ENDPOINT = 101).
TRACE_SUBTYPE_NAMES = {
    "to-endpoint": 0,
    "to-proxy": 1,
    "to-host": 2,
    "to-stack": 3,
    "to-overlay": 4,
    "from-endpoint": 5,
    "from-proxy": 6,
    "from-host": 7,
    "from-stack": 8,
    "from-overlay": 9,
    "from-network": 10,
    "to-network": 11,
    "from-crypto": 12,
    "to-crypto": 13,
}
TRACE_SUBTYPE_BY_NUMBER = _invert(TRACE_SUBTYPE_NAMES)

# policy_match_type numbers and the words the printer uses in `policy-verdict:<match>`.
POLICY_MATCH_TYPE = {0: "none", 1: "L3-Only", 2: "L3-L4", 3: "L4-Only", 4: "all", 5: "L3-Proto", 6: "Proto-Only"}

# Reserved security identities (pkg/identity/numericidentity.go) and `--identity` names.
RESERVED_IDENTITIES = {
    "unknown": 0,
    "host": 1,
    "world": 2,
    "unmanaged": 3,
    "health": 4,
    "init": 5,
    "remote-node": 6,
    "kube-apiserver": 7,
    "ingress": 8,
    "world-ipv4": 9,
    "world-ipv6": 10,
    "overlay-to-encrypt": 11,
}
# Names the printer shows in the identity column; 11 is not in Cilium's reservedIdentityNames.
RESERVED_IDENTITY_NAMES = {v: k for k, v in RESERVED_IDENTITIES.items() if v != 11}
