"""gunicorn's hooks and settings for `controlplane api` (the command line gives the address, workers and
threads).

Each API worker imports and warms the model library (litellm, a few seconds; services/chat.py
`warm`) as it starts, before it serves: a user's first chat message then costs what any other
does (it took 3–4 s more with the import inside it, a model answering in milliseconds). Until a
worker is ready, requests wait in the listening socket's queue.
"""
from __future__ import annotations

import logging
import time

log = logging.getLogger("controlplane")

# gunicorn 25.1+ opens a control socket at one path per user (~/.gunicorn/gunicorn.ctl): every API
# process of that user on the machine (the lab's, a test's, a second instance) would take it from the
# one before. Nothing here uses gunicornc; signals manage the process.
control_socket_disable = True


# Seconds a worker may go without telling the master it lives before it is restarted (gunicorn's
# default is 30): a worker's start includes the model library's import, which took up to 10 s on a
# busy 2-core machine. A gthread worker tells it from its main loop, whatever its requests take.
timeout = 120


def post_worker_init(worker) -> None:
    from .services import chat
    start = time.monotonic()
    chat.warm()
    log.info("model library loaded and warmed in %.1f s", time.monotonic() - start)


def child_exit(server, worker) -> None:
    """An API worker ended: its live gauges leave the metrics (metrics.py, multiprocess mode)."""
    from . import metrics
    metrics.mark_process_dead(worker.pid)
