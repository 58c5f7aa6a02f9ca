"""The docker engine: Debian's dockerd inside the lab's host namespace.

dockerd is started with ``nsenter --net=`` only (``ip netns exec`` would remount
/sys and hide the cgroup mounts dockerd needs), with every path of its own —
data root, exec root (its managed containerd's state and socket live there),
pidfile, socket, config file — under the lab's state directory, so several
labs' dockerds coexist. Docker itself then creates docker0, the veths and the
NAT rules. ``--userland-proxy`` is the lab's (``Lab.userland_proxy``): on, as
Docker's default, a connection to the published port from a container or from
the host's 127.0.0.1 is accepted by ``docker-proxy`` in the host namespace, which
opens a second connection to web:80 from 172.17.0.1 (no DNAT on either leg);
off, Docker NATs it instead (hairpin DNAT, veths in hairpin mode). A connection
from outside (inet) is DNATed in both modes.

No registry is reachable: the image is ``docker import``ed from a tar holding
Debian's busybox-static and its applet links.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tracer.errors import KernelFeatureMissing, LabError
from tracer.lab import addresses as A
from tracer.lab.state import alive, progress, stop_procs

if TYPE_CHECKING:
    from tracer.lab.lab import Lab

IMAGE_REPO = "hoptrace-lab"
IMAGE_TAG = "busybox"
IMAGE = f"{IMAGE_REPO}:{IMAGE_TAG}"
API_WAIT_S = 60.0


def check_installed() -> None:
    if shutil.which("dockerd") is None:
        raise KernelFeatureMissing("dockerd is not installed", "apt-get install docker.io")
    if _busybox() is None:
        raise KernelFeatureMissing("busybox is not installed", "apt-get install busybox-static")


def socket_path(lab: Lab) -> Path:
    return lab.state.dir / "docker.sock"


def docker_host(lab: Lab) -> str:
    return f"unix://{socket_path(lab)}"


def client(lab: Lab, timeout: int = 30) -> Any:
    import docker  # the SDK pulls in requests: only load it for the docker engine

    return docker.DockerClient(base_url=docker_host(lab), timeout=timeout)


def dockerd_argv(lab: Lab) -> list[str]:
    d = lab.state.dir
    (d / "daemon.json").write_text("{}\n")  # never the machine's /etc/docker/daemon.json
    return [
        "dockerd",
        "--host", docker_host(lab),
        "--data-root", str(d / "docker"),
        "--exec-root", str(d / "exec"),
        "--pidfile", str(d / "dockerd.pid"),
        "--config-file", str(d / "daemon.json"),
        "--storage-driver", "vfs",
        "--containerd-namespace", lab.prefix,
        "--containerd-plugins-namespace", f"{lab.prefix}-plugins",
        "--bip", f"{A.GATEWAY}/{A.PREFIXLEN}",
        # The lab's containers under a cgroup of its own, so `down` can remove exactly those.
        "--cgroup-parent", lab.state.cgroup_name,
        f"--userland-proxy={'true' if lab.userland_proxy else 'false'}",
    ]


def build(lab: Lab) -> None:
    progress("starting dockerd in the lab's host namespace")
    proc = lab.spawn("host", dockerd_argv(lab), "dockerd")
    dc = _wait_for_api(lab, proc)
    try:
        progress("importing the busybox image")
        dc.api.import_image_from_data(_image_tar(), repository=IMAGE_REPO, tag=IMAGE_TAG)
        progress("starting containers web and client")
        # web first: Docker hands out addresses in order, so web is .2 and client .3.
        web = dc.containers.run(IMAGE, ["/bin/httpd", "-f", "-p", str(A.WEB_PORT), "-h", "/www"],
                                name="web", detach=True, ports={f"{A.WEB_PORT}/tcp": A.PUBLISHED_PORT})
        cli = dc.containers.run(IMAGE, ["/bin/sleep", "2147483647"], name="client", detach=True)
        lab.state.netns_dir.mkdir(parents=True, exist_ok=True)
        for node, container in (("web", web), ("client", cli)):
            container.reload()
            net = container.attrs["NetworkSettings"]
            if container.status != "running":
                raise LabError(f"container {node} is {container.status}: {container.logs()[-300:]!r}")
            if net["IPAddress"] != A.CONTAINER_IP[node]:
                raise LabError(f"container {node} got {net['IPAddress']}, expected {A.CONTAINER_IP[node]}")
            # A stable name for the container's namespace; tracer.commands.reach and tests look here.
            (lab.state.netns_dir / node).symlink_to(net["SandboxKey"])
    finally:
        dc.close()
    lab.wait_tcp("web", "127.0.0.1", A.WEB_PORT, "httpd in container web")


def teardown(lab: Lab) -> None:
    """Remove the containers through the API (fast), then stop dockerd by its pid."""
    dockerds = [p for p in lab.state.procs() if p.what == "dockerd" and alive(p)]
    if not dockerds:
        return
    if socket_path(lab).exists():
        import docker.errors

        try:
            dc = client(lab, timeout=15)
            try:
                for container in dc.containers.list(all=True):
                    container.remove(force=True)
            finally:
                dc.close()
        except (docker.errors.DockerException, OSError) as exc:
            # dockerd is stopped below anyway (and stops its containers); say why this was slower.
            progress(f"could not remove containers through the API ({exc}); stopping dockerd")
    # dockerd stops its managed containerd itself; SIGKILL only if it hangs.
    stop_procs(dockerds, timeout_s=20)


def container_status(lab: Lab) -> dict[str, str]:
    if not socket_path(lab).exists():
        return {}
    import docker.errors

    try:
        dc = client(lab, timeout=5)
        try:
            return {c.name: c.status for c in dc.containers.list(all=True)}
        finally:
            dc.close()
    except (docker.errors.DockerException, OSError) as exc:
        return {"(dockerd)": f"not answering: {exc}"}


def _wait_for_api(lab: Lab, proc: Any) -> Any:
    import docker.errors

    deadline = time.monotonic() + API_WAIT_S
    t0 = time.monotonic()
    last_note = t0
    while time.monotonic() < deadline:
        if not alive(proc):
            raise LabError(f"dockerd exited during start-up: {_log_tail(lab)}",
                           f"dockerd.log is kept in {lab.failed_logs_dir()}")
        if socket_path(lab).exists():
            try:
                dc = client(lab, timeout=5)
                dc.ping()
                progress(f"dockerd answers after {time.monotonic() - t0:.1f} s")
                return dc
            except (docker.errors.DockerException, OSError):
                pass
        if time.monotonic() - last_note > 2:
            progress(f"waiting for dockerd ({time.monotonic() - t0:.0f} s)")
            last_note = time.monotonic()
        time.sleep(0.1)
    raise LabError(f"dockerd did not answer within {API_WAIT_S:.0f} s: {_log_tail(lab)}",
                   f"dockerd.log is kept in {lab.failed_logs_dir()}")


def _log_tail(lab: Lab) -> str:
    try:
        lines = (lab.state.dir / "dockerd.log").read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    errors = [ln for ln in lines if "level=error" in ln or "level=fatal" in ln]
    if errors:
        return errors[-1][-300:]
    # A usage error prints a few plain lines ("unknown flag: ...", "See 'dockerd --help'.").
    return " / ".join(ln.strip() for ln in lines[-3:] if ln.strip())[-300:] or "(empty log)"


def _busybox() -> str | None:
    for path in ("/bin/busybox", "/usr/bin/busybox"):
        if Path(path).is_file():
            return path
    return shutil.which("busybox")


def _image_tar() -> bytes:
    """A root filesystem: /bin/busybox, a link per applet, /www/index.html, /tmp."""
    busybox = _busybox()
    if busybox is None:
        raise KernelFeatureMissing("busybox is not installed", "apt-get install busybox-static")
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin", "www", "tmp", "etc"):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        tar.add(busybox, arcname="bin/busybox")
        for applet in applets:
            if applet == "busybox" or "/" in applet:
                continue
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
        for name, text in (("www/index.html", A.WEB_BODY), ("etc/passwd", "root:x:0:0:root:/:/bin/sh\n")):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
