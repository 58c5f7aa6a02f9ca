"""A kernel header tree for bcc, without writing into /lib/modules.

bcc refuses to compile without a header tree (it includes a few uapi and
config headers even for programs that read no kernel structs). When
``/lib/modules/$(uname -r)/build`` is absent, Debian's split packages
``linux-headers-<v>-common`` (sources) and ``linux-headers-<v>-amd64``
(generated files, .config) are merged into one tree of symlinks in a cache
directory and bcc is pointed at it with ``BCC_KERNEL_SOURCE``. The headers do
not match the running kernel: the programs never use their struct layouts
(offsets come from BTF, see probes/btf.py), only uapi types and config macros.
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path

from tracer.errors import KernelFeatureMissing

USR_SRC = Path("/usr/src")
MARKER = ".hoptrace-merged"
_FIX = "apt-get install linux-headers-amd64 (any Debian kernel's headers will do)"


@dataclass(frozen=True, slots=True)
class HeaderTree:
    path: Path
    origin: str  # "env" (BCC_KERNEL_SOURCE already set), "modules" (/lib/modules/<r>/build), "merged"


def cache_root() -> Path:
    """/var/cache/hoptrace when writable (root), else ~/.cache/hoptrace."""
    for base in (Path("/var/cache/hoptrace"), Path.home() / ".cache" / "hoptrace"):
        try:
            base.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(base, os.W_OK):
            return base
    raise KernelFeatureMissing("no writable cache directory", "make /var/cache/hoptrace writable")


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", name))


def _debian_pairs() -> list[tuple[Path, Path]]:
    """(common, arch) header directory pairs, newest first."""
    pairs = []
    for arch_dir in USR_SRC.glob("linux-headers-*-amd64"):
        common = USR_SRC / (arch_dir.name[: -len("-amd64")] + "-common")
        if common.is_dir() and (arch_dir / "include" / "generated").is_dir():
            pairs.append((common, arch_dir))
    pairs.sort(key=lambda p: _version_key(p[1].name), reverse=True)
    return pairs


def _link(dst: Path, src: Path) -> None:
    if dst.is_symlink() or dst.exists():
        return
    dst.symlink_to(src)


def _merge(common: Path, arch_dir: Path, into: Path) -> None:
    """A symlink farm: common's tree with arch's generated headers and .config spliced in.

    Only the directories bcc's include path names are merged
    (include/, arch/x86/include/); everything else links to common.
    """
    tmp = into.with_name(into.name + f".tmp{os.getpid()}")
    (tmp / "include").mkdir(parents=True, exist_ok=True)
    (tmp / "arch" / "x86" / "include").mkdir(parents=True, exist_ok=True)
    for entry in common.iterdir():
        if entry.name not in ("include", "arch"):
            _link(tmp / entry.name, entry)
    for entry in arch_dir.iterdir():
        if entry.name not in ("include", "arch", "scripts", "tools"):
            _link(tmp / entry.name, entry)
    for entry in (common / "include").iterdir():
        _link(tmp / "include" / entry.name, entry)
    for entry in (arch_dir / "include").iterdir():
        _link(tmp / "include" / entry.name, entry)
    for entry in (common / "arch" / "x86").iterdir():
        if entry.name != "include":
            _link(tmp / "arch" / "x86" / entry.name, entry)
    for entry in (common / "arch" / "x86" / "include").iterdir():
        _link(tmp / "arch" / "x86" / "include" / entry.name, entry)
    for entry in (arch_dir / "arch" / "x86" / "include").iterdir():
        _link(tmp / "arch" / "x86" / "include" / entry.name, entry)
    (tmp / MARKER).write_text(f"{common}\n{arch_dir}\n")
    # rename is atomic: a concurrent hoptrace sees either no tree or a whole one.
    try:
        tmp.rename(into)
    except OSError:
        if not into.is_dir():
            raise
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def _is_dir(p: Path) -> bool:
    try:
        return p.is_dir()
    except OSError:  # EACCES: not a tree this user can use
        return False


def find_tree() -> HeaderTree:
    """The tree bcc will use; builds the merged one if needed (cheap: a few hundred symlinks)."""
    env = os.environ.get("BCC_KERNEL_SOURCE")
    if env and _is_dir(Path(env, "include")):
        # ours (set by ensure_bcc_env earlier in this process) or the user's
        return HeaderTree(Path(env), "merged" if Path(env, MARKER).exists() else "env")
    build = Path("/lib/modules") / platform.release() / "build"
    if (build / "include").is_dir():
        return HeaderTree(build, "modules")
    pairs = _debian_pairs()
    if not pairs:
        raise KernelFeatureMissing(
            f"no kernel header tree: /lib/modules/{platform.release()}/build is absent "
            "and no Debian linux-headers-*-common/-amd64 pair is in /usr/src",
            _FIX,
        )
    common, arch_dir = pairs[0]
    into = cache_root() / "headers" / arch_dir.name
    if not (into / MARKER).exists():
        if (into / "include" / "generated").exists():
            (into / MARKER).write_text(f"{common}\n{arch_dir}\n")  # a tree from before the marker
        else:
            into.parent.mkdir(parents=True, exist_ok=True)
            _merge(common, arch_dir, into)
    return HeaderTree(into, "merged")


def ensure_bcc_env() -> HeaderTree:
    """Point bcc at a header tree (sets BCC_KERNEL_SOURCE unless /lib/modules has one)."""
    tree = find_tree()
    if tree.origin == "merged":
        os.environ["BCC_KERNEL_SOURCE"] = str(tree.path)
    return tree
