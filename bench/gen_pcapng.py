"""Generate a large multi-interface pcapng of NATed Docker traffic, as hoptrace records it.

Each request crosses 5 hops (web/eth0 tx, host/vethX rx, host/docker0 rx,
host/eth0 tx after MASQUERADE, inet/eth0 rx) and its reply the same 5 back
(un-NATed by conntrack on host/eth0 -> docker0). A mix of ICMP echo, UDP and
TCP from several containers; every packet has its own IP ID and payload, so
the correlator has real work. Each record carries hoptrace's comment
(``{"v":1,"dir":..,"skb":..,...}``) and EPB direction flags, like
``live --record`` writes. Written with struct in big chunks: ~1M records in
a few seconds.

``--shape udp4`` writes the other shape issue 15 measures: UDP packets only, each
seen at 4 hops on its way out (web/eth0 tx, host/vethN rx, host/docker0 rx,
host/eth0 tx), MASQUERADEd at the last, no replies: 1M records are 250k packets,
250k paths of 4 hops (the default shape, ``mix``: 100k packets, 200k paths of 5).

    .venv/bin/python bench/gen_pcapng.py /tmp/nat-1m.pcapng --records 1000000
    .venv/bin/python bench/gen_pcapng.py /tmp/udp4-1m.pcapng --shape udp4
"""

from __future__ import annotations

import argparse
import json
import struct
import sys

HOPS_OUT = [  # (node, iface, dir) in the order a request crosses them (web: the container)
    ("web", "eth0", "tx"), ("host", "vethN", "rx"), ("host", "docker0", "rx"),
    ("host", "eth0", "tx"), ("inet", "eth0", "rx"),
]  # fmt: skip
NETNS = {"host": 4026531840, "inet": 4026532300, "web": 4026532466, "app1": 4026532501,
         "app2": 4026532502, "app3": 4026532503, "app4": 4026532504, "app5": 4026532505}
MAC_A = bytes.fromhex("0242ac110002")
MAC_B = bytes.fromhex("0242ac110001")
PUBLIC = bytes([203, 0, 113, 2])
SERVER = bytes([198, 51, 100, 8])


def _opt(code: int, val: bytes) -> bytes:
    return struct.pack("<HH", code, len(val)) + val + b"\0" * (-len(val) % 4)


def _block(btype: int, body: bytes) -> bytes:
    n = 12 + len(body)
    return struct.pack("<II", btype, n) + body + struct.pack("<I", n)


def header(labels: list[tuple[str, str]]) -> bytes:
    out = _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1) + _opt(0, b""))
    for i, (node, iface) in enumerate(labels):
        opts = (_opt(2, f"{node}/{iface}".encode()) + _opt(3, f"netns={NETNS[node]} ifindex={i + 2}".encode())
                + _opt(9, bytes([9])) + _opt(0, b""))  # fmt: skip
        out += _block(1, struct.pack("<HHI", 1, 0, 128) + opts)
    return out


_ip = struct.Struct("!BBHHHBBH4s4s")
_epb = struct.Struct("<IIIIIIII")


def frame(proto: int, src: bytes, dst: bytes, sport: int, dport: int, ip_id: int, ttl: int,
          seq: int, payload: bytes) -> bytes:  # fmt: skip
    if proto == 1:
        l4 = struct.pack("!BBHHH", 8 if sport else 0, 0, 0, dport, seq & 0xFFFF) + payload
    elif proto == 17:
        l4 = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    else:
        l4 = struct.pack("!HHIIBBHHH", sport, dport, seq, seq ^ 0x5A5A, 0x50, 0x18, 502, 0, 0) + payload
    ip = _ip.pack(0x45, 0, 20 + len(l4), ip_id & 0xFFFF, 0x4000, ttl, proto, 0, src, dst)
    return MAC_B + MAC_A + b"\x08\x00" + ip + l4


def epb(ifid: int, ts_ns: int, fr: bytes, d: str, skb: int, netns: int) -> bytes:
    comment = json.dumps({"v": 1, "dir": d, "skb": f"0x{skb:x}", "hook": None, "netns": netns,
                          "drop_reason": None, "ts_ns": ts_ns}, separators=(",", ":")).encode()  # fmt: skip
    opts = _opt(2, struct.pack("<I", 1 if d == "rx" else 2)) + _opt(1, comment) + _opt(0, b"")
    pad = b"\0" * (-len(fr) % 4)
    n = 32 + len(fr) + len(pad) + len(opts)
    return _epb.pack(6, n, ifid, ts_ns >> 32, ts_ns & 0xFFFFFFFF, len(fr), len(fr), 0)[:28] + fr + pad + opts + struct.pack("<I", n)


def generate(path: str, records: int, containers: int = 4) -> int:
    containers = max(1, min(containers, 6))
    nodes = ["web"] + [f"app{c}" for c in range(1, containers)]
    all_labels = [("host", "docker0"), ("host", "eth0"), ("inet", "eth0")]
    all_labels += [(nodes[c], "eth0") for c in range(containers)]
    all_labels += [("host", f"veth{c}") for c in range(containers)]
    ifid = {lab: k for k, lab in enumerate(all_labels)}
    written = 0
    ts = 1_795_805_084_000_000_000
    pkt = 0
    with open(path, "wb") as f:
        f.write(header(all_labels))
        buf: list[bytes] = []
        while written < records:
            c = pkt % containers
            inside = bytes([172, 17, 0, 2 + c])
            proto = (1, 17, 6)[pkt % 3]
            sport = 40000 + (pkt % 2000) if proto != 1 else 1
            nat_sport = 61000 + (pkt % 2000) if proto != 1 else 1
            dport = (0, 53, 80)[pkt % 3] if proto != 1 else 1000 + c
            payload = struct.pack("!Q", pkt) + b"hoptrace-bench-payload" * 2
            skb = 0xFFFF888100000000 + (pkt % 50000) * 0x100
            req = [  # (label, src, sport, dst, dport, ttl)
                ((nodes[c], "eth0"), inside, sport, SERVER, dport, 64),
                (("host", f"veth{c}"), inside, sport, SERVER, dport, 64),
                (("host", "docker0"), inside, sport, SERVER, dport, 64),
                (("host", "eth0"), PUBLIC, nat_sport, SERVER, dport, 63),
                (("inet", "eth0"), PUBLIC, nat_sport, SERVER, dport, 63),
            ]
            for k, (lab, s, sp, dst, dp, ttl) in enumerate(req):
                if proto == 1:  # echo request: id 1000+c inside, 5000+c after MASQUERADE
                    fr = frame(1, s, dst, 1, (1000 + c) if k < 3 else (5000 + c), pkt, ttl, pkt, payload)
                else:
                    fr = frame(proto, s, dst, sp, dp, pkt, ttl, pkt, payload)
                d = HOPS_OUT[k][2]
                buf.append(epb(ifid[lab], ts + k * 9_000, fr, d, skb, NETNS[lab[0]]))
            rep_payload = struct.pack("!Q", pkt | 1 << 63) + b"hoptrace-bench-reply" * 2
            rep = [
                (("inet", "eth0"), SERVER, dport, PUBLIC, nat_sport, 64, "tx"),
                (("host", "eth0"), SERVER, dport, PUBLIC, nat_sport, 64, "rx"),
                (("host", "docker0"), SERVER, dport, inside, sport, 63, "tx"),
                (("host", f"veth{c}"), SERVER, dport, inside, sport, 63, "tx"),
                ((nodes[c], "eth0"), SERVER, dport, inside, sport, 63, "rx"),
            ]
            t0 = ts + 60_000
            for k, (lab, s, sp, dst, dp, ttl, d) in enumerate(rep):
                if proto == 1:
                    fr = frame(1, s, dst, 0, (5000 + c) if k < 2 else (1000 + c), pkt + 7, ttl, pkt, rep_payload)
                else:
                    fr = frame(proto, s, dst, sp, dp, pkt + 7, ttl, pkt + 1, rep_payload)
                buf.append(epb(ifid[lab], t0 + k * 9_000, fr, d, skb + 0x40, NETNS[lab[0]]))
            written += 10
            pkt += 1
            ts += 25_000
            if len(buf) >= 50_000:
                f.write(b"".join(buf))
                buf = []
        f.write(b"".join(buf))
    return written


def generate_udp4(path: str, records: int, containers: int = 4) -> int:
    """Shape ``udp4``: ``records // 4`` UDP packets out of the containers, 4 hops each,
    the source rewritten (MASQUERADE) at the last; ``records`` rounded down to a multiple of 4."""
    containers = max(1, min(containers, 6))
    nodes = ["web"] + [f"app{c}" for c in range(1, containers)]
    all_labels = [("host", "docker0"), ("host", "eth0")]
    all_labels += [(nodes[c], "eth0") for c in range(containers)]
    all_labels += [("host", f"veth{c}") for c in range(containers)]
    ifid = {lab: k for k, lab in enumerate(all_labels)}
    written = 0
    ts = 1_795_805_084_000_000_000
    pkt = 0
    with open(path, "wb") as f:
        f.write(header(all_labels))
        buf: list[bytes] = []
        while written + 4 <= records:
            c = pkt % containers
            inside = bytes([172, 17, 0, 2 + c])
            sport, nat_sport, dport = 40000 + (pkt % 2000), 61000 + (pkt % 2000), 53 + (pkt % 4)
            payload = struct.pack("!Q", pkt) + b"hoptrace-bench-payload" * 2
            skb = 0xFFFF888100000000 + (pkt % 50000) * 0x100
            hops = [  # (label, src, sport, ttl, dir)
                ((nodes[c], "eth0"), inside, sport, 64, "tx"),
                (("host", f"veth{c}"), inside, sport, 64, "rx"),
                (("host", "docker0"), inside, sport, 64, "rx"),
                (("host", "eth0"), PUBLIC, nat_sport, 63, "tx"),
            ]
            for k, (lab, s, sp, ttl, d) in enumerate(hops):
                fr = frame(17, s, SERVER, sp, dport, pkt, ttl, pkt, payload)
                buf.append(epb(ifid[lab], ts + k * 9_000, fr, d, skb, NETNS[lab[0]]))
            written += 4
            pkt += 1
            ts += 20_000
            if len(buf) >= 50_000:
                f.write(b"".join(buf))
                buf = []
        f.write(b"".join(buf))
    return written


SHAPES = {"mix": generate, "udp4": generate_udp4}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("path")
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--containers", type=int, default=4)
    p.add_argument("--shape", choices=sorted(SHAPES), default="mix",
                   help="mix: ICMP/UDP/TCP requests and replies over 5 hops, MASQUERADE at the 4th (default); "
                        "udp4: UDP packets over 4 hops, MASQUERADE at the last")  # fmt: skip
    a = p.parse_args(argv)
    n = SHAPES[a.shape](a.path, a.records, a.containers)
    print(f"wrote {n} records to {a.path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
