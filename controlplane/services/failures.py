"""What kind of failure a failed playbook run was, and whether the job should run it again.

The Desktop API contract's retry guidance, applied by the worker on the caller's behalf:
- INFRASTRUCTURE: Proxmox or Guacamole could not do it *now* (no quorum, a locked VM or config
  file, an offline node, a refused, dropped or timed-out connection, a 5xx from a proxy or from
  Guacamole, a rejected ticket). Run again after 1, 2, 4, 8 s (`retry_backoff`).
- PROVISIONING: a create failed at one of its steps for another reason (a clone or start task
  that ended in an error, a guest agent that never reported an address). The create's rescue has
  removed what it made, so it is run again from scratch, up to `provisioning_attempts` in all,
  `provisioning_retry_delay` seconds apart (the contract: 30 s, at most 3 attempts).
- PERMANENT: running it again cannot help (bad parameters, no permission, a missing template, a
  guest that ignores the shutdown request — the escalation there is a forced stop — or a
  playbook that ran out of time). The operation fails at once.

The messages come from proxmox_kvm (proxmoxer: "500 Internal Server Error: <PVE's reason>"),
from ansible.builtin.uri ("Status code was 503 and not [200]: ...", "Status code was -1 ...:
Request failed: <urlopen error [Errno 111] Connection refused>") and from our own roles. PVE
answers 500 for permanent and passing errors alike, so its reason text decides.
"""
from __future__ import annotations

import enum
import re

from ..states import Operation


class FailureClass(str, enum.Enum):
    INFRASTRUCTURE = "infrastructure"
    PROVISIONING = "provisioning"
    PERMANENT = "permanent"


# Checked first: a failure that matches one of these is never retried.
_PERMANENT = [re.compile(p, re.I) for p in (
    r"parameter verification failed",
    r"permission check failed",
    r"\bnot implemented\b",
    r"authentication failure",  # wrong credentials, not a passing fault
    r"waiting for (stopping|shutting)",  # proxmox_kvm: the guest ignored the shutdown request
    r"quit/powerdown failed",
    r"did not shut down",
    r"before its timeout",  # the playbook ran out of time: the job's budget is spent
    r"is no longer defined",
    r"\(http 40[13]\)",  # Guacamole refused our credentials
    r"has no data source",
)]

# Then these: a step that failed on its own terms, whatever answer it quotes (the guest agent's
# "last answer" is often a 500 "QEMU guest agent is not running"): not an infrastructure error.
_STEP = [re.compile(p, re.I) for p in (
    r"guest agent reported (no ipv4|not the static)",
)]

# Then these: Proxmox or Guacamole could not do it now.
_INFRASTRUCTURE = [re.compile(p, re.I) for p in (
    r"no quorum", r"cluster not ready",
    r"can't lock file", r"\bis locked\b", r"\blocked \((backup|clone|snapshot|migrate|rollback|create|"
    r"destroyed|suspending|suspended|copy|disk)\)",
    r"checksum mismatch",
    r"no route to host", r"\b59[56]\b", r"hostname lookup .* failed",
    r"invalid pve ticket", r"invalid csrf",
    r"connection (refused|reset|aborted)", r"remote ?disconnected", r"remote end closed", r"broken pipe",
    r"timed out", r"read timeout", r"max retries exceeded", r"temporar(y|ily) (failure|unavailable)",
    r"service unavailable", r"bad gateway", r"gateway time-?out",
    r"status code was (-1|5\d\d)\b", r"http error 5\d\d", r"\(http (-1|5\d\d)\)", r"\b50[234]\b",
    r"guacamole .*(unavailable|did not answer|is down)",
)]


def classify(operation: Operation | str, message: str | None, *, from_step: bool) -> FailureClass:
    """The class of a failed run. `from_step`: the playbook's rescue reported the failed step (set_stats
    failed_step, tasks/engine.py failed_step) after removing what it had made."""
    text = message or ""
    if any(p.search(text) for p in _PERMANENT):
        return FailureClass.PERMANENT
    if not any(p.search(text) for p in _STEP) and any(p.search(text) for p in _INFRASTRUCTURE):
        return FailureClass.INFRASTRUCTURE
    if Operation(operation) is Operation.CREATE and from_step:
        return FailureClass.PROVISIONING
    return FailureClass.PERMANENT


class RetryPlan:
    """Counts one job's retries and says how long to wait before the next run, or None to stop."""

    def __init__(self, backoff: tuple[float, ...], provisioning_attempts: int, provisioning_delay: float):
        self.backoff = backoff
        self.provisioning_attempts = max(1, provisioning_attempts)
        self.provisioning_delay = provisioning_delay
        self.infrastructure_retries = 0
        self.provisioning_retries = 0

    @property
    def runs(self) -> int:
        return 1 + self.infrastructure_retries + self.provisioning_retries

    def state(self) -> dict:
        """The retries counted so far, for the job that makes the next run (its meta)."""
        return {"infrastructure": self.infrastructure_retries, "provisioning": self.provisioning_retries}

    def resume(self, state: dict | None) -> "RetryPlan":
        """Go on counting from `state` (what state() gave the job before)."""
        state = state or {}
        self.infrastructure_retries = int(state.get("infrastructure", 0))
        self.provisioning_retries = int(state.get("provisioning", 0))
        return self

    def next_delay(self, failure: FailureClass) -> float | None:
        if failure is FailureClass.INFRASTRUCTURE and self.infrastructure_retries < len(self.backoff):
            delay = self.backoff[self.infrastructure_retries]
            self.infrastructure_retries += 1
            return delay
        if failure is FailureClass.PROVISIONING and self.provisioning_retries + 1 < self.provisioning_attempts:
            self.provisioning_retries += 1
            return self.provisioning_delay
        return None

    def describe(self, failure: FailureClass) -> str:
        """The retry just planned, for the status message."""
        if failure is FailureClass.INFRASTRUCTURE:
            return f"retry {self.infrastructure_retries} of {len(self.backoff)}"
        return f"attempt {self.provisioning_retries + 1} of {self.provisioning_attempts}"
