"""A real fakepve cluster over HTTPS on a free port, for the tests of what the control plane asks Proxmox."""
from __future__ import annotations

import contextlib

from controlplane.lab.proxmox import LabProxmox

from ..conftest import free_port
from ..loop import LoopThread


@contextlib.contextmanager
def fakepve_cluster(state_dir, extra_nodes: tuple[str, ...]):
    """fakepve's pve1 plus `extra_nodes`, started in a loop thread: yields (loop, LabProxmox)."""
    loop = LoopThread()
    proxmox = LabProxmox(state_dir / "proxmox.json", state_dir / "certs", host="127.0.0.1", port=free_port(),
                         time_scale=0.01, agent_delay=0.1)
    loop.run(proxmox.start())

    async def add_nodes():
        for node in extra_nodes:
            proxmox.pve.add_node(node)
    loop.run(add_nodes())
    try:
        yield loop, proxmox
    finally:
        loop.run(proxmox.stop())
        loop.close()
