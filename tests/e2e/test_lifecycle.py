"""The acceptance story of issue 3, end to end through the real stack: HTTP API → Redis → real RQ
worker processes → ansible-runner → the real proxmox_kvm module → fakepve, and the
guacamole_connection role → the Guacamole stand-in."""
from __future__ import annotations

import base64
import time
import threading
import types

import pytest
import requests

from controlplane.user_ids import guacamole_username

from .contract_client import DesktopClient
from .helpers import Api, desktop_row, events

pytestmark = pytest.mark.timeout(300)

CREATE_PROGRESSION = ["PENDING", "PROVISIONING", "STARTING", "WAITING_FOR_IP", "CONFIGURING", "RUNNING"]


def client_id_of(url: str) -> str:
    assert "/#/client/" in url, url
    return url.split("/#/client/", 1)[1]


def resolve(lab, url: str) -> dict:
    """What the Guacamole stand-in's client page resolves the URL's connection to."""
    response = requests.get(f"{lab.guacamole.url}/_lab/client/{client_id_of(url)}", timeout=5)
    assert response.status_code == 200, response.text
    return response.json()


def test_full_lifecycle_with_the_contract_client(lab, fresh_user, monkeypatch):
    from . import contract_client
    # The contract's client (unchanged) polls every 5 s, 30 times: here every 0.2 s, as long in all.
    monkeypatch.setattr(contract_client, "time", types.SimpleNamespace(sleep=lambda seconds: time.sleep(seconds / 25)))
    client = DesktopClient(lab.url, lab.token(fresh_user))
    api = Api(lab.url, lab.token(fresh_user))

    created = client.create_desktop(fresh_user, "Development Workspace", plan="STANDARD")
    assert created["success"] is True
    desktop = created["data"]
    assert desktop["status"] == "PENDING"
    assert (desktop["cpuCores"], desktop["memoryMb"]) == (4, 4096)
    assert desktop["ipAddress"] is None and desktop["connectionUrl"] is None
    desktop_id = desktop["id"]

    ready = client.wait_for_desktop(desktop_id, max_attempts=30 * 25)
    assert ready == {"desktopId": desktop_id, "status": "RUNNING", "statusMessage": "Desktop is ready",
                     "ready": True}
    statuses = [status for status, _, _ in events(desktop_id)]
    assert statuses == CREATE_PROGRESSION

    # The VM in Proxmox: cloned from the plan's template, sized by the plan, running.
    row = desktop_row(desktop_id)
    vm = lab.vm(row.vmid)
    assert vm is not None and vm.status == "running"
    assert vm.name == f"cds-desktop-{desktop_id}"
    assert int(vm.config["cores"]) == 4 and int(vm.config["memory"]) == 4096

    got = api.get(desktop_id).json()["data"]
    assert got["status"] == "RUNNING" and got["ipAddress"] == row.ip_address
    assert got["ipAddress"].startswith("10.66.")

    # Connect: the lab answers an auth-json link (its Guacamole secret is set), which logs into the
    # stand-in once and resolves to exactly this desktop's address.
    link = client.get_connection_url(desktop_id)
    assert link.startswith(lab.guacamole.url + "/?data=")
    data = requests.utils.unquote(link.split("?data=", 1)[1].split("#", 1)[0])
    login = requests.post(f"{lab.guacamole.url}/api/tokens", data={"data": data}, timeout=5)
    assert login.status_code == 200 and login.json()["dataSource"] == "json"
    by_link = requests.get(f"{lab.guacamole.url}/_lab/client/{link.split('#/client/', 1)[1]}", timeout=5,
                           headers={"Guacamole-Token": login.json()["authToken"]}).json()
    assert (by_link["name"], by_link["hostname"]) == (f"cds-desktop-{desktop_id}", got["ipAddress"])
    assert requests.post(f"{lab.guacamole.url}/api/tokens", data={"data": data}, timeout=5).status_code == 403
    # The registered connection (the desktop object's URL) is this desktop's too.
    url = api.get(desktop_id).json()["data"]["connectionUrl"]
    assert url.startswith(lab.guacamole.url + "/#/client/")
    decoded = base64.urlsafe_b64decode(client_id_of(url) + "==").decode()
    identifier, kind, source = decoded.split("\0")
    assert (kind, source) == ("c", "postgresql")
    connection = resolve(lab, url)
    assert connection["name"] == f"cds-desktop-{desktop_id}"
    assert connection["hostname"] == got["ipAddress"]
    assert connection["protocol"] == "vnc" == api.connect(desktop_id).json()["data"]["protocol"]
    # ... and the user was granted it in Guacamole, as the name of theirs /connect signs for.
    assert identifier in lab.services.call(
        lambda: lab.guacamole.permissions.get(guacamole_username(fresh_user), {}).get("connectionPermissions", {}))
    assert api.get(desktop_id).json()["data"]["lastAccessedAt"] is not None

    # Stop: STOPPING → STOPPED, the VM is off, no connection URL.
    stopping = api.stop(desktop_id)
    assert stopping.status_code == 200 and stopping.json()["data"]["status"] == "STOPPING"
    assert api.wait_settled(desktop_id, refresh=True)["status"] == "STOPPED"
    assert lab.vm(row.vmid).status == "stopped"
    assert api.get(desktop_id).json()["data"]["connectionUrl"] is None
    assert api.connect(desktop_id).json()["error"] == "DESKTOP_NOT_READY"

    # Make the next boot get another address, then start: → RUNNING with the connection re-pointed.
    old_ip = got["ipAddress"]
    started = api.start(desktop_id)
    assert started.status_code == 200 and started.json()["data"]["status"] == "STARTING"
    assert api.wait_settled(desktop_id, refresh=True)["status"] == "RUNNING"
    after = api.get(desktop_id).json()["data"]
    assert after["ipAddress"] != old_ip, "the lab's agents hand out a new address on every boot"
    assert resolve(lab, after["connectionUrl"])["hostname"] == after["ipAddress"]  # the registered one, re-pointed
    assert len([c for c in lab.connections().values() if c["name"] == f"cds-desktop-{desktop_id}"]) == 1

    # Delete: DELETING → DELETED; the VM and the connection are gone.
    deleted = api.delete(desktop_id)
    assert deleted.status_code == 200 and deleted.json() == {
        "success": True, "timestamp": deleted.json()["timestamp"], "message": "Desktop deleted successfully.",
        "data": None}
    assert api.wait_settled(desktop_id)["status"] == "DELETED"
    assert row.vmid not in lab.vms()
    assert not [c for c in lab.connections().values() if c["name"] == f"cds-desktop-{desktop_id}"]
    assert requests.get(f"{lab.guacamole.url}/_lab/client/{client_id_of(url)}", timeout=5).status_code == 404
    assert [s for s, _, _ in events(desktop_id)] == CREATE_PROGRESSION + [
        "STOPPING", "STOPPED", "STARTING", "WAITING_FOR_IP", "CONFIGURING", "RUNNING", "DELETING", "DELETED"]

    # The user may create a new desktop now; the deleted one is out of the default list.
    listing = api.session.get(api.base, timeout=10).json()["data"]
    assert listing == {"desktops": [], "total": 0}
    again = api.create(fresh_user, plan="BASIC")
    assert again.status_code == 201
    assert api.wait_settled(again.json()["data"]["id"])["status"] == "RUNNING"
    assert api.delete(again.json()["data"]["id"]).status_code == 200
    assert api.wait_settled(again.json()["data"]["id"])["status"] == "DELETED"


def test_premium_plan_is_sized_from_plans_yml(lab, fresh_user):
    api = Api(lab.url, lab.token(fresh_user))
    created = api.create(fresh_user, plan="PREMIUM")
    assert created.status_code == 201, created.text
    desktop_id = created.json()["data"]["id"]
    assert api.wait_settled(desktop_id)["status"] == "RUNNING"
    vm = lab.vm(desktop_row(desktop_id).vmid)
    plans = __import__("yaml").safe_load(open(lab.settings.plans_file))["plans"]
    assert int(vm.config["cores"]) == plans["PREMIUM"]["cores"]
    assert int(vm.config["memory"]) == plans["PREMIUM"]["memory_mb"]
    template = {v.name: v for v in lab.services.call(lambda: list(lab.pve.vms))}[plans["PREMIUM"]["template"]]
    assert vm.config.get("ostype") == template.config.get("ostype")
    api.delete(desktop_id)
    assert api.wait_settled(desktop_id)["status"] == "DELETED"


def test_forced_stop(lab, fresh_user):
    api = Api(lab.url, lab.token(fresh_user))
    desktop_id = api.create(fresh_user, plan="BASIC").json()["data"]["id"]
    assert api.wait_settled(desktop_id)["status"] == "RUNNING"
    assert api.stop(desktop_id, force=True).status_code == 200
    assert api.wait_settled(desktop_id)["status"] == "STOPPED"
    assert lab.vm(desktop_row(desktop_id).vmid).status == "stopped"
    api.delete(desktop_id)
    assert api.wait_settled(desktop_id)["status"] == "DELETED"


def test_concurrent_creates_for_one_user_make_one_desktop(lab, fresh_user):
    api = Api(lab.url, lab.token(fresh_user))
    results: list[requests.Response] = []
    barrier = threading.Barrier(10)

    def create():
        session = Api(lab.url, lab.token(fresh_user))
        barrier.wait()
        results.append(session.create(fresh_user, plan="BASIC"))
    threads = [threading.Thread(target=create) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(r.status_code for r in results)
    assert codes == [201] + [409] * 9, [r.text for r in results]
    assert {r.json()["error"] for r in results if r.status_code == 409} == {"DESKTOP_ALREADY_EXISTS"}
    desktop_id = next(r for r in results if r.status_code == 201).json()["data"]["id"]
    assert api.wait_settled(desktop_id)["status"] == "RUNNING"
    named = [n for n in lab.vms().values() if n == f"cds-desktop-{desktop_id}"]
    assert len(named) == 1
    api.delete(desktop_id)
    assert api.wait_settled(desktop_id)["status"] == "DELETED"


def test_refresh_reconciles_with_what_proxmox_says(lab, fresh_user):
    """`?refresh=true` reads the VM's power state from Proxmox inside the request: a VM stopped or
    removed behind the control plane's back shows up in the desktop's status."""
    from controlplane.services.proxmox import with_login  # a fresh login if another test revoked the tickets
    api = Api(lab.url, lab.token(fresh_user))
    desktop_id = api.create(fresh_user, plan="BASIC").json()["data"]["id"]
    assert api.wait_settled(desktop_id)["status"] == "RUNNING"
    vmid = desktop_row(desktop_id).vmid
    with_login(lab.settings, lambda client: client.nodes("pve1").qemu(vmid).status.stop.post())
    deadline = time.monotonic() + 30
    while lab.vm(vmid).status != "stopped":
        assert time.monotonic() < deadline
        time.sleep(0.1)

    assert api.status(desktop_id).json()["data"]["status"] == "RUNNING"  # the database alone does not know
    refreshed = api.status(desktop_id, refresh=True).json()["data"]
    assert refreshed == {"desktopId": desktop_id, "status": "STOPPED", "ready": False,
                         "statusMessage": "VM was stopped outside the control plane"}
    assert events(desktop_id)[-1] == ("STOPPED", "VM was stopped outside the control plane", "refresh")

    # Started again through the API, then the VM is deleted outside: refresh marks it FAILED.
    assert api.start(desktop_id).status_code == 200
    assert api.wait_settled(desktop_id)["status"] == "RUNNING"
    with_login(lab.settings, lambda client: client.nodes("pve1").qemu(vmid).status.stop.post())
    deadline = time.monotonic() + 30
    while lab.vm(vmid).status != "stopped":
        assert time.monotonic() < deadline, "the VM did not stop"
        time.sleep(0.1)
    with_login(lab.settings, lambda client: client.nodes("pve1").qemu(vmid).delete())
    while lab.vm(vmid) is not None:
        assert time.monotonic() < deadline, "the VM was not deleted"
        time.sleep(0.1)
    failed = api.status(desktop_id, refresh=True).json()["data"]
    assert failed["status"] == "FAILED" and str(vmid) in failed["statusMessage"]
    # Deleting the FAILED desktop still removes its Guacamole connection and finishes.
    assert api.delete(desktop_id).status_code == 200
    assert api.wait_settled(desktop_id)["status"] == "DELETED"
    assert not [c for c in lab.connections().values() if c["name"] == f"cds-desktop-{desktop_id}"]
