"""Oracle: hoptrace's per-packet outermost IPv4/IPv6 header equals tshark's, over the tcpdump corpus.

For every corpus file hoptrace reads (link types Ethernet, Linux cooked v1/v2,
raw IP), per packet, in file order, hoptrace's decode is compared with

    tshark -n -r F -T fields -E occurrence=f -e frame.protocols
           -e ip.src -e ip.dst -e ip.proto -e ip.id -e ipv6.src -e ipv6.dst -e ipv6.nxt

``occurrence=f`` keeps the first (outermost) header; ``frame.protocols`` says
which of ip/ipv6 is outermost and what lies before it.

Speed: tshark costs ~0.3 s of start-up per file, ~3-4 minutes for the ~540
files on a shared 2-core box. So the packets hoptrace read are written, byte
for byte, into one pcap per link type and tshark runs once per link type (in
a small pool); the outer header fields of a frame depend only on its own
bytes. That the reader found exactly the file's records is checked
separately against ``capinfos -c`` (cheap: it does not dissect).

What must hold, per packet (nothing is skipped silently; every packet falls in
exactly one case):

1. tshark's outermost IP layer sits directly on the link header, after at most
   802.1Q/802.1ad tags (the only encapsulations hoptrace parses) and tshark
   printed both addresses: hoptrace must report that family with equal src and
   dst; for IPv4 also equal protocol and IP ID; for IPv6 equal next header,
   except when the fixed header's next header is an extension header (hoptrace
   reports the protocol after the extension chain, tshark's ``ipv6.nxt`` is
   the first link of that chain; the walk is unit-tested in test_decode).
2. Out of scope, and hoptrace must then report *no* IP (family 0), never a
   wrong one: (a) the IP header is behind an encapsulation hoptrace does not
   parse (MPLS, MACsec, NSH, Arista AVSP, PPPoE, LLC/SNAP, ...); (b) tshark
   found the header bogus or cut short and printed no complete address pair
   (bad version or header length, total length below the header length,
   fewer than 20/40 bytes).
3. tshark shows no IP layer at all: hoptrace must report family 0.

Link types hoptrace does not decode (802.11, PPP, ...) make FileSource fail
with "unsupported link type": those files are the corpus test's business, not
the oracle's.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CORPUS
from tests.reference.decode import decode_one
from tests.reference.readers import _FileReader
from tracer.addr import addr_text
from tracer.errors import CaptureFileError

FIELDS = ["frame.protocols", "ip.src", "ip.dst", "ip.proto", "ip.id", "ipv6.src", "ipv6.dst", "ipv6.nxt"]
# Layers tshark may show before the outermost IP that hoptrace parses too.
LINK_LAYERS = frozenset({"eth", "ethertype", "vlan", "ieee8021ad", "sll", "raw"})
IPV6_EXT = frozenset({0, 43, 44, 51, 60, 135, 139, 140})

Ours = tuple[int, str, str, int, int]


def corpus_files() -> list[str]:
    if not CORPUS.is_dir():
        return []
    return sorted(p.name for p in CORPUS.iterdir() if p.suffix in (".pcap", ".pcapng"))


def read_ours(path: Path) -> tuple[list[tuple[int, bytes, Ours]], bool]:
    """Per packet (link type, frame bytes, (family, src, dst, proto, ip_id)); and whether reading failed."""
    reader = _FileReader(str(path))
    out: list[tuple[int, bytes, Ours]] = []
    failed = False
    try:
        for ch in reader.chunks():
            for off, ln, ifid in zip(ch.offs, ch.lens, ch.iface, strict=True):
                lt = reader.ifaces[ifid].linktype
                t = decode_one(ch.buf, off, off + ln, lt)
                fam = t[0]
                out.append((lt, bytes(ch.buf[off : off + ln]),
                            (fam, addr_text(fam, t[4]), addr_text(fam, t[5]), t[1], t[8])))  # fmt: skip
    except CaptureFileError:
        failed = True
    return out, failed


def run_tshark(path: Path) -> list[list[str]]:
    cmd = ["tshark", "-n", "-r", str(path), "-T", "fields", "-E", "occurrence=f"]
    for f in FIELDS:
        cmd += ["-e", f]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    return [(line.split("\t") + [""] * len(FIELDS))[: len(FIELDS)] for line in p.stdout.splitlines()]


def capinfos_count(path: Path) -> int | None:
    p = subprocess.run(["capinfos", "-c", "-M", str(path)], capture_output=True, text=True, timeout=60)
    m = re.search(r"Number of packets:\s+(\d+)", p.stdout)
    return int(m.group(1)) if m else None


class OracleData:
    def __init__(self) -> None:
        self.ours: dict[str, list[Ours]] = {}
        self.failed: dict[str, bool] = {}
        self.theirs: dict[str, list[list[str]]] = {}
        self.counts: dict[str, int | None] = {}


@pytest.fixture(scope="session")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> OracleData:
    for tool in ("tshark", "capinfos"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (make install provides it)")
    data = OracleData()
    groups: dict[int, list[tuple[str, int, bytes]]] = {}
    for name in corpus_files():
        pkts, failed = read_ours(CORPUS / name)
        if not pkts:
            continue
        data.ours[name] = [o for _, _, o in pkts]
        data.failed[name] = failed
        for i, (lt, frame, _) in enumerate(pkts):
            groups.setdefault(lt, []).append((name, i, frame))
    tmp = tmp_path_factory.mktemp("oracle")
    files: dict[int, Path] = {}
    for lt, pkts in groups.items():
        f = tmp / f"linktype-{lt}.pcap"
        with open(f, "wb") as out:
            out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, lt))
            for k, (_, _, frame) in enumerate(pkts):
                out.write(struct.pack("<IIII", k, 0, len(frame), len(frame)) + frame)
        files[lt] = f
    with ThreadPoolExecutor(max_workers=2) as pool:
        tshark = {lt: pool.submit(run_tshark, f) for lt, f in files.items()}
        counts = {name: pool.submit(capinfos_count, CORPUS / name) for name in data.ours}
        for lt, fut in tshark.items():
            lines = fut.result()
            assert len(lines) == len(groups[lt]), f"tshark printed {len(lines)} lines for {len(groups[lt])} frames"
            for (name, i, _), line in zip(groups[lt], lines, strict=True):
                # by index: a pcapng with several link types is split over several groups
                data.theirs.setdefault(name, [[]] * len(data.ours[name]))[i] = line
        data.counts = {name: fut.result() for name, fut in counts.items()}
    return data


def check_packet(ours: tuple[int, str, str, int, int], theirs: list[str]) -> str | None:
    """None when the packet agrees with tshark per the module doc; else what differs."""
    fam, src, dst, proto, ip_id = ours
    protocols, isrc, idst, iproto, iid, s6, d6, n6 = theirs
    layers = protocols.split(":")
    first = next((i for i, x in enumerate(layers) if x in ("ip", "ipv6")), None)
    if first is None:
        return None if fam == 0 else f"hoptrace says IPv{fam} {src}->{dst}, tshark sees no IP ({protocols})"
    kind = layers[first]
    before = set(layers[:first])
    tsrc, tdst = (isrc, idst) if kind == "ip" else (s6, d6)
    # A version-6 header behind an IPv4 ethertype/link type is shown "ip:ipv6" by tshark.
    if kind == "ip" and first + 1 < len(layers) and layers[first + 1] == "ipv6" and not isrc:
        kind, tsrc, tdst = "ipv6", s6, d6
    in_scope = before <= LINK_LAYERS and bool(tsrc) and bool(tdst)
    if not in_scope:
        return None if fam == 0 else f"out of scope ({protocols}) yet hoptrace says IPv{fam} {src}->{dst}"
    want_fam = 4 if kind == "ip" else 6
    got: tuple[Any, ...] = (fam, src, dst)
    want: tuple[Any, ...] = (want_fam, tsrc, tdst)
    if want_fam == 4:
        got += (proto, ip_id)
        want += (int(iproto), int(iid, 16))
    elif n6 and int(n6) not in IPV6_EXT:
        got += (proto,)
        want += (int(n6),)
    return None if got == want else f"hoptrace {got} != tshark {want} ({protocols})"


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", corpus_files())
def test_oracle(name: str, oracle: OracleData) -> None:
    if name not in oracle.ours:
        # Nothing to compare (a link type hoptrace does not read, or no packet at all):
        # hoptrace must then say so itself, never read nothing in silence.
        from tracer.sources.files import FileSource

        src = FileSource([str(CORPUS / name)])
        src.start()
        with pytest.raises(CaptureFileError):
            for _ in src.batches():
                pass
        return
    ours, theirs = oracle.ours[name], oracle.theirs[name]
    if not oracle.failed[name]:
        assert len(ours) == oracle.counts[name], f"{len(ours)} packets read, capinfos counts {oracle.counts[name]}"
    problems = [(i + 1, p) for i, (o, t) in enumerate(zip(ours, theirs, strict=True))
                if (p := check_packet(o, t)) is not None]  # fmt: skip
    assert problems == []


def test_oracle_rules_catch_a_wrong_decode() -> None:
    """The checker itself: a wrong address, protocol or IP ID, or an IP where tshark has none, fails."""
    t = ["eth:ethertype:ip:icmp", "10.0.0.1", "10.0.0.2", "1", "0x0010", "", "", ""]
    assert check_packet((4, "10.0.0.1", "10.0.0.2", 1, 16), t) is None
    assert check_packet((4, "10.0.0.9", "10.0.0.2", 1, 16), t) is not None
    assert check_packet((4, "10.0.0.1", "10.0.0.2", 6, 16), t) is not None
    assert check_packet((4, "10.0.0.1", "10.0.0.2", 1, 17), t) is not None
    assert check_packet((0, "", "", 0, 0), t) is not None
    assert check_packet((4, "10.0.0.1", "10.0.0.2", 1, 16), ["eth:ethertype:arp"] + [""] * 7) is not None
    mpls = ["eth:ethertype:mpls:ip:udp", "10.0.0.1", "10.0.0.2", "17", "0x0001", "", "", ""]
    assert check_packet((0, "", "", 0, 0), mpls) is None
    assert check_packet((4, "10.0.0.1", "10.0.0.2", 17, 1), mpls) is not None
    v6 = ["sll:ethertype:ipv6:ipv6.hopopts:icmpv6", "", "", "", "", "fd00::1", "fd00::2", "0"]
    assert check_packet((6, "fd00::1", "fd00::2", 58, 0), v6) is None
    assert check_packet((6, "fd00::1", "fd00::3", 58, 0), v6) is not None
