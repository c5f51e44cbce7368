"""gunicorn's hooks for `controlplane api` (the command line gives the address, workers and threads).

Each API worker imports the model library (litellm, a few seconds) in the background as it starts,
so a user's first chat message on that worker does not wait for the import (it took 3–4 s with a
model answering in milliseconds). Requests are served meanwhile; one that needs the library before
it is in waits for the import already running rather than starting its own.
"""
from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger("controlplane")

# gunicorn 25.1+ opens a control socket at one path per user (~/.gunicorn/gunicorn.ctl): every API
# process of that user on the machine (the lab's, a test's, a second instance) would take it from the
# one before. Nothing here uses gunicornc; signals manage the process.
control_socket_disable = True


def _preload() -> None:
    from .services import chat
    start = time.monotonic()
    chat.preload()
    log.info("model library loaded in %.1f s", time.monotonic() - start)


def post_worker_init(worker) -> threading.Thread:
    thread = threading.Thread(target=_preload, name="preload-model-library", daemon=True)
    thread.start()
    return thread  # for the test; gunicorn ignores it
