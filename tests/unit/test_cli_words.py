"""The filter as words and tcpdump's short flags, as a tcpdump user types them.

Parsed with the real parser, and run with the real executable over the lab's fixtures
(replay, report, live -r); live's forms against the kernel are in tests/probes/test_live_words.py.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from tests.conftest import FIXTURES, HOPTRACE, ROOT
from tracer.cli import parse_args
from tracer.errors import UsageError

PING = str(FIXTURES / "internet-ping.pcapng")
BLOCKED = str(FIXTURES / "blocked.pcapng")


def hoptrace(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HOPTRACE, *args], capture_output=True, text=True, timeout=120, cwd=ROOT, **kw)


def ndjson(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


# ------------------------------------------------------------------ parsing


@pytest.mark.parametrize(("argv", "expr"), [
    (["live", "host", "1.2.3.4"], "host 1.2.3.4"),
    (["live", "-i", "host/docker0", "-w", "out.pcapng", "icmp", "and", "host", "198.51.100.8"],
     "icmp and host 198.51.100.8"),
    (["live", "icmp", "-c", "5", "and", "host", "x", "-n"], "icmp and host x"),  # options among words
    (["live", "--", "tcp", "port", "80"], "tcp port 80"),
    (["live", "--filter", "udp"], "udp"),
    (["live"], None),
    (["replay", "a.pcapng", "--", "icmp", "and", "host", "198.51.100.8"], "icmp and host 198.51.100.8"),
    (["replay", "a.pcapng", "b.pcapng", "--"], None),
    (["report", "a.pcapng", "--format", "json", "--", "icmp"], "icmp"),
    (["--debug", "replay", "a.pcapng", "--", "udp"], "udp"),
])  # fmt: skip
def test_trailing_words_are_one_filter_expression(argv: list[str], expr: str | None) -> None:
    assert parse_args(argv).filter == expr


def test_files_stay_files_before_the_separator() -> None:
    args = parse_args(["replay", "a.pcapng", "b.pcapng", "--", "icmp"])
    assert args.files == ["a.pcapng", "b.pcapng"]


@pytest.mark.parametrize("argv", [
    ["live", "--filter", "icmp", "udp"],
    ["replay", "--filter", "icmp", "a.pcapng", "--", "udp"],
    ["report", "a.pcapng", "--filter", "icmp", "--", "udp"],
])
def test_filter_given_both_ways_is_a_usage_error(argv: list[str]) -> None:
    with pytest.raises(UsageError, match="filter is given twice"):
        parse_args(argv)


@pytest.mark.parametrize(("short", "long"), [
    (["-i", "web/eth0"], ["--iface", "web/eth0"]),
    (["-w", "o.pcapng"], ["--record", "o.pcapng"]),
    (["-c", "3"], ["--count", "3"]),
    (["-s", "96"], ["--snaplen", "96"]),
])  # fmt: skip
def test_short_flags_mean_their_long_ones(short: list[str], long: list[str]) -> None:
    assert vars(parse_args(["live", *short])) == vars(parse_args(["live", *long]))


def test_short_flags_tcpdump_has() -> None:
    a = parse_args(["live", "-n", "-vv", "-r", "x.pcapng", "-s", "0"])
    assert (a.numeric, a.verbose, a.read, a.snaplen) == (True, 2, ["x.pcapng"], 0)
    assert parse_args(["replay", "-q", "x"]).quiet is True


@pytest.mark.parametrize("argv", [
    ["live", "-s", "13"], ["live", "-s", "65536"], ["live", "-s", "-1"], ["live", "-q", "-v"],
    ["live", "-c", "0"], ["live", "--color", "sometimes"], ["live", "--bogus", "icmp"],
])
def test_bad_short_flags_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2


def test_snaplen_zero_is_the_backends_maximum() -> None:
    from probes.skb_hops import max_snaplen
    from tracer.commands.live import SNAPLEN_MAX

    # a batch of 32 events must fit one per-CPU map value (32 KiB): 952 loads, 960 does not
    assert (max_snaplen(), SNAPLEN_MAX) == (952, 65535)
    assert parse_args(["live", "-s", "0"]).snaplen == 0
    assert parse_args(["live", "-s", "65535"]).snaplen == 65535
    assert parse_args(["live"]).snaplen == 128


# ------------------------------------------------------------------ running


def test_replay_words_after_separator_equal_filter_flag() -> None:
    words = hoptrace("replay", "--json", BLOCKED, PING, "--", "icmp", "and", "host", "198.51.100.8")
    flag = hoptrace("replay", "--json", "--filter", "icmp and host 198.51.100.8", BLOCKED, PING)
    assert words.returncode == flag.returncode == 0, words.stderr + flag.stderr
    paths = [r for r in ndjson(words.stdout) if r["type"] == "path"]
    assert paths and all(p["proto"] == "icmp" for p in paths)
    unfiltered = [r for r in ndjson(hoptrace("replay", "--json", BLOCKED, PING).stdout) if r["type"] == "path"]
    assert len(paths) < len(unfiltered)
    strip = [{k: v for k, v in r.items() if k != "elapsed_s"} for r in ndjson(words.stdout)]
    assert strip == [{k: v for k, v in r.items() if k != "elapsed_s"} for r in ndjson(flag.stdout)]


def test_replay_filter_words_without_separator_say_where_they_go() -> None:
    r = hoptrace("replay", PING, "host", "198.51.100.8")
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        "hoptrace: 'host' is not a capture file: a filter goes after --",
        f"hoptrace: hint: hoptrace replay {PING} -- host 198.51.100.8",
    ]


def test_replay_filter_both_ways_exit_2_one_line_and_hint() -> None:
    r = hoptrace("replay", "--filter", "icmp", PING, "--", "udp")
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 2 and "Traceback" not in r.stderr
    assert "given twice" in r.stderr and "after --" in r.stderr


@pytest.mark.parametrize("cmd", [["replay", PING, "--"], ["report", PING, "--"], ["live", "-r", PING]])
def test_a_bad_expression_as_words_is_libpcaps_message_exit_2(cmd: list[str]) -> None:
    r = hoptrace(*cmd, "host", "and", "and")
    assert r.returncode == 2, r.stderr
    assert "syntax error" in r.stderr and "Traceback" not in r.stderr


def test_report_takes_words_after_separator() -> None:
    r = hoptrace("report", "--format", "json", BLOCKED, PING, "--", "arp")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["paths"] > 0 and set(rep["by_proto"]) == {"arp"}


def test_live_r_is_replay() -> None:
    live = hoptrace("live", "-r", PING, "--json", "icmp")
    replay = hoptrace("replay", "--json", PING, "--", "icmp")
    assert live.returncode == replay.returncode == 0, live.stderr
    assert [r for r in ndjson(live.stdout) if r["type"] != "stats"] == \
        [r for r in ndjson(replay.stdout) if r["type"] != "stats"]


@pytest.mark.parametrize("flag", [["-i", "web/eth0"], ["-w", "x.pcapng"], ["--rules"], ["-s", "0"],
                                  ["--backend", "ebpf"], ["--duration", "3"]])
def test_live_r_refuses_what_only_live_means(flag: list[str]) -> None:
    r = hoptrace("live", "-r", PING, *flag)
    assert r.returncode == 2 and "-r replays a file" in r.stderr, r.stderr


def test_count_stops_after_n_paths() -> None:
    r = hoptrace("replay", "--json", "-c", "2", PING)
    assert [x["type"] for x in ndjson(r.stdout)].count("path") == 2


def test_n_shows_namespace_numbers_in_text_and_leaves_ndjson_alone() -> None:
    text = hoptrace("replay", "--no-tui", "-n", PING).stdout
    plain = hoptrace("replay", "--no-tui", PING).stdout
    assert "client/eth0" in plain and "client/eth0" not in text
    hops = [h for r in ndjson(hoptrace("replay", "--json", PING).stdout) if r["type"] == "path"
            for h in r["hops"]]
    client = next(h["netns"] for h in hops if h["node"] == "client")
    assert f"netns:{client}/eth0 tx" in text
    assert f"SNAT @ netns:{next(h['netns'] for h in hops if h['node'] == 'host')} POSTROUTING" in text
    as_json = [{k: v for k, v in r.items() if k != "elapsed_s"} for r in ndjson(
        hoptrace("replay", "--json", "-n", PING).stdout)]
    assert as_json == [{k: v for k, v in r.items() if k != "elapsed_s"} for r in ndjson(
        hoptrace("replay", "--json", PING).stdout)]


def test_q_is_one_line_per_path_and_v_says_more_per_hop() -> None:
    quiet = hoptrace("replay", "--no-tui", "-q", PING).stdout.splitlines()
    paths = [line for line in quiet if line.startswith("p")]
    assert len(paths) == 4 and all(" → " in line for line in paths)
    assert any(line.endswith("client/eth0 → host/veth50f2c31 → host/docker0 → host/eth0 SNAT → inet/eth0")
               for line in paths), quiet
    plain = hoptrace("replay", "--no-tui", PING).stdout
    verbose = hoptrace("replay", "--no-tui", "-v", PING).stdout
    very = hoptrace("replay", "--no-tui", "-vv", PING).stdout
    assert "ttl 64" not in plain and "ttl 64  id 47527  len 84" in verbose and " at " not in verbose
    assert "203.0.113.2 → 198.51.100.8  ttl 63" in verbose  # the address as rewritten, at that hop
    assert " at " in very and len(verbose.splitlines()) == len(plain.splitlines())


def test_colour_only_when_asked_or_on_a_terminal() -> None:
    esc = "\x1b["
    assert esc not in hoptrace("replay", "--no-tui", BLOCKED).stdout  # a pipe: auto is off
    assert esc not in hoptrace("replay", "--no-tui", "--color", "never", BLOCKED).stdout
    coloured = hoptrace("replay", "--no-tui", "--color", "always", BLOCKED,
                        env={"PATH": "/usr/bin:/bin", "NO_COLOR": "1"}).stdout  # the flag beats NO_COLOR
    assert "\x1b[33mincomplete\x1b[0m" in coloured
    assert esc not in hoptrace("replay", "--json", "--color", "always", BLOCKED).stdout


def test_colour_rule() -> None:
    import io

    from tracer.sinks.output import color_wanted

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    mp = pytest.MonkeyPatch()
    with mp.context() as m:
        m.delenv("NO_COLOR", raising=False)
        m.setenv("TERM", "xterm-256color")
        assert color_wanted("auto", Tty()) and not color_wanted("auto", io.StringIO())
        assert color_wanted("always", io.StringIO()) and not color_wanted("never", Tty())
        m.setenv("NO_COLOR", "1")
        assert not color_wanted("auto", Tty()) and color_wanted("always", Tty())
        m.setenv("NO_COLOR", "")  # set but empty: no-color.org says it does not count
        assert color_wanted("auto", Tty())
        m.setenv("TERM", "dumb")
        assert not color_wanted("auto", Tty())
