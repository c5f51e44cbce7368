"""Enqueueing desktop operations as RQ jobs, and what happens when a job dies."""
from __future__ import annotations

import logging
import uuid

from rq import Callback

from ..config import Settings
from .queue import get_queue
from .states import Operation

log = logging.getLogger(__name__)

FAILURE_TTL = 7 * 24 * 3600
RESULT_TTL = 24 * 3600


def new_job_id(desktop_id: int, operation: Operation) -> str:
    return f"desktop-{desktop_id}-{operation.value}-{uuid.uuid4().hex[:12]}"


def enqueue(settings: Settings, operation: Operation, desktop_id: int, job_id: str, force: bool = False):
    """Put the operation's job on the queue. Raises redis errors to the caller."""
    from ..tasks.desktops import on_job_failure, run_desktop_job
    queue = get_queue(settings.redis_url)
    return queue.enqueue(
        run_desktop_job, desktop_id, operation.value, force,
        job_id=job_id,
        # The playbook has its own timeout inside (ansible-runner); RQ's is the backstop.
        job_timeout=settings.job_timeout + 120,
        failure_ttl=FAILURE_TTL,
        result_ttl=RESULT_TTL,
        meta={"desktop_id": desktop_id, "operation": operation.value, "force": force},
        on_failure=Callback(on_job_failure),
        description=f"{operation.value} desktop {desktop_id}",
    )
