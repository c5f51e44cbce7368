"""Placement (services/placement.py) against a real fakepve cluster of three nodes over HTTPS: only
online nodes, none in maintenance, only allowed ones; clones stay on their template's node unless
the storage is shared; then the most free memory once our VMs still being made are counted, then the
fewest of our VMs. And the pool playbooks put a VM on the node they are given and remove it."""
from __future__ import annotations

import datetime as dt

import pytest

from controlplane.extensions import db
from controlplane.models import Desktop, PoolVm, utcnow
from controlplane.services.placement import PlacementError, choose_node

from .cluster import fakepve_cluster

pytestmark = pytest.mark.filterwarnings("ignore:Unverified HTTPS request")
TEMPLATE = "tmpl-debian12-desktop"  # on pve1


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with fakepve_cluster(tmp_path_factory.mktemp("placement"), ("pve2", "pve3")) as running:
        yield running


@pytest.fixture
def settings(base_settings, cluster, client, redis_conn):
    """Settings pointing at the cluster, on an empty database (client) and Redis (redis_conn)."""
    _, proxmox = cluster
    return base_settings.replace(proxmox_host="127.0.0.1", proxmox_port=proxmox.pve.port, proxmox_user="root@pam",
                                 proxmox_password="secret", proxmox_api_timeout=5.0)


def offline(cluster, node: str, is_offline: bool = True) -> None:
    loop, proxmox = cluster

    async def change():
        proxmox.pve.set_node_offline(node, offline=is_offline)
    loop.run(change())


def desktop_on(node: str, status: str = "RUNNING", memory_mb: int = 4096, age_minutes: int = 60) -> None:
    with db.connection_context():
        Desktop.create(user_id=f"u_{node}_{Desktop.select().count()}", name="d", plan="STANDARD", cpu_cores=4,
                       memory_mb=memory_mb, status=status, node=node, vmid=None,
                       created_at=utcnow() - dt.timedelta(minutes=age_minutes))


def choose(settings, memory_mb: int = 4096):
    with db.connection_context():
        return choose_node(settings, memory_mb, TEMPLATE)


def test_without_shared_storage_clones_stay_on_the_templates_node(settings):
    desktop_on("pve1", status="PROVISIONING", memory_mb=8192, age_minutes=0)  # pve1 looks the busiest
    assert choose(settings).node == "pve1"


def test_the_node_with_the_most_free_memory_wins(settings):
    shared = settings.replace(proxmox_shared_storage=True)
    # fakepve's nodes report the same use (2 of 8 GiB); our VMs still being made are not in it yet.
    desktop_on("pve1", status="PROVISIONING", memory_mb=4096, age_minutes=0)
    desktop_on("pve2", status="RUNNING", memory_mb=2048, age_minutes=1)  # young: may not show yet either
    choice = choose(shared)
    assert choice.node == "pve3", choice
    assert "GiB free" in choice.reason


def test_a_node_short_of_memory_is_still_chosen_and_said_so_without_a_warning(settings, caplog):
    # pve1 (the template's node) reports 6 of 8 GiB free; a VM still being made there takes 4 more.
    desktop_on("pve1", status="PROVISIONING", memory_mb=4096, age_minutes=0)
    with caplog.at_level("INFO", logger="controlplane.services.placement"):
        short = choose(settings, memory_mb=4096)
        roomy = choose(settings, memory_mb=1024)
    assert short.node == "pve1" and "(less than the VM asks)" in short.reason, short
    assert roomy.node == "pve1" and "less than" not in roomy.reason, roomy
    assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]


def test_equal_nodes_share_the_desktops_and_the_pool(settings):
    shared = settings.replace(proxmox_shared_storage=True)
    desktop_on("pve1")
    desktop_on("pve2")
    with db.connection_context():
        PoolVm.create(plan="STANDARD", template=TEMPLATE, vmid=20100, node="pve1", power="running", state="READY",
                      created_at=utcnow() - dt.timedelta(hours=1))
    assert choose(shared).node == "pve3"
    desktop_on("pve3")
    assert choose(shared).node == "pve2"  # pve1 has a desktop and a pool VM


def test_offline_nodes_and_nodes_in_maintenance_are_skipped(settings, cluster, redis_conn):
    from controlplane.services.maintenance import draining_key
    shared = settings.replace(proxmox_shared_storage=True)
    desktop_on("pve3")
    desktop_on("pve3")
    offline(cluster, "pve1")
    redis_conn.set(draining_key("pve2"), "1")
    try:
        choice = choose(shared)
        assert choice.node == "pve3", choice
        assert "pve1 is offline" in choice.reason and "pve2 is in maintenance" in choice.reason
        offline(cluster, "pve3")
        with pytest.raises(PlacementError, match="no Proxmox node can take the VM"):
            choose(shared)
        # Without shared storage only the template's node will do, and it is offline.
        with pytest.raises(PlacementError, match=f"template {TEMPLATE}'s node pve1"):
            choose(settings)
    finally:
        offline(cluster, "pve1", False)
        offline(cluster, "pve3", False)


def test_only_allowed_nodes_are_used(settings):
    shared = settings.replace(proxmox_shared_storage=True, proxmox_nodes="pve2, pve3")
    desktop_on("pve3")
    assert choose(shared).node == "pve2"


def test_an_unreadable_cluster_falls_back_to_the_configured_node(settings):
    from tests.conftest import free_port
    unreachable = settings.replace(proxmox_port=free_port(), proxmox_node="pve7", proxmox_api_timeout=0.5)
    choice = choose(unreachable)
    assert (choice.node, choice.reason) == ("pve7", "the cluster could not be read")


@pytest.mark.playbooks
def test_the_pool_playbooks_make_a_vm_on_the_given_node_and_remove_it(settings, cluster):
    """What the fill and remove jobs run, and what ops can run by hand: pool_vm_create.yml clones to
    the node it is given (PVE's clone `target`), sizes and tags the VM; pool_vm_delete.yml removes it."""
    from controlplane.runner.ansible import run_playbook
    loop, proxmox = cluster

    def vm(vmid):
        async def find():
            return proxmox.pve.vm(vmid)
        return loop.run(find())

    run = dict(ansible_dir=settings.ansible_dir, inventory=settings.inventory_path,
               env=settings.playbook_env("pool_vm_create.yml"), timeout=300, secrets=settings.secrets())
    made = run_playbook(playbook="pool_vm_create.yml", extravars={
        "pool_vm_id": 41, "pool_vm_vmid": 20141, "pool_vm_plan": "STANDARD", "pool_vm_power": "stopped",
        "pool_vm_node": "pve2"}, **run)
    assert made.ok, made.reason()
    assert made.stats["vm_node"] == "pve2" and made.stats["vm_status"] == "stopped"
    new = vm(20141)
    assert (new.name, new.node, new.status) == ("cds-pool-41", "pve2", "stopped")
    assert (int(new.config["cores"]), int(new.config["memory"])) == (4, 4096)
    assert {"cloud-desktop", "cds-pool"} <= set(str(new.config["tags"]).replace(",", ";").split(";"))
    again = run_playbook(playbook="pool_vm_create.yml", extravars={
        "pool_vm_id": 41, "pool_vm_vmid": 20141, "pool_vm_plan": "STANDARD", "pool_vm_power": "stopped",
        "pool_vm_node": "pve2"}, **run)
    assert again.ok and [t for _, f, t in again.tasks if f == "clone.yml"] == []  # idempotent: no clone
    # Another pool VM's number: the name check refuses to touch it.
    refused = run_playbook(playbook="pool_vm_delete.yml", extravars={"pool_vm_id": 42, "pool_vm_vmid": 20141}, **run)
    assert not refused.ok and "refusing to touch it" in refused.reason()
    removed = run_playbook(playbook="pool_vm_delete.yml", extravars={"pool_vm_id": 41, "pool_vm_vmid": 20141}, **run)
    assert removed.ok, removed.reason()
    assert vm(20141) is None
