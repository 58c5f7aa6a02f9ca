"""``hoptrace cleanup``: remove what an earlier, killed run left behind.

That is netfilter trace rules tagged ``hoptrace:<pid>`` whose process is gone
(in every network namespace), and a raw table such a run created. Rules of a
hoptrace that is still running, and anything not tagged, are left alone.
"""

from __future__ import annotations

import argparse
import os

from tracer.annotate.nftrace import cleanup_leftovers
from tracer.errors import PrivilegeError


def run(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise PrivilegeError("cleanup inspects every network namespace's netfilter rules: it needs root")
    removed = cleanup_leftovers()
    for what in removed:
        print(f"removed {what}")
    if not removed:
        print("nothing to clean up")
    return 0
