"""Hubble flow bodies for simulated sessions, shaped like what Cilium really emits.

A session builder returns events `(offset_ns, node, body)`: body is the Flow object's members
after `"time","uuid","emitter"`, in flow.proto declaration order (the order protojson writes),
enums by name, uint64 as strings, zero values omitted. The writer adds time, uuid and the
exporter wrapper. Shapes follow ../shared/data/hubble-samples:

* a TCP connection is traced at both ends: TO_STACK on the sender's node (the packet leaves the
  pod), TO_ENDPOINT on the receiver's node (delivered to the pod); with monitor aggregation (the
  default) only packets that add TCP flags are reported: SYN, SYN-ACK, ACK, ACK-PSH each way,
  ACK-FIN each way, a final ACK (or a RST);
* replies carry `is_reply: true` and the deprecated `reply: true`; trace_reason NEW /
  ESTABLISHED / REPLY;
* L7 records (Type L7, event_type 129) come from the proxy of the server's node (HTTP) or of the
  client's node (DNS), requests and responses, with latency on responses;
* policy drops are `verdict: DROPPED`, `drop_reason: 133`, `event_type {type:1, sub_type:133}`,
  `drop_reason_desc: POLICY_DENIED`, no is_reply.

Bodies that only depend on the topology are cached as templates with the ephemeral port left as
a `\\x00` placeholder, so a session costs a few string joins: this is what makes the simulator fast
enough to write benchmark data.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

import orjson

from flowtrail.lab.cluster import Cluster, Pod

PH = "\x00"  # ephemeral-port placeholder in cached templates
IPH = "\x01"  # a world client's address in cached templates
WORLD_EP = '{"identity":2,"labels":["reserved:world"]}'
HOST_EP = '{"identity":1,"labels":["reserved:host"]}'
EV_TO_STACK = '{"type":4,"sub_type":3}'
EV_TO_PROXY = '{"type":4,"sub_type":1}'
EV_TO_ENDPOINT = '{"type":4}'  # sub_type 0 is omitted by protojson
EV_L7 = '{"type":129}'
EV_POLICY_VERDICT = '{"type":5}'
REPLY = {True: '"reply":true,', False: ""}  # the deprecated Flow.reply; false is omitted
KUBERNETES_SVC = '{"name":"kubernetes","namespace":"default"}'

TCP_FLAGS = {  # flags object in proto field order FIN,SYN,RST,PSH,ACK, and the Summary text
    "SYN": ('{"SYN":true}', "TCP Flags: SYN"),
    "SYNACK": ('{"SYN":true,"ACK":true}', "TCP Flags: SYN, ACK"),
    "ACK": ('{"ACK":true}', "TCP Flags: ACK"),
    "PSH": ('{"PSH":true,"ACK":true}', "TCP Flags: ACK, PSH"),
    "FIN": ('{"FIN":true,"ACK":true}', "TCP Flags: ACK, FIN"),
    "RST": ('{"RST":true}', "TCP Flags: RST"),
    "RSTACK": ('{"RST":true,"ACK":true}', "TCP Flags: RST, ACK"),
}
# (reason number, name, bpf file, line) for drops that are not policy decisions
OTHER_DROPS = [(151, "STALE_OR_UNROUTABLE_IP", "bpf_lxc.c", 1512), (155, "CT_MAP_INSERTION_FAILED", "bpf_lxc.c", 1104),
               (132, "INVALID_SOURCE_IP", "bpf_lxc.c", 1006)]
USER_AGENTS = ["Go-http-client/1.1", "python-requests/2.32.3", "okhttp/4.12.0", "axios/1.7.7"]

# A body is the text, or (sep, parts) for sep.join(parts): a cached template split at the
# ephemeral port, joined only when the line is written (one copy of ~1.5 KB fewer per flow).
Body = str | tuple[str, Sequence[str]]
Event = tuple[int, int, Body]  # (offset ns from session start, node index, body)


def body_text(body: Body) -> str:
    return body if isinstance(body, str) else body[0].join(body[1])


def _plain(text: str) -> bool:
    """Whether JSON spells `text` as itself in quotes (orjson escapes only these: `"`, `\\` and
    control characters). isprintable() is also false for some printable non-ASCII, which then
    only takes the slower exact path."""
    return text.isprintable() and '"' not in text and "\\" not in text


def js(value: object) -> str:
    return orjson.dumps(value).decode()


def jstr(text: str) -> str:
    return js(text)


@dataclass(frozen=True)
class Peer:
    """One end of a connection: a pod, or an address outside the pod network."""

    ip: str
    pod: Pod | None = None
    ep: str = WORLD_EP  # Endpoint JSON when pod is None
    node: int = -1  # node of a host peer (kubelet), -1 elsewhere
    name: str = ""  # DNS name the client used (world peers): destination_names

    @property
    def observed(self) -> bool:
        return self.pod is not None


class FlowBuilder:
    """Builds the events of one session; rng drives every random choice (deterministic)."""

    def __init__(self, cluster: Cluster, rng: random.Random) -> None:
        self.c = cluster
        self.rng = rng
        self.node_frag = [f'"node_name":{js(n.name)},"node_labels":{js(n.labels)}' for n in cluster.nodes]
        self._tcp_cache: dict[tuple[object, ...], list[tuple[int, int, list[str], bool]]] = {}
        self._dns_cache: dict[tuple[object, ...], tuple[list[tuple[int, int, list[str]]], list[str], int]] = {}
        self._http_cache: dict[tuple[str, str, str, int], tuple[str, ...]] = {}
        self.dns_pods = cluster.dns_servers()

    # ------------------------------------------------------------------ small helpers
    def eport(self) -> int:
        # Linux's default ip_local_port_range; random() arithmetic is 4x cheaper than randrange
        return 32768 + int(self.rng.random() * 28232)

    def uuid4(self) -> str:
        x = self.rng.getrandbits(128)
        h = x.to_bytes(16, "big").hex()
        # the variant digit from the 17th hex digit's low two bits (bits 60-61 of the draw)
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[(x >> 60) & 3]}{h[17:20]}-{h[20:]}"

    def rtt(self, a: Peer, b: Peer) -> int:
        r = self.rng.random()
        if a.pod is None or b.pod is None:
            return 4_000_000 + int(r * 36_000_000) if (a.ep == WORLD_EP or b.ep == WORLD_EP) \
                else 300_000 + int(r * 2_700_000)
        if a.pod.node == b.pod.node:
            return 20_000 + int(r * 70_000)
        return 150_000 + int(r * 550_000)

    @staticmethod
    def _ip(sip: str, dip: str) -> str:
        version = "IPv6" if ":" in sip else "IPv4"
        return f'"IP":{{"source":"{sip}","destination":"{dip}","ipVersion":"{version}"}}'

    def trace_body(self, *, eth: str, sip: str, dip: str, l4: str, src: str, dst: str, node: int, names: str,
                   reply: bool, event_type: str, svc: str, direction: str, point: str, reason: str,
                   iface: str, summary: str) -> str:
        return (f'"verdict":"FORWARDED",{eth}{self._ip(sip, dip)},{l4},"source":{src},"destination":{dst},'
                f'"Type":"L3_L4",{self.node_frag[node]},{names}{REPLY[reply]}'
                f'"event_type":{event_type},{svc}"traffic_direction":"{direction}",'
                f'"trace_observation_point":"{point}","trace_reason":"{reason}",'
                f'"is_reply":{"true" if reply else "false"},{iface}"Summary":"{summary}"')

    def l7_body(self, *, sip: str, dip: str, l4: str, src: str, dst: str, node: int, l7: str, reply: bool,
                svc: str, direction: str, trace_ctx: str, summary: str) -> str:
        return (f'"verdict":"FORWARDED",{self._ip(sip, dip)},{l4},"source":{src},"destination":{dst},'
                f'"Type":"L7",{self.node_frag[node]},"l7":{l7},{REPLY[reply]}'
                f'"event_type":{EV_L7},{svc}"traffic_direction":"{direction}",'
                f'"is_reply":{"true" if reply else "false"},{trace_ctx}"Summary":{summary}')

    def drop_body(self, *, sip: str, dip: str, l4: str, src: str, dst: str, node: int, names: str, eth: str,
                  svc: str, direction: str, reason: tuple[int, str, str, int], summary: str) -> str:
        num, name, bpf_file, line = reason
        return (f'"verdict":"DROPPED","drop_reason":{num},{eth}{self._ip(sip, dip)},{l4},"source":{src},'
                f'"destination":{dst},"Type":"L3_L4",{self.node_frag[node]},{names}'
                f'"event_type":{{"type":1,"sub_type":{num}}},{svc}"traffic_direction":"{direction}",'
                f'"file":{{"name":"{bpf_file}","line":{line}}},"drop_reason_desc":"{name}",'
                f'"Summary":"{summary}"')

    def policy_verdict_body(self, *, sip: str, dip: str, l4: str, src: str, dst: str, node: int, names: str,
                            svc: str, server: Pod, summary: str) -> str:
        policy = js([{"name": f"allow-{server.wl.name}-ingress", "namespace": server.wl.ns,
                      "labels": ["k8s:io.cilium.k8s.policy.derived-from=CiliumNetworkPolicy",
                                 f"k8s:io.cilium.k8s.policy.name=allow-{server.wl.name}-ingress",
                                 f"k8s:io.cilium.k8s.policy.namespace={server.wl.ns}"],
                      "revision": str(40 + len(server.wl.name)), "kind": "CiliumNetworkPolicy"}])
        eth = f'"ethernet":{{"source":"{server.lxc_mac}","destination":"{server.mac}"}},'
        return (f'"verdict":"FORWARDED",{eth}{self._ip(sip, dip)},{l4},"source":{src},"destination":{dst},'
                f'"Type":"L3_L4",{self.node_frag[node]},{names}"event_type":{EV_POLICY_VERDICT},{svc}'
                f'"traffic_direction":"INGRESS","policy_match_type":2,"is_reply":false,'
                f'"Summary":"{summary}","ingress_allowed_by":{policy}')

    def _svc(self, client: Peer, server: Peer, port: int) -> tuple[str, str]:
        """destination_service / source_service when the client went through a Service."""
        if server.pod is not None and client.pod is not None and server.pod.wl.service \
                and server.pod.wl.port_spec(port) is not None and client.pod.wl is not server.pod.wl:
            sv = js({"name": server.pod.wl.service, "namespace": server.pod.wl.ns})
            return f'"destination_service":{sv},', f'"source_service":{sv},'
        if server.ep == self.c.apiserver_ep:
            return f'"destination_service":{KUBERNETES_SVC},', f'"source_service":{KUBERNETES_SVC},'
        return "", ""

    # ------------------------------------------------------------------ TCP
    def _tcp_template(self, client: Peer, server: Peer, port: int, packets: Sequence[tuple[int, str]],
                      policy_verdict: bool) -> list[tuple[int, int, list[str], bool]]:
        """(packet index, node, body parts split at the ephemeral port, seen by the receiver's
        node) for every observation."""
        if client.pod is None and client.ep == WORLD_EP and client.ip != IPH and ":" not in client.ip:
            # every internet client has its own address: one template for all of them, the address
            # filled in, instead of a template built (and evicted) per connection
            generic = self._tcp_template(replace(client, ip=IPH), server, port, packets, policy_verdict)
            ip = client.ip
            return [(idx, node, [p.replace(IPH, ip) for p in parts], far) for idx, node, parts, far in generic]
        key = (client, server, port, tuple(packets), policy_verdict)
        cached = self._tcp_cache.get(key)
        if cached is not None:
            return cached
        svc_fwd, svc_rev = self._svc(client, server, port)
        names_fwd = f'"destination_names":[{jstr(server.name)}],' if server.name else ""
        names_rev = f'"source_names":[{jstr(server.name)}],' if server.name else ""
        c_remote = client.pod.ep_remote if client.pod else client.ep
        s_remote = server.pod.ep_remote if server.pod else server.ep
        out: list[tuple[int, int, list[str], bool]] = []
        syn_seen = False
        for idx, (direction, flag) in enumerate(packets):
            fwd = direction == 0
            flags, summary = TCP_FLAGS[flag]
            snd, rcv = (client, server) if fwd else (server, client)
            sp, dp = (PH, str(port)) if fwd else (str(port), PH)
            names, svc = (names_fwd, svc_fwd) if fwd else (names_rev, svc_rev)
            reason = ("ESTABLISHED" if syn_seen else "NEW") if fwd else "REPLY"
            syn_seen = syn_seen or fwd
            l4 = f'"l4":{{"TCP":{{"source_port":{sp},"destination_port":{dp},"flags":{flags}}}}}'
            same_node = snd.pod is not None and rcv.pod is not None and snd.pod.node == rcv.pod.node
            if snd.pod is not None and not same_node:
                p = snd.pod
                dst = rcv.pod.ep_remote if rcv.pod else (s_remote if fwd else c_remote)
                body = self.trace_body(
                    eth=f'"ethernet":{{"source":"{p.mac}","destination":"{p.lxc_mac}"}},', sip=snd.ip, dip=rcv.ip,
                    l4=l4, src=p.ep_local, dst=dst, node=p.node, names=names, reply=not fwd,
                    event_type=EV_TO_STACK, svc=svc, direction="EGRESS" if fwd else "INGRESS", point="TO_STACK",
                    reason=reason, iface="", summary=summary)
                out.append((idx, p.node, body.split(PH), False))
            if rcv.pod is not None:
                p = rcv.pod
                src = snd.ep if snd.pod is None else snd.pod.ep_local if same_node else snd.pod.ep_remote
                if fwd and flag == "SYN" and policy_verdict and server.pod is not None:
                    body = self.policy_verdict_body(sip=snd.ip, dip=rcv.ip, l4=l4, src=src, dst=p.ep_local,
                                                    node=p.node, names=names, svc=svc, server=p, summary=summary)
                    out.append((idx, p.node, body.split(PH), not same_node))
                body = self.trace_body(
                    eth=f'"ethernet":{{"source":"{p.lxc_mac}","destination":"{p.mac}"}},', sip=snd.ip, dip=rcv.ip,
                    l4=l4, src=src, dst=p.ep_local, node=p.node, names=names, reply=not fwd,
                    event_type=EV_TO_ENDPOINT, svc=svc, direction="INGRESS" if fwd else "EGRESS",
                    point="TO_ENDPOINT", reason=reason,
                    iface=f'"interface":{{"index":{p.ifindex},"name":"{p.ifname}"}},', summary=summary)
                out.append((idx, p.node, body.split(PH), not same_node))
        if len(self._tcp_cache) > 4_000:  # world clients make keys unbounded; keep memory flat
            self._tcp_cache.clear()
        self._tcp_cache[key] = out
        return out

    def tcp_connection(self, client: Peer, server: Peer, port: int, *, requests: int = 1,
                       http: bool = False, policy_verdict: bool = False, close: str = "FIN") -> list[Event]:
        """A whole TCP connection, optionally carrying `requests` HTTP exchanges seen by the proxy."""
        rng = self.rng
        sport = self.eport()
        packets: list[tuple[int, str]] = [(0, "SYN"), (1, "SYNACK"), (0, "ACK"), (0, "PSH"), (1, "PSH")]
        packets += [(0, "FIN"), (1, "FIN"), (0, "ACK")] if close == "FIN" else [(0, "RST")]
        rtt = self.rtt(client, server)
        # packet times: handshake, first request, response after server time, then the session's
        # remaining requests (not reported by aggregation), then the close
        think = [rng.randrange(300_000, 25_000_000) for _ in range(requests)]
        t_req = 2 * rtt + rng.randrange(5_000, 200_000)
        t_resp = t_req + rtt // 2 + think[0]
        t_end = t_resp + sum(think[1:]) + requests * rtt + rng.randrange(1_000_000, 50_000_000)
        times = [0, rtt // 2, rtt, t_req, t_resp, t_end, t_end + rtt // 2, t_end + rtt][:len(packets)]
        if close != "FIN":
            times[-1] = t_end
        one_way = max(rtt // 4, 10_000)
        sp = str(sport)
        # the receiver's observation comes one network hop after the sender's
        events: list[Event] = [(times[idx] + one_way if far else times[idx], node, (sp, parts))
                               for idx, node, parts, far in self._tcp_template(client, server, port, packets,
                                                                              policy_verdict)]
        if http and server.pod is not None:
            t = t_req + one_way
            for r in range(requests):
                events.extend(self.http_exchange(client, server.pod, sport, port, t, think[r]))
                t += think[r] + rtt
        return events

    def _http_static(self, client: Peer, server: Pod, port: int) -> tuple[str, ...]:
        """The parts of an HTTP request/response pair that depend only on the two endpoints."""
        key = (client.ip, client.pod.name if client.pod else "", server.name, port)
        hit = self._http_cache.get(key)
        if hit is not None:
            return hit
        wl = server.wl
        node = server.node
        if client.pod is not None:
            src_ep = client.pod.ep_local if client.pod.node == node else client.pod.ep_remote
        else:
            src_ep = client.ep
        sv = js({"name": wl.service, "namespace": wl.ns}) if wl.service and client.pod is not None else ""
        same_ns = client.pod is not None and client.pod.wl.ns == wl.ns
        host = wl.service if same_ns else f"{wl.service}.{wl.ns}"
        scrape = "1" if client.pod is not None and client.pod.wl.name == "prometheus" and port == wl.metrics_port \
            else ""
        ua = "Prometheus/2.53.1" if scrape else USER_AGENTS[zlib.crc32(client.ip.encode()) % len(USER_AGENTS)]
        out = (f'"verdict":"FORWARDED",{self._ip(client.ip, server.ip)},"l4":{{"TCP":{{"source_port":',
               f',"destination_port":{port}}}}},"source":{src_ep},"destination":{server.ep_local},"Type":"L7",'
               f'{self.node_frag[node]},"l7":{{"type":"REQUEST","http":{{"method":"',
               f'"event_type":{EV_L7},' + (f'"destination_service":{sv},' if sv else "")
               + '"traffic_direction":"INGRESS","is_reply":false,',
               f'"verdict":"FORWARDED",{self._ip(server.ip, client.ip)},"l4":{{"TCP":{{"source_port":{port},'
               '"destination_port":',
               f'}}}},"source":{server.ep_local},"destination":{src_ep},"Type":"L7",{self.node_frag[node]},'
               '"l7":{"type":"RESPONSE","latency_ns":"',
               f'{REPLY[True]}"event_type":{EV_L7},' + (f'"source_service":{sv},' if sv else "")
               + '"traffic_direction":"INGRESS","is_reply":true,',
               host, scrape, ua, str(port))
        self._http_cache[key] = out
        return out

    def http_exchange(self, client: Peer, server: Pod, sport: int, port: int, at: int, latency: int) -> list[Event]:
        """One HTTP request/response pair seen by the proxy on the server's node. Endpoint parts
        are cached per pair; only the request line, ids and timing are built per exchange."""
        rng = self.rng
        (req_a, req_b, req_c, resp_a, resp_b, resp_c, host, scrape, ua,
         port_s) = self._http_static(client, server, port)
        wl = server.wl
        if scrape:
            method, path = "GET", "/metrics"
        else:
            method, path = rng.choice(wl.http) if wl.http else ("GET", "/")
        if "{" in path:
            path = path.replace("{id}", str(rng.randrange(1000, 999999))).replace("{n}", str(rng.randrange(1, 60)))
        if scrape:
            url = f"http://{server.ip}:{port_s}{path}"
            hdrs = ('[{"key":"Accept","value":"application/openmetrics-text;version=1.0.0,application/openmetrics-'
                    'text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"},{"key":"Accept-Encoding",'
                    f'"value":"gzip"}},{{"key":"User-Agent","value":"{ua}"}},'
                    '{"key":"X-Prometheus-Scrape-Timeout-Seconds","value":"10"}]')
            ctx = ""
        else:
            url = f"http://{host}:{port_s}{path}"
            trace_id = f"{rng.getrandbits(128):032x}"
            ctype = '{"key":"Content-Type","value":"application/json"},' if method in ("POST", "PUT") else ""
            hdrs = (f'[{{"key":"Accept","value":"application/json"}},{ctype}{{"key":"Traceparent","value":'
                    f'"00-{trace_id}-{rng.getrandbits(64):016x}-01"}},{{"key":"User-Agent","value":"{ua}"}},'
                    f'{{"key":"X-Request-Id","value":"{self.uuid4()}"}}]')
            ctx = f'"trace_context":{{"parent":{{"trace_id":"{trace_id}"}}}},'
        x = rng.random()
        code = 404 if x < 0.03 else 503 if x < 0.04 else 500 if x < 0.045 else 201 if method == "POST" else 200
        plain = _plain(url) and _plain(method)  # then a JSON string is the text in quotes
        url_j = f'"{url}"' if plain else jstr(url)
        sp = str(sport)
        http_tail = f'","url":{url_j},"protocol":"HTTP/1.1","headers":{hdrs}}}}},'
        req_summary = f'"HTTP/1.1 {method} {url}"' if plain else jstr(f"HTTP/1.1 {method} {url}")
        resp_summary = (f'"HTTP/1.1 {code} {latency // 1_000_000}ms ({method} {url})"' if plain
                        else jstr(f"HTTP/1.1 {code} {latency // 1_000_000}ms ({method} {url})"))
        # joined when the line is written (Body)
        req = ("", (req_a, sp, req_b, method, http_tail, req_c, ctx, '"Summary":', req_summary))
        resp = ("", (resp_a, sp, resp_b, str(latency), f'","http":{{"code":{code},"method":"{method}',
                     http_tail, resp_c, ctx, '"Summary":', resp_summary))
        return [(at, server.node, req), (at + latency, server.node, resp)]

    def syn_probe(self, client: Pod, server: Peer, port: int, outcome: str, *, retries: int = 0) -> list[Event]:
        """A connection attempt: `dropped` (policy denied, retransmitted `retries` times),
        `closed` (RST-ACK from the target), `open` (SYN-ACK, then the prober resets)."""
        cl = Peer(client.ip, client)
        sport = self.eport()
        if outcome == "dropped":
            body = self.policy_drop(client, server, port, sport)
            node = server.pod.node if server.pod is not None else client.node
            return [(sum(1_000_000_000 * (2**k) for k in range(i)), node, body) for i in range(retries + 1)]
        packets = [(0, "SYN"), (1, "SYNACK"), (0, "RST")] if outcome == "open" else [(0, "SYN"), (1, "RSTACK")]
        rtt = self.rtt(cl, server)
        sp = str(sport)
        return [(idx * rtt // 2 + (rtt // 4 if far else 0), node, (sp, parts))
                for idx, node, parts, far in self._tcp_template(cl, server, port, packets, False)]

    def policy_drop(self, client: Pod, server: Peer, port: int, sport: int, *, proto: str = "TCP") -> str:
        """A SYN (or datagram) denied by policy: ingress drop at the server's node, or egress drop
        at the client's node for destinations outside the pod network."""
        flags = ',"flags":{"SYN":true}' if proto == "TCP" else ""
        l4 = f'"l4":{{"{proto}":{{"source_port":{sport},"destination_port":{port}{flags}}}}}'
        names = f'"destination_names":[{jstr(server.name)}],' if server.name else ""
        summary = "TCP Flags: SYN" if proto == "TCP" else proto
        if server.pod is None:
            return self.drop_body(
                sip=client.ip, dip=server.ip, l4=l4, src=client.ep_local, dst=server.ep, node=client.node,
                names=names, eth=f'"ethernet":{{"source":"{client.mac}","destination":"{client.lxc_mac}"}},',
                svc="", direction="EGRESS", reason=(133, "POLICY_DENIED", "bpf_lxc.c", 1348), summary=summary)
        sp = server.pod
        svc_fwd, _ = self._svc(Peer(client.ip, client), server, port)
        return self.drop_body(
            sip=client.ip, dip=sp.ip, l4=l4, src=client.ep_local if client.node == sp.node else client.ep_remote,
            dst=sp.ep_local, node=sp.node, names=names,
            eth=f'"ethernet":{{"source":"{sp.lxc_mac}","destination":"{sp.mac}"}},', svc=svc_fwd,
            direction="INGRESS", reason=(133, "POLICY_DENIED", "bpf_lxc.c", 2161), summary=summary)

    def other_drop(self, client: Pod, server: Pod, port: int) -> list[Event]:
        """A datapath drop that is not a policy decision (stale IP after a pod restart, CT map full)."""
        reason = self.rng.choice(OTHER_DROPS)
        sport = self.eport()
        l4 = f'"l4":{{"TCP":{{"source_port":{sport},"destination_port":{port},"flags":{{"SYN":true}}}}}}'
        body = self.drop_body(
            sip=client.ip, dip=server.ip, l4=l4, src=client.ep_local, dst=server.ep_remote, node=client.node,
            names="", eth=f'"ethernet":{{"source":"{client.mac}","destination":"{client.lxc_mac}"}},', svc="",
            direction="EGRESS", reason=reason, summary="TCP Flags: SYN")
        return [(0, client.node, body)]

    # ------------------------------------------------------------------ UDP, ICMP
    def udp_datagrams(self, client: Pod, server: Pod, port: int, count: int) -> list[Event]:
        sport = self.eport()
        l4 = f'"l4":{{"UDP":{{"source_port":{sport},"destination_port":{port}}}}}'
        sv = js({"name": server.wl.service, "namespace": server.wl.ns}) if server.wl.service else ""
        svc = f'"destination_service":{sv},' if sv else ""
        same = client.node == server.node
        events: list[Event] = []
        t = 0
        for i in range(count):
            reason = "NEW" if i == 0 else "ESTABLISHED"
            if not same:
                events.append((t, client.node, self.trace_body(
                    eth=f'"ethernet":{{"source":"{client.mac}","destination":"{client.lxc_mac}"}},', sip=client.ip,
                    dip=server.ip, l4=l4, src=client.ep_local, dst=server.ep_remote, node=client.node, names="",
                    reply=False, event_type=EV_TO_STACK, svc=svc, direction="EGRESS", point="TO_STACK",
                    reason=reason, iface="", summary="UDP")))
            events.append((t + 150_000, server.node, self.trace_body(
                eth=f'"ethernet":{{"source":"{server.lxc_mac}","destination":"{server.mac}"}},', sip=client.ip,
                dip=server.ip, l4=l4, src=client.ep_local if same else client.ep_remote, dst=server.ep_local,
                node=server.node, names="", reply=False, event_type=EV_TO_ENDPOINT, svc=svc, direction="INGRESS",
                point="TO_ENDPOINT", reason=reason,
                iface=f'"interface":{{"index":{server.ifindex},"name":"{server.ifname}"}},', summary="UDP")))
            t += self.rng.randrange(1_000_000, 900_000_000)
        return events

    def udp_to_peer(self, client: Pod, peer: Peer, port: int, count: int) -> list[Event]:
        """Datagrams to an address outside the pod network (upstream DNS, NTP), seen leaving the
        client's node, with the replies coming back to the pod."""
        sport = self.eport()
        names = f'"destination_names":[{jstr(peer.name)}],' if peer.name else ""
        fwd = f'"l4":{{"UDP":{{"source_port":{sport},"destination_port":{port}}}}}'
        rev = f'"l4":{{"UDP":{{"source_port":{port},"destination_port":{sport}}}}}'
        events: list[Event] = []
        t = 0
        for i in range(count):
            events.append((t, client.node, self.trace_body(
                eth=f'"ethernet":{{"source":"{client.mac}","destination":"{client.lxc_mac}"}},', sip=client.ip,
                dip=peer.ip, l4=fwd, src=client.ep_local, dst=peer.ep, node=client.node, names=names, reply=False,
                event_type=EV_TO_STACK, svc="", direction="EGRESS", point="TO_STACK",
                reason="NEW" if i == 0 else "ESTABLISHED", iface="", summary="UDP")))
            rtt = self.rtt(Peer(client.ip, client), peer)
            events.append((t + rtt, client.node, self.trace_body(
                eth=f'"ethernet":{{"source":"{client.lxc_mac}","destination":"{client.mac}"}},', sip=peer.ip,
                dip=client.ip, l4=rev, src=peer.ep, dst=client.ep_local, node=client.node, names="", reply=True,
                event_type=EV_TO_ENDPOINT, svc="", direction="EGRESS", point="TO_ENDPOINT", reason="REPLY",
                iface=f'"interface":{{"index":{client.ifindex},"name":"{client.ifname}"}},', summary="UDP")))
            t += rtt + self.rng.randrange(1_000_000, 200_000_000)
        return events

    def health_ping(self) -> list[Event]:
        """cilium-health ICMP echo from another node's health endpoint, seen on the target node."""
        nodes = self.c.nodes
        if len(nodes) < 2:
            return []
        a, b = self.rng.sample(range(len(nodes)), 2)
        src, dst = nodes[a], nodes[b]
        remote = '{"identity":4,"labels":["reserved:health"]}'
        mac, lxc_mac = dst.health_mac
        req = self.trace_body(
            eth=f'"ethernet":{{"source":"{lxc_mac}","destination":"{mac}"}},', sip=src.health_ip, dip=dst.health_ip,
            l4='"l4":{"ICMPv4":{"type":8}}', src=remote, dst=dst.health_ep, node=b, names="", reply=False,
            event_type=EV_TO_ENDPOINT, svc="", direction="INGRESS", point="TO_ENDPOINT", reason="NEW",
            iface=f'"interface":{{"index":{dst.health_ifindex},"name":"lxc_health"}},', summary="ICMPv4 EchoRequest")
        rep = self.trace_body(
            eth=f'"ethernet":{{"source":"{mac}","destination":"{lxc_mac}"}},', sip=dst.health_ip, dip=src.health_ip,
            l4='"l4":{"ICMPv4":{}}', src=dst.health_ep, dst=remote, node=b, names="", reply=True,
            event_type=EV_TO_STACK, svc="", direction="INGRESS", point="TO_STACK", reason="REPLY", iface="",
            summary="ICMPv4 EchoReply")
        return [(0, b, req), (60_000, b, rep)]

    # ------------------------------------------------------------------ DNS
    def dns_lookup(self, client: Pod, name: str, *, answers: dict[str, list[str]] | None = None,
                   rcode: int = 0, qtypes: Sequence[str] = ("A",), search: bool = True) -> list[Event]:
        """A resolver walk through the pod's search path (ndots:5), seen by the DNS proxy on the
        client's node: NXDOMAIN (rcode 3) for each expansion that does not exist, then the answer
        for the name itself (`rcode` 3 = NXDOMAIN for names that do not exist at all).

        `name` is a workload key `ns/name` (resolved through its Service) or a DNS name."""
        rng = self.rng
        ttl = rng.randrange(1, 31) if name in self.c.workloads else rng.randrange(1, 301)
        key = (client.name, name, tuple(qtypes), rcode, search, None if answers is None else js(answers))
        cached = self._dns_cache.get(key)
        if cached is None:
            cached = self._dns_template(client, name, answers, rcode, qtypes, search)
            self._dns_cache[key] = cached
        template, _, _ = cached
        sp = str(self.eport())
        ttl_s = str(ttl)
        t = 0
        events: list[Event] = []
        step = rng.randrange(200_000, 1_500_000)
        for idx, node, parts in template:
            events.append((t + idx * step, node, sp.join(parts).replace("\x01", ttl_s)))
        return events

    def _dns_template(self, client: Pod, name: str, answers: dict[str, list[str]] | None, rcode: int,
                      qtypes: Sequence[str], search: bool) -> tuple[list[tuple[int, int, list[str]]], list[str], int]:
        ns = client.wl.ns
        # a stable hash: str hash() is salted per process, and output must depend on the seed only
        resolver = self.dns_pods[zlib.crc32(f"{client.name}|{name}".encode()) % len(self.dns_pods)]
        if name in self.c.workloads:
            wl = self.c.workloads[name]
            fq = f"{wl.service or wl.name}.{wl.ns}.svc.cluster.local."
            if wl.ns == ns:
                candidates = [fq]
            else:  # "svc.ns" is tried below the pod's own namespace first
                candidates = [f"{wl.service or wl.name}.{wl.ns}.{ns}.svc.cluster.local.", fq]
            answers = {"A": [wl.svc_ip]} if wl.svc_ip else {}
        else:
            suffixes = [f"{ns}.svc.cluster.local", "svc.cluster.local", "cluster.local"]
            if self.c.cloud_suffix:
                suffixes.append(self.c.cloud_suffix)
            dots = name.rstrip(".").count(".")
            # ndots:5 — names with fewer dots walk the search path first
            walk = [f"{name}.{s}." for s in suffixes] if search and dots < 5 else []
            candidates = [*walk, f"{name.rstrip('.')}."]
            if answers is None:
                addrs = self.c.external.get(name, [])
                answers = {"A": [a for a in addrs if ":" not in a]}
                v6 = [a for a in addrs if ":" in a]
                if v6:
                    answers["AAAA"] = v6
        node = client.node
        c_ep = client.ep_local
        d_ep = resolver.ep_local if resolver.node == node else resolver.ep_remote
        l4_req = f'"l4":{{"UDP":{{"source_port":{PH},"destination_port":53}}}}'
        l4_resp = f'"l4":{{"UDP":{{"source_port":53,"destination_port":{PH}}}}}'
        out: list[tuple[int, int, list[str]]] = []
        step = 0
        out.append((step, node, self.trace_body(
            eth=f'"ethernet":{{"source":"{client.mac}","destination":"{client.lxc_mac}"}},', sip=client.ip,
            dip=resolver.ip, l4=l4_req, src=c_ep, dst=d_ep, node=node, names="", reply=False,
            event_type=EV_TO_PROXY, svc="", direction="EGRESS", point="TO_PROXY", reason="NEW", iface="",
            summary="UDP").split(PH)))
        for i, q in enumerate(candidates):
            last = i == len(candidates) - 1
            for qt in (qtypes if last else ("A",)):
                req = f'{{"type":"REQUEST","dns":{{"query":{jstr(q)},"observation_source":"proxy","qtypes":["{qt}"]}}}}'
                out.append((step, node, self.l7_body(
                    sip=client.ip, dip=resolver.ip, l4=l4_req, src=c_ep, dst=d_ep, node=node, l7=req, reply=False,
                    svc="", direction="EGRESS", trace_ctx="", summary=jstr(f"DNS Query {q} {qt}")).split(PH)))
                ips = answers.get(qt, []) if (last and rcode == 0) else []
                if last and rcode == 0 and (ips or qt == "TXT"):
                    if qt == "TXT":
                        resp = (f'{{"type":"RESPONSE","dns":{{"query":{jstr(q)},"ttl":\x01,'
                                f'"observation_source":"proxy","qtypes":["TXT"],"rrtypes":["TXT"]}}}}')
                        summary = f'DNS Answer TTL: \x01 (Proxy {q} TXT)'
                    else:
                        resp = (f'{{"type":"RESPONSE","dns":{{"query":{jstr(q)},"ips":{js(ips)},"ttl":\x01,'
                                f'"observation_source":"proxy","qtypes":["{qt}"],"rrtypes":["{qt}"]}}}}')
                        summary = f'DNS Answer "{",".join(ips)}" TTL: \x01 (Proxy {q} {qt})'
                elif last and rcode == 0:  # NOERROR without records of that type (NODATA)
                    resp = (f'{{"type":"RESPONSE","dns":{{"query":{jstr(q)},"ttl":\x01,'
                            f'"observation_source":"proxy","qtypes":["{qt}"]}}}}')
                    summary = f"DNS Answer TTL: \x01 (Proxy {q} {qt})"
                else:
                    code = rcode if last else 3
                    text = {2: "Server Failure", 3: "Non-Existent Domain", 5: "Refused"}.get(code, str(code))
                    resp = (f'{{"type":"RESPONSE","dns":{{"query":{jstr(q)},"ttl":4294967295,'
                            f'"observation_source":"proxy","rcode":{code},"qtypes":["{qt}"]}}}}')
                    summary = f"DNS Answer RCode: {text} TTL: 4294967295 (Proxy {q} {qt})"
                step += 1
                out.append((step, node, self.l7_body(
                    sip=resolver.ip, dip=client.ip, l4=l4_resp, src=d_ep, dst=c_ep, node=node, l7=resp, reply=True,
                    svc="", direction="EGRESS", trace_ctx="", summary=jstr(summary)).split(PH)))
                step += 1
        final = answers.get("A", []) if rcode == 0 else []
        return out, final, step
