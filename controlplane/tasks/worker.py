"""The RQ worker class of `controlplane worker`.

RQ's worker listens on its own pub/sub channel (for `rq`'s "stop this job" commands) in a thread
that waits up to `sleep_time` for a message and checks its stop flag in between. RQ asks for 60
seconds; a worker asked to stop unsubscribes, then waits for that thread (redis-py 8's
PubSubWorkerThread.stop joins it, without a bound). When the thread reads the reply to the
unsubscribe before the flag is cleared, it waits for a subscription for the full 60 seconds: a
stop signal (Ctrl-C, a supervisor's SIGTERM) then took a minute to end the worker, often on a
loaded machine. Here the thread wakes every second.

A worker killed outright (SIGKILL, the OOM killer, a power cut of its container) leaves its
registration in Redis for up to RQ's worker TTL (7 minutes), and RQ refuses to start another worker
under that name: a supervisor restarting it under the same name (the lab, a systemd unit per
worker) was refused again and again while one worker did all the work. A registration whose
process is gone from this host is the dead worker's: it is marked dead and the new worker starts.
"""
from __future__ import annotations

import logging

from rq import Worker

from ..processes import alive

log = logging.getLogger(__name__)

PUBSUB_WAKE_SECONDS = 1.0


class PromptStop:
    """A mixin for RQ's worker classes: the pub/sub thread notices a stop within PUBSUB_WAKE_SECONDS."""

    def subscribe(self):
        self.log.info('Worker %s: subscribing to channel %s', self.name, self.pubsub_channel_name)
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(
            sleep_time=PUBSUB_WAKE_SECONDS, daemon=True, exception_handler=self._pubsub_exception_handler)


class ControlPlaneWorker(PromptStop, Worker):
    """RQ's Worker (a work horse forked per job) that stops promptly, and takes over its name from
    a worker of this host that died without saying so."""

    def register_birth(self):
        fields = self.connection.hmget(self.key, "hostname", "pid", "death")
        hostname, pid, death = (value.decode() if isinstance(value, bytes) else value for value in fields)
        if hostname is not None and death is None and hostname == self.hostname and pid and not alive(int(pid)):
            log.warning("worker %s: the worker of that name before it (pid %s) died without unregistering; "
                        "taking its name", self.name, pid)
            dead = Worker.find_by_key(self.key, connection=self.connection)
            if dead is not None:
                dead.register_death()
        super().register_birth()

