"""The docker engine: a real dockerd inside the lab's host namespace (work in progress)."""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

from tracer.errors import KernelFeatureMissing, LabError

if TYPE_CHECKING:
    from tracer.lab.lab import Lab


def check_installed() -> None:
    if shutil.which("dockerd") is None:
        raise KernelFeatureMissing("dockerd is not installed", "apt-get install docker.io")


def build(lab: Lab) -> None:
    raise LabError("the docker engine is not finished yet", "use --engine netns")


def teardown(lab: Lab) -> None:
    return None


def docker_host(lab: Lab) -> str:
    return f"unix://{lab.state.dir / 'docker.sock'}"


def container_status(lab: Lab) -> dict[str, str]:
    return {}
