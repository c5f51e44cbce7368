"""The project playbooks (playbooks/project_*.yml) end to end: the control plane's run_playbook →
ansible-runner → community.proxmox (SDN modules, proxmox_kvm) → the lab's Proxmox with its SDN.
Everything is checked through the Proxmox API, not through what the playbooks say about themselves.

The lab services are this module's own, every one on a free port: no workers, API or database needed."""
from __future__ import annotations

import dataclasses
import secrets
from types import SimpleNamespace

import pytest
import yaml
from proxmoxer import ProxmoxAPI

from controlplane.config import Settings
from controlplane.lab.services import LabConfig
from controlplane.runner.ansible import PlaybookResult, run_playbook
from tests.conftest import free_port, start_lab_services
from tests.inventory import QUICK, lab_inventory

pytestmark = [pytest.mark.playbooks, pytest.mark.timeout(240), pytest.mark.filterwarnings("ignore:Unverified HTTPS request")]

ZONE = "cdsproj"
WRITES = ("POST", "PUT", "DELETE")


def run(project_lab, playbook: str, **extravars) -> PlaybookResult:
    s = project_lab.settings
    return run_playbook(s.ansible_dir, playbook, s.inventory_path, extravars, s.playbook_env(playbook), timeout=180,
                        secrets=s.secrets())


@pytest.fixture(scope="module")
def project_lab(tmp_path_factory):
    """LabServices on free ports (every *_port of LabConfig) and the Settings the worker would run with."""
    state = tmp_path_factory.mktemp("project-lab")

    def config():
        ports = {f.name: free_port() for f in dataclasses.fields(LabConfig) if f.name.endswith("_port")}
        return LabConfig(state_dir=state, **{**ports, "proxmox_host": "127.0.0.1", "time_scale": 0.01,
                                             "agent_delay": 0.5, "guacamole_password": "guac-" + secrets.token_hex(6)})
    config, services = start_lab_services(config)
    try:
        settings = Settings(var_dir=state, proxmox_host=config.proxmox_host, proxmox_port=config.proxmox_port,
                            proxmox_user=config.proxmox_user, proxmox_password=config.proxmox_password,
                            proxmox_verify_ssl=False, inventory=str(lab_inventory(state, **QUICK)),
                            guacamole_url=services.guacamole.url, guacamole_username=config.guacamole_username,
                            guacamole_password=config.guacamole_password, lab=True)
        yield SimpleNamespace(services=services, settings=settings, pve=services.pve)
    finally:
        services.stop()


@pytest.fixture(scope="module")
def pve_api(project_lab):
    s = project_lab.settings
    return ProxmoxAPI(s.proxmox_host, port=s.proxmox_port, user=s.proxmox_user, password=s.proxmox_password,
                      verify_ssl=False, timeout=10)


def forget_requests(project_lab) -> None:
    project_lab.services.call(lambda: project_lab.pve.requests.clear())


def writes(project_lab) -> list[tuple[str, str]]:
    """The changing requests Proxmox received since forget_requests (logins do not count)."""
    return project_lab.services.call(lambda: [(method, path) for method, path, _ in project_lab.pve.requests
                                              if method in WRITES and not path.endswith("/access/ticket")])


def vm_ids(pve_api) -> set[int]:
    return {int(vm["vmid"]) for vm in pve_api.nodes("pve1").qemu.get()}


def vnets(pve_api, **view) -> dict[str, dict]:
    return {v["vnet"]: v for v in pve_api.cluster.sdn.vnets.get(**view)}


def subnets(pve_api, **view) -> dict[str, dict]:
    """Every subnet of every vnet, by id."""
    return {s["subnet"]: s for vnet in vnets(pve_api) for s in pve_api.cluster.sdn.vnets(vnet).subnets.get(**view)}


def agent_addresses(pve_api, vmid: int) -> list[str]:
    interfaces = pve_api.nodes("pve1").qemu(vmid).agent("network-get-interfaces").get()["result"]
    return [a["ip-address"] for i in interfaces if i["name"] != "lo" for a in i.get("ip-addresses", [])
            if a["ip-address-type"] == "ipv4"]


def vm_status(pve_api, vmid: int) -> str:
    return pve_api.nodes("pve1").qemu(vmid).status.current.get()["status"]


def test_a_project_gets_a_vm_on_its_own_network_and_leaves_nothing_behind(project_lab, pve_api):
    project, vmid, cidr = 910001, 5101, "172.30.201.0/24"
    vnet, subnet = f"p{project}", f"{ZONE}-172.30.201.0-24"
    args = {"project_id": project, "project_vmid": vmid}

    created = run(project_lab, "project_create.yml", **args, project_os="windows11", project_network_cidr=cidr)
    assert created.ok, created.reason()
    connection = created.stats.get("guacamole_connection_id")
    assert created.stats == {"vmid": vmid, "vm_ip": "172.30.201.2", "network": vnet, "vm_status": "running",
                             "guacamole_connection_id": connection, "guacamole_protocol": "vnc"}
    # Its screen: a Guacamole connection to the VM's address, granted to no Guacamole user.
    screen = project_lab.services.call(lambda: dict(project_lab.services.guacamole.connections[connection]))
    assert screen["name"] == f"cds-project-{project}" and screen["parameters"]["hostname"] == "172.30.201.2"

    # The network: vnet and subnet applied (running configuration), gateway .1, nothing pending.
    assert vnets(pve_api, running=1)[vnet]["zone"] == ZONE
    assert "state" not in vnets(pve_api, pending=1)[vnet]
    [sub] = pve_api.cluster.sdn.vnets(vnet).subnets.get(running=1)
    assert (sub["subnet"], sub["cidr"], sub["gateway"], sub["snat"]) == (subnet, cidr, "172.30.201.1", 0)
    assert [z["type"] for z in pve_api.cluster.sdn.zones.get() if z["zone"] == ZONE] == ["simple"]

    # The VM: cloned from the Windows 11 template, sized, on the vnet with its fixed address, running.
    config = pve_api.nodes("pve1").qemu(vmid).config.get()
    assert config["name"] == f"cds-project-{project}"
    assert "cloudinit" in config["ide2"] and config["ostype"] == "win11"
    assert (int(config["cores"]), int(config["memory"])) == (4, 8192)
    assert f"bridge={vnet}" in config["net0"].split(",")
    assert config["ipconfig0"] == "ip=172.30.201.2/24,gw=172.30.201.1"
    assert vm_status(pve_api, vmid) == "running"
    assert agent_addresses(pve_api, vmid) == ["172.30.201.2"]

    # Isolation: the VM's own firewall is on (and net0 filtered): in only from its own subnet, out
    # to anywhere but the other projects' subnets (the pool).
    assert "firewall=1" in config["net0"].split(",")
    firewall = pve_api.nodes("pve1").qemu(vmid).firewall
    options = firewall.options.get()
    assert (int(options["enable"]), options["policy_in"], options["policy_out"]) == (1, "DROP", "ACCEPT")
    rules = [(r["pos"], r["type"], r["action"], r.get("source"), r.get("dest"), int(r["enable"]))
             for r in firewall.rules.get()]
    assert rules == [(0, "in", "ACCEPT", cidr, None, 1), (1, "out", "ACCEPT", None, cidr, 1),
                     (2, "out", "DROP", None, "172.30.0.0/16", 1)]

    # A second create changes nothing: Proxmox sees no write at all.
    forget_requests(project_lab)
    again = run(project_lab, "project_create.yml", **args, project_os="windows11", project_network_cidr=cidr)
    assert again.ok, again.reason()
    assert writes(project_lab) == []
    assert again.stats == created.stats

    stopped = run(project_lab, "project_stop.yml", **args)
    assert stopped.ok, stopped.reason()
    assert vm_status(pve_api, vmid) == "stopped"
    assert stopped.stats == {"vmid": vmid, "vm_ip": "", "network": vnet, "vm_status": "stopped"}

    started = run(project_lab, "project_start.yml", **args)
    assert started.ok, started.reason()
    assert vm_status(pve_api, vmid) == "running"
    assert agent_addresses(pve_api, vmid) == ["172.30.201.2"]
    assert started.stats == created.stats

    deleted = run(project_lab, "project_delete.yml", **args)
    assert deleted.ok, deleted.reason()
    assert deleted.stats == {"vmid": vmid, "vm_ip": "", "network": "", "vm_status": "absent"}
    assert vmid not in vm_ids(pve_api)
    assert project_lab.services.call(lambda: connection not in project_lab.services.guacamole.connections)
    assert vnet not in vnets(pve_api) and vnet not in vnets(pve_api, running=1)
    assert subnet not in subnets(pve_api) and subnet not in subnets(pve_api, running=1)
    assert ZONE in [z["zone"] for z in pve_api.cluster.sdn.zones.get()]  # shared: it stays

    forget_requests(project_lab)
    assert run(project_lab, "project_delete.yml", **args).ok
    assert writes(project_lab) == []


def test_a_failed_create_removes_vm_and_network_and_names_the_step(project_lab, pve_api, tmp_path):
    project, vmid, cidr = 910002, 5102, "172.30.202.0/24"
    settings = yaml.safe_load((project_lab.settings.ansible_dir / "config" / "projects.yml").read_text())
    settings["os_templates"]["broken"] = "tmpl-missing"
    projects_file = tmp_path / "projects.yml"
    projects_file.write_text(yaml.safe_dump(settings))

    result = run(project_lab, "project_create.yml", project_id=project, project_vmid=vmid, project_network_cidr=cidr,
                 project_os="broken", project_os_templates_file=str(projects_file))
    assert result.status == "failed"
    assert result.failure == ("Create failed at 'Check that the template exists and can be cloned': "
                              "Template 'tmpl-missing' does not exist"), result.failure
    # The network was made before the VM failed; the clean-up took it away again.
    assert ("proxmox_network", "vnet.yml", "Make sure the vnet is present") in result.tasks
    assert vmid not in vm_ids(pve_api)
    assert f"p{project}" not in vnets(pve_api) and f"p{project}" not in vnets(pve_api, running=1)
    assert f"{ZONE}-172.30.202.0-24" not in subnets(pve_api)


def test_bad_parameters_fail_before_anything_is_made(project_lab, pve_api):
    forget_requests(project_lab)
    args = {"project_id": 910003, "project_vmid": 5103}
    result = run(project_lab, "project_create.yml", **args, project_network_cidr="172.30.5.7/24")  # host bits
    assert result.status == "failed" and "project_network_cidr" in (result.failure or ""), result.failure
    result = run(project_lab, "project_create.yml", **args, project_network_cidr="172.30.5.0/24", project_os="plan9")
    assert result.status == "failed" and "Unknown os plan9" in (result.failure or ""), result.failure
    assert writes(project_lab) == []
