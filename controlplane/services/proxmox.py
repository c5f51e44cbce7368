"""Live VM state from Proxmox VE (proxmoxer), for `?refresh=true`, and reconciliation of one record.

The client is made once per process and settings (proxmoxer keeps and renews its ticket), so a
refresh costs one HTTP request to Proxmox.
"""
from __future__ import annotations

import functools
import logging
import threading

from proxmoxer import ProxmoxAPI
from proxmoxer.core import ResourceException

from ..config import Settings
from ..errors import InfrastructureError
from ..models import Desktop
from . import lifecycle
from .states import TRANSITIONAL, Status

log = logging.getLogger(__name__)
_lock = threading.Lock()

MISSING = "missing"


@functools.lru_cache(maxsize=4)
def _client(host, port, user, password, token_id, token_secret, verify_ssl, timeout):
    kwargs = dict(host=host, port=port, user=user, verify_ssl=verify_ssl, timeout=timeout)
    if token_id:
        if "!" in token_id:  # given as user@realm!name (the playbooks take both forms too)
            kwargs["user"], token_id = token_id.split("!", 1)
        kwargs.update(token_name=token_id, token_value=token_secret)
    else:
        kwargs.update(password=password)
    return ProxmoxAPI(**kwargs)


def client(settings: Settings) -> ProxmoxAPI:
    with _lock:  # the first login must not happen twice at once
        return _client(settings.proxmox_host, settings.proxmox_port, settings.proxmox_user,
                       settings.proxmox_password, settings.proxmox_token_id, settings.proxmox_token_secret,
                       settings.proxmox_verify_ssl, settings.proxmox_api_timeout)


def with_login(settings: Settings, call):
    """call(client) with the process's client; a refused ticket (401: revoked, or expired early)
    gets one fresh login and one more try."""
    try:
        return call(client(settings))
    except ResourceException as exc:
        if exc.status_code != 401:
            raise
    _client.cache_clear()
    return call(client(settings))


def vm_power_state(settings: Settings, node: str, vmid: int) -> str:
    """'running', 'stopped', ... as Proxmox reports it, or MISSING when the VM does not exist."""
    try:
        current = with_login(settings, lambda pve: pve.nodes(node).qemu(vmid).status.current.get())
    except ResourceException as exc:
        text = f"{exc.status_message} {exc.content}".lower()
        if exc.status_code in (404, 500) and ("does not exist" in text or "no such" in text):
            return MISSING
        raise InfrastructureError(f"Proxmox answered {exc.status_code} for VM {vmid}") from None
    except Exception as exc:  # connection refused, timeout, TLS, auth
        _client.cache_clear()  # a fresh login next time
        log.warning("proxmox status of VM %s failed: %s", vmid, type(exc).__name__)
        raise InfrastructureError("Could not reach Proxmox VE to refresh the desktop status") from None
    return str(current.get("status", "unknown"))


def cluster_vms(settings: Settings) -> list[dict]:
    """Every VM of the cluster as /cluster/resources lists it (templates too)."""
    try:
        return with_login(settings, lambda pve: pve.cluster.resources.get(type="vm"))
    except Exception:
        _client.cache_clear()  # a fresh login next time
        raise


def refresh(settings: Settings, desktop: Desktop) -> Desktop:
    """Read the VM's live state and reconcile a settled record with it.

    Transitional desktops belong to their job and are left alone.
    """
    if desktop.vmid is None or Status(desktop.status) in TRANSITIONAL | {Status.DELETED, Status.FAILED}:
        return desktop
    live = vm_power_state(settings, desktop.node or settings.proxmox_node, desktop.vmid)
    status = Status(desktop.status)
    if live == MISSING:
        lifecycle.set_status(desktop, Status.FAILED, f"VM {desktop.vmid} no longer exists in Proxmox VE",
                             "refresh", publish_to=settings.redis_url)
    elif status is Status.RUNNING and live == "stopped":
        lifecycle.set_status(desktop, Status.STOPPED, "VM was stopped outside the control plane", "refresh",
                             publish_to=settings.redis_url)
    elif status is Status.STOPPED and live == "running":
        message = "VM is running outside the control plane; start the desktop to reconnect"
        if desktop.status_message != message:
            lifecycle.set_status(desktop, Status.STOPPED, message, "refresh", publish_to=settings.redis_url)
    return desktop
