"""Serving the lab's small aiohttp stand-ins (Guacamole, the echo model)."""
from __future__ import annotations

from aiohttp import web


async def serve(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start `app` on host:port (0: a free port); return its runner and the port it listens on.
    Nothing is left half-started if the port cannot be bound."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, runner.addresses[0][1] if port == 0 else port


def base_url(host: str, port: int) -> str:
    """http://host:port for a listening address (a wildcard address as its loopback, IPv6 bracketed)."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def take_fault(faults: list[dict], matches) -> dict | None:
    """The first injected fault `matches(fault)` accepts, counting down its `times` (None: for ever;
    gone once used up). The caller holds the lock of `faults`."""
    for fault in faults:
        if not matches(fault):
            continue
        if fault["times"] is not None:
            fault["times"] -= 1
            if fault["times"] <= 0:
                faults.remove(fault)
        return fault
    return None
