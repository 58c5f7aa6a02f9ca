"""Fuzz the core's untrusted-input parsers with cargo-fuzz (libFuzzer), each target for a bounded time.

Targets (crates/fuzz/fuzz_targets/): ``pcap`` and ``pcapng`` (the whole file
reader: chunks, blocks, options, comments, decode, labels, merge; every batch
checked for consistency), ``decode`` (one frame of any link type: no panic,
nothing read past the frame's end), ``comments`` (hoptrace's JSON packet
comments: the recorder's layout and the json.loads-compatible fallback), ``bpf``
(classic BPF programs and frames; unseeded).
Corpora are seeded from fixtures/ and the tcpdump corpus; findings land in
crates/fuzz/artifacts/<target>/ (both git-ignored). Installs cargo-fuzz from
crates.io when it is missing; needs the nightly toolchain. Not part of make test.

    .venv/bin/python bench/fuzz_core.py                 # 60 s per target
    .venv/bin/python bench/fuzz_core.py --seconds 300 pcapng
"""

from __future__ import annotations

import argparse
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FUZZ = ROOT / "crates" / "fuzz"
TARGETS = ["pcap", "pcapng", "decode", "comments", "bpf"]  # bpf: unseeded (libFuzzer starts empty)
PCAP_MAGICS = {b"\xd4\xc3\xb2\xa1": 0, b"\xa1\xb2\xc3\xd4": 1, b"\x4d\x3c\xb2\xa1": 2, b"\xa1\xb2\x3c\x4d": 3}


def corpus_dir() -> Path:
    sys.path.insert(0, str(ROOT))
    from tests.conftest import CORPUS

    return CORPUS


def ensure_cargo_fuzz() -> None:
    if subprocess.run(["cargo", "fuzz", "--version"], capture_output=True).returncode == 0:
        return
    print("installing cargo-fuzz (cargo install cargo-fuzz) ...", flush=True)
    subprocess.run(["cargo", "install", "cargo-fuzz"], check=True)


def seed(target: str) -> Path:
    """crates/fuzz/corpus/<target>, seeded from fixtures and the corpus (inputs as each target reads them)."""
    out = FUZZ / "corpus" / target
    out.mkdir(parents=True, exist_ok=True)
    files = sorted((ROOT / "fixtures").glob("*.pcapng")) + sorted(corpus_dir().glob("*.pcap*"))
    n = 0
    for f in files:
        data = f.read_bytes()
        if len(data) > 200_000:
            continue
        if target == "pcapng" and data[:4] == b"\x0a\x0d\x0d\x0a":
            item = bytes([0x10]) + data[4:]  # selector: real buffer sizes, no merge
        elif target == "pcap" and data[:4] in PCAP_MAGICS:
            item = bytes([0x10 | PCAP_MAGICS[data[:4]]]) + data[4:]
        elif target == "decode" and data[:4] in PCAP_MAGICS:
            # The first few frames of a classic pcap, each with its link type's selector.
            big = data[:4] in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d")
            e = ">" if big else "<"
            lts = [1, 12, 14, 101, 113, 228, 229, 276, 0, 127]
            lt = struct.unpack_from(e + "I", data, 20)[0] & 0x03FFFFFF if len(data) >= 24 else 1
            pos, k = 24, 0
            while pos + 16 <= len(data) and k < 4:
                caplen = struct.unpack_from(e + "I", data, pos + 8)[0]
                frame = data[pos + 16 : pos + 16 + min(caplen, 512)]
                if lt in lts:
                    (out / f"{f.stem}-{k}").write_bytes(bytes([lts.index(lt)]) + frame)
                    n += 1
                pos += 16 + caplen
                k += 1
            continue
        elif target == "comments" and data[:4] == b"\x0a\x0d\x0d\x0a":
            comments = re.findall(rb'\{"v":[^\x00]{10,400}?\}', data)[:8]
            if not comments:
                continue
            item = b"\xff".join(comments)
        else:
            continue
        (out / f.name).write_bytes(item)
        n += 1
    print(f"{target}: {n} seeds in {out}", flush=True)
    return out


def run(target: str, seconds: int) -> dict[str, object]:
    corpus = seed(target)
    artifacts = FUZZ / "artifacts" / target
    before = set(artifacts.glob("*")) if artifacts.exists() else set()
    cmd = ["cargo", "+nightly", "fuzz", "run", "--fuzz-dir", str(FUZZ), target, str(corpus), "--",
           f"-max_total_time={seconds}", "-max_len=65536", "-rss_limit_mb=1024", "-timeout=10", "-print_final_stats=1"]  # fmt: skip
    print("$ " + " ".join(cmd), flush=True)
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    log = p.stdout + p.stderr
    (FUZZ / "artifacts").mkdir(exist_ok=True)
    (FUZZ / "artifacts" / f"{target}.log").write_text(log)
    execs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", log)
    speed = re.findall(r"stat::average_exec_per_sec:\s*(\d+)", log)
    cov = re.findall(r"cov: (\d+)", log)
    after = set(artifacts.glob("*")) if artifacts.exists() else set()
    found = sorted(str(a.relative_to(ROOT)) for a in after - before)
    return {"target": target, "executions": int(execs[-1]) if execs else 0, "exec_s": int(speed[-1]) if speed else 0,
            "cov": int(cov[-1]) if cov else 0, "status": p.returncode, "findings": found}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("targets", nargs="*", help=f"some of {', '.join(TARGETS)} (default: all)")
    ap.add_argument("--seconds", type=int, default=60, help="per target (libFuzzer -max_total_time)")
    a = ap.parse_args(argv)
    unknown = [t for t in a.targets if t not in TARGETS]
    if unknown:
        ap.error(f"unknown target(s) {', '.join(unknown)}; targets: {', '.join(TARGETS)}")
    targets = a.targets or TARGETS
    if shutil.which("cargo") is None:
        print("needs cargo (rustup)", file=sys.stderr)
        return 2
    ensure_cargo_fuzz()
    results = [run(t, a.seconds) for t in targets]
    print(f"\n{'target':10} {'executions':>11} {'exec/s':>8} {'cov':>6} {'status':>6}  findings")
    for r in results:
        found = ", ".join(r["findings"]) or "none"  # type: ignore[arg-type]
        print(f"{r['target']:10} {r['executions']:>11} {r['exec_s']:>8} {r['cov']:>6} {r['status']:>6}  {found}")
    return 1 if any(r["findings"] or r["status"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
