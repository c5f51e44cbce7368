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
