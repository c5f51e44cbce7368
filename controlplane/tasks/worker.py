"""The RQ worker class of `controlplane worker`.

RQ's worker listens on its own pub/sub channel (for `rq`'s "stop this job" commands) in a thread
that waits up to `sleep_time` for a message and checks its stop flag in between. RQ asks for 60
seconds; a worker asked to stop unsubscribes, then waits for that thread (redis-py 8's
PubSubWorkerThread.stop joins it, without a bound). When the thread reads the reply to the
unsubscribe before the flag is cleared, it waits for a subscription for the full 60 seconds: a
stop signal (Ctrl-C, a supervisor's SIGTERM) then took a minute to end the worker, often on a
loaded machine. Here the thread wakes every second.
"""
from __future__ import annotations

from rq import Worker

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
    """RQ's Worker (a work horse forked per job) that stops promptly."""
