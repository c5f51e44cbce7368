"""The decisions of the proxmox_desktop role's one-step plugins, without Proxmox: what the adoption of a
warm pool VM changes in its configuration (proxmox_desktop_adopt), and which guest-agent addresses
count (proxmox_desktop_guest_ip). Their calls to Proxmox are exercised by tests/e2e/test_pool.py and
tests/e2e/test_failures.py against fakepve."""
from __future__ import annotations

import runpy
from pathlib import Path

import pytest

PLUGINS = Path(__file__).resolve().parents[2] / "roles" / "proxmox_desktop" / "action_plugins"
adopt = runpy.run_path(str(PLUGINS / "proxmox_desktop_adopt.py"))
guest_ip = runpy.run_path(str(PLUGINS / "proxmox_desktop_guest_ip.py"))

ARGS = {"name": "cds-desktop-7", "cores": 2, "memory_mb": 2048, "tags": ["cloud-desktop"], "owner": "Alice.B@x",
        "drop_tags": ["cds-pool"]}


def test_a_pool_vm_is_renamed_retagged_and_keeps_the_tags_of_others():
    config = {"name": "cds-pool-3", "cores": 2, "memory": 2048, "agent": "1", "tags": "cds-pool;cloud-desktop;ops"}
    assert adopt["changes"](config, ARGS) == {
        "name": "cds-desktop-7", "tags": "cds-user-alice.b-x,cloud-desktop,ops"}


def test_an_adopted_vm_already_right_is_left_alone():
    config = {"name": "cds-desktop-7", "cores": 2, "memory": 2048, "agent": "enabled=1",
              "tags": "cds-user-alice.b-x;cloud-desktop"}
    assert adopt["changes"](config, ARGS) == {}


def test_size_and_agent_follow_the_plan():
    config = {"name": "cds-desktop-7", "cores": 8, "memory": 8192, "tags": "cds-user-alice.b-x;cloud-desktop"}
    assert adopt["changes"](config, ARGS) == {"cores": 2, "memory": 2048, "agent": 1}


AGENT = [
    {"name": "lo", "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "127.0.0.1"}]},
    {"name": "docker0", "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "172.17.0.1"}]},
    {"name": "eth0", "ip-addresses": [{"ip-address-type": "ipv6", "ip-address": "fe80::1"},
                                      {"ip-address-type": "ipv4", "ip-address": "169.254.3.4"},
                                      {"ip-address-type": "ipv4", "ip-address": "10.66.0.12"}]},
    {"name": "eth1"},  # no addresses yet, just after boot
]


@pytest.mark.parametrize("answer, found", [
    (AGENT, ["10.66.0.12"]),
    ([], []),
    ({"error": "not a list"}, []),
    (["not an interface"], []),
])
def test_only_usable_ipv4_addresses_of_counted_interfaces(answer, found):
    assert guest_ip["addresses"](answer, r"^(lo|docker[0-9]*|br-.*|veth.*|virbr[0-9]*)$") == found
