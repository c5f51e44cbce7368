"""Serving the lab's small aiohttp stand-ins (Guacamole, the echo model)."""
from __future__ import annotations

import asyncio
import logging
import signal
from typing import Callable

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


def run_in_foreground(make: Callable[[], object], banner: Callable[[object], str], log_level: str) -> None:
    """A stand-in's command line: make it (an object with async start() and stop()), start it, print
    `banner(it)`, and serve until SIGINT or SIGTERM."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def serve() -> None:
        standin = make()
        await standin.start()
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stopping.set)
            except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix
                pass
        print(banner(standin), flush=True)
        try:
            await stopping.wait()
        finally:
            await standin.stop()
    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
