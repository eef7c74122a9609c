"""Two "hosts" on one kernel for scripts/bench_distributed.py: two network namespaces
joined by a veth pair, 10.99.0.1 and 10.99.0.2 (`make_netns`), removed at the end
(`Netns.remove`). Needs root (CAP_NET_ADMIN).
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
from dataclasses import dataclass

NETNS_IPS = ("10.99.0.1", "10.99.0.2")


@dataclass
class Netns:
    names: tuple[str, str]
    veths: tuple[str, str]
    removed: bool = False

    def remove(self) -> None:
        """Delete both namespaces (the veth pair goes with them) and a veth left behind."""
        if self.removed:
            return
        self.removed = True
        for name in self.names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        subprocess.run(["ip", "link", "del", self.veths[0]], capture_output=True)


def make_netns() -> tuple[Netns | None, str]:
    """Two namespaces joined by a veth pair, 10.99.0.1/24 and 10.99.0.2/24, or None and why."""
    if shutil.which("ip") is None:
        return None, "the `ip` command (iproute2) is not installed"
    tag = os.getpid() % 100_000
    netns = Netns((f"pomar-bench-a{tag}", f"pomar-bench-b{tag}"), (f"pbv{tag}a", f"pbv{tag}b"))
    atexit.register(netns.remove)
    (a, b), (va, vb) = netns.names, netns.veths
    steps = [
        ["ip", "netns", "add", a],
        ["ip", "netns", "add", b],
        ["ip", "link", "add", va, "type", "veth", "peer", "name", vb],
        ["ip", "link", "set", va, "netns", a],
        ["ip", "link", "set", vb, "netns", b],
        ["ip", "-n", a, "addr", "add", f"{NETNS_IPS[0]}/24", "dev", va],
        ["ip", "-n", b, "addr", "add", f"{NETNS_IPS[1]}/24", "dev", vb],
        ["ip", "-n", a, "link", "set", va, "up"],
        ["ip", "-n", b, "link", "set", vb, "up"],
        ["ip", "-n", a, "link", "set", "lo", "up"],
        ["ip", "-n", b, "link", "set", "lo", "up"],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode:
            netns.remove()
            why = done.stderr.strip() or f"exit {done.returncode}"
            return None, f"`{' '.join(step)}` failed: {why} (needs root / CAP_NET_ADMIN)"
    return netns, ""
