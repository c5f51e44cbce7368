"""Live VM state from Proxmox VE (proxmoxer), for `?refresh=true`, and reconciliation of one record.

The client is made once per process and settings (proxmoxer keeps and renews its ticket), so a
refresh costs one HTTP request to Proxmox while the VM is on its recorded node; a VM that is not
there is looked for in the cluster (/cluster/resources), where a migration put it.
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
from ..states import TRANSITIONAL, Status
from . import lifecycle

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


def locate_vm(settings: Settings, vmid: int, node: str) -> tuple[str | None, str]:
    """(node, power state) of the VM: asked on `node` (where it was recorded) first; when it is not
    there (or that node does not answer), wherever /cluster/resources lists it (a migration, or HA,
    moved it). (None, MISSING) only when the cluster lists no such VM; "unknown" while it is listed
    but its node does not have it (a migration in between)."""
    unanswered = None
    try:
        live = vm_power_state(settings, node, vmid)
    except InfrastructureError as exc:
        live, unanswered = None, exc
    if live is not None and live != MISSING:
        return node, live
    try:
        listed = [vm for vm in cluster_vms(settings)
                  if vm.get("type", "qemu") == "qemu" and str(vm.get("vmid")) == str(vmid)]
    except Exception as exc:
        log.warning("proxmox cluster resources could not be read for VM %s: %s", vmid, type(exc).__name__)
        raise InfrastructureError("Could not reach Proxmox VE to refresh the desktop status") from None
    if not listed:
        return None, MISSING
    where = str(listed[0].get("node") or "")
    if not where or where == node:
        if unanswered is not None:
            raise unanswered
        return node, "unknown"
    live = vm_power_state(settings, where, vmid)
    return where, ("unknown" if live == MISSING else live)


def refresh(settings: Settings, desktop: Desktop) -> Desktop:
    """Read the VM's live state, wherever the cluster has it, and reconcile a settled record with it.

    Transitional desktops belong to their job and are left alone. Every write is conditional on
    the record's status and job still being those read before Proxmox was asked: a delete, stop or
    start accepted meanwhile wins, and the record as it is now is answered.
    """
    if desktop.vmid is None or Status(desktop.status) in TRANSITIONAL | {Status.DELETED, Status.FAILED}:
        return desktop
    read = {"status": desktop.status, "job_id": desktop.job_id}
    recorded = desktop.node or settings.proxmox_node
    node, live = locate_vm(settings, desktop.vmid, recorded)
    status = Status(desktop.status)
    written = True
    if node is not None and node != recorded and live != "unknown":
        # migrated: remember where the VM is now (for the next refresh and the playbooks)
        written = bool(Desktop.update(node=node).where(
            Desktop.id == desktop.id, Desktop.status == read["status"],
            Desktop.job_id.is_null() if read["job_id"] is None else Desktop.job_id == read["job_id"]).execute())
        if written:
            desktop.node = node
    if not written:
        pass  # the record moved on (answered below)
    elif live == MISSING:
        written = lifecycle.set_status(desktop, Status.FAILED, f"VM {desktop.vmid} no longer exists in Proxmox VE",
                                       "refresh", expect=read, publish_to=settings.redis_url)
    elif status is Status.RUNNING and live == "stopped":
        written = lifecycle.set_status(desktop, Status.STOPPED, "VM was stopped outside the control plane",
                                       "refresh", expect=read, publish_to=settings.redis_url)
    elif status is Status.STOPPED and live == "running":
        message = "VM is running outside the control plane; start the desktop to reconnect"
        if desktop.status_message != message:
            written = lifecycle.set_status(desktop, Status.STOPPED, message, "refresh", expect=read,
                                           publish_to=settings.redis_url)
    if not written:  # the record moved on while Proxmox was asked: answer it as it is now
        return Desktop.get_or_none(Desktop.id == desktop.id) or desktop
    return desktop
