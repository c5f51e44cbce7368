"""An asyncio loop on a background thread, as the lab runs its services, for tests that start a
stand-in (Guacamole, the echo model) on their own."""
from __future__ import annotations

import asyncio
import threading

TIMEOUT = 10


class LoopThread:
    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = TIMEOUT):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(TIMEOUT)
        self.loop.close()


def run_apart(coro, timeout: float = 60):
    """asyncio.run(coro) on a thread of its own: works even where this thread already runs a loop (the
    browser tests' Playwright keeps one running in the main thread of the xdist worker that has them)."""
    result: dict = {}

    def target():
        try:
            result["value"] = asyncio.run(coro)
        except BaseException as exc:  # handed to the caller
            result["error"] = exc
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"the coroutine did not end within {timeout}s")
    if "error" in result:
        raise result["error"]
    return result["value"]
