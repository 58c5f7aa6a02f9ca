"""The docker engine: a real dockerd in the lab's host namespace; every scenario, and the
netns engine's hand-written rules checked against what Docker really writes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tracer.lab import NODES, SCENARIOS, Lab
from tracer.lab import addresses as A
from tracer.lab.netns_builder import RULES
from tracer.lab.scenarios import PUBLISHED_PORT_SCENARIOS

pytestmark = [pytest.mark.root, pytest.mark.lab, pytest.mark.slow]


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_scenario(lab_docker: Lab, scenario: str) -> None:
    """Docker's default, --userland-proxy=true."""
    assert lab_docker.userland_proxy
    result = lab_docker.run(scenario)
    assert (result.ok, scenario) == (True, scenario), result.detail


@pytest.mark.parametrize("scenario", PUBLISHED_PORT_SCENARIOS)
def test_published_port_scenario_without_the_proxy(lab_docker_noproxy: Lab, scenario: str) -> None:
    assert not lab_docker_noproxy.userland_proxy
    result = lab_docker_noproxy.run(scenario)
    assert (result.ok, scenario) == (True, scenario), result.detail


def _docker_proxies(lab: Lab) -> list[str]:
    """The command lines of docker-proxy processes in the lab's host namespace."""
    host = lab.netns_inode("host")
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            argv = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")
            if os.stat(f"/proc/{d}/ns/net").st_ino != host:
                continue
        except OSError:
            continue
        if argv and argv[0].endswith(b"docker-proxy"):
            found.append(b" ".join(argv[1:]).decode().strip())
    return sorted(found)


def test_userland_proxy_modes_are_dockerds(lab_docker: Lab, lab_docker_noproxy: Lab) -> None:
    """On: docker-proxy listens for 8080 (IPv4 and IPv6) and the DNAT skips docker0; off: none,
    and the DNAT takes every interface (hairpin)."""
    assert _docker_proxies(lab_docker) == [
        f"-proto tcp -host-ip {ip} -host-port {A.PUBLISHED_PORT} -container-ip {A.WEB} "
        f"-container-port {A.WEB_PORT}" for ip in ("0.0.0.0", "::")]
    assert _docker_proxies(lab_docker_noproxy) == []
    on = lab_docker.iptables("host", "-t", "nat", "-S", "DOCKER")
    off = lab_docker_noproxy.iptables("host", "-t", "nat", "-S", "DOCKER")
    assert "-A DOCKER -i docker0 -j RETURN" in on and f"! -i docker0 -p tcp -m tcp --dport {A.PUBLISHED_PORT}" in on
    assert "-i docker0" not in off
    st = lab_docker.status()
    assert (st.userland_proxy, lab_docker_noproxy.status().userland_proxy) == (True, False)
    assert Lab.existing(lab_docker.prefix).userland_proxy
    assert not Lab.existing(lab_docker_noproxy.prefix).userland_proxy


def _rules(save: str) -> list[str]:
    """iptables-save output as a sorted list of (table, rule/chain policy) lines, counters dropped."""
    table, out = "", []
    for line in save.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(("-A", ":")):
            out.append(f"{table} {line.split(' [')[0]}")
    return sorted(out)


def test_netns_engine_writes_exactly_dockers_rules(lab_docker_noproxy: Lab) -> None:
    """The netns engine has no docker-proxy: it builds what --userland-proxy=false writes."""
    save = lab_docker_noproxy.exec("host", ["iptables-save"])
    assert save.returncode == 0, save.stderr
    assert _rules(save.stdout) == _rules(RULES)


def test_containers_are_real_and_named(lab_docker: Lab) -> None:
    st = lab_docker.status()
    assert (st.engine, st.containers) == ("docker", {"web": "running", "client": "running"})
    assert st.docker_host == f"unix://{lab_docker.state.dir}/docker.sock"
    import docker

    dc = docker.DockerClient(base_url=st.docker_host)
    try:
        web = dc.containers.get("web")
        assert web.attrs["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"] == str(A.PUBLISHED_PORT)
        pid = web.attrs["State"]["Pid"]
    finally:
        dc.close()
    # The namespace the lab names "web" is the container's own.
    assert os.stat(f"/proc/{pid}/ns/net").st_ino == lab_docker.netns_inode("web")
    nodes = json.loads((lab_docker.state.dir / "nodes.json").read_text())
    assert sorted(nodes.values()) == sorted(NODES)
    assert nodes[str(lab_docker.netns_inode("web"))] == "web"


def test_docker_made_docker0_in_the_lab_not_in_root(lab_docker: Lab) -> None:
    links = json.loads(lab_docker.exec("host", ["ip", "-j", "-d", "link", "show", "docker0"]).stdout)
    assert links[0]["linkinfo"]["info_kind"] == "bridge"
    root = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    assert A.HOST_UPLINK not in root and A.INET_UPLINK not in root


def test_status_cli_prints_docker_host(lab_docker: Lab) -> None:
    from tests.conftest import run_hoptrace

    r = run_hoptrace("lab", "status", env={**os.environ, "HOPTRACE_LAB_PREFIX": lab_docker.prefix})
    assert r.returncode == 0, r.stderr
    assert f"export DOCKER_HOST=unix://{lab_docker.state.dir}/docker.sock" in r.stdout
    assert "container  web: running" in r.stdout
    assert "(docker engine, userland proxy on)" in r.stdout


def test_up_after_a_crashed_docker_lab(fresh_lab_prefix: str) -> None:
    """dockerd SIGKILLed (containers, shims, containerd and mounts left behind): `up` cleans and rebuilds."""
    import signal

    lab = Lab("docker", fresh_lab_prefix)
    lab.up()
    dockerd = next(p for p in lab.state.procs() if p.what == "dockerd")
    os.kill(dockerd.pid, signal.SIGKILL)
    assert lab.state.mounts(), "a killed dockerd leaves its mounts"
    assert len(lab.state.procs_in_netns()) >= 3  # containerd, shims, container processes
    lab.up()
    assert lab.run("published-port").ok
    assert lab.status().containers == {"web": "running", "client": "running"}
    lab.down()
    assert lab.state.leftovers() == []


def test_a_failing_docker_up_stops_its_dockerd(fresh_lab_prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from tracer.errors import LabError
    from tracer.lab import docker_builder

    def no_image() -> bytes:
        raise LabError("injected failure after dockerd started")

    monkeypatch.setattr(docker_builder, "_image_tar", no_image)
    lab = Lab("docker", fresh_lab_prefix)
    with pytest.raises(LabError, match="injected failure"):
        lab.up()
    assert lab.state.leftovers() == []


def test_dockerd_that_will_not_start_is_one_clear_error(fresh_lab_prefix: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from tracer.errors import LabError
    from tracer.lab import docker_builder

    real_argv = docker_builder.dockerd_argv
    monkeypatch.setattr(docker_builder, "dockerd_argv", lambda lab: [*real_argv(lab), "--no-such-flag"])
    lab = Lab("docker", fresh_lab_prefix)
    try:
        with pytest.raises(LabError, match="dockerd exited during start-up") as err:
            lab.up()
        assert "no-such-flag" in str(err.value)
        assert (lab.failed_logs_dir() / "dockerd.log").read_text()
        assert lab.state.leftovers() == []
    finally:
        shutil.rmtree(lab.failed_logs_dir(), ignore_errors=True)
