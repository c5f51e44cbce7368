# Takes over a warm pool VM for a desktop in one step, in the Ansible process: reads the VM by id,
# refuses one that is not ours (a template, or named neither proxmox_desktop_name nor the pool VM's
# name), and sizes, renames and tags it with the one configuration update proxmox_kvm's `update`
# would send (PUT /nodes/{node}/qemu/{vmid}/config: cores, memory, name, tags, agent), only when
# something differs. It replaces status.yml and configure.yml's eight tasks and one module process
# (about 0.6 s of a pooled create's 2 s, benchmarks/create.py --pool); a cold create still clones
# and sizes with proxmox_kvm. A VM that no longer exists is reported (adopted: false) so that the
# role clones it afresh, as status.yml would. Errors read as proxmox_vm_info's and proxmox_kvm's
# do ("500 Internal Server Error: ..."), which services/failures.py classifies.
# Documentation: library/proxmox_desktop_adopt.py.
from __future__ import annotations

import os
import runpy
import re
import warnings


# The connection options and connect() the role's plugins share (module_utils/proxmox_desktop_api.py).
_API = runpy.run_path(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "module_utils",
                                   "proxmox_desktop_api.py"))
ARGUMENT_SPEC = {
    **_API["API_OPTIONS"],
    "vmid": {"type": "int", "required": True},
    "name": {"type": "str", "required": True},
    "adopt_name": {"type": "str", "required": True},
    "cores": {"type": "int", "required": True},
    "memory_mb": {"type": "int", "required": True},
    "tags": {"type": "list", "elements": "str", "default": []},
    "owner": {"type": "str", "default": ""},
    "drop_tags": {"type": "list", "elements": "str", "default": []},
    "verify_name": {"type": "bool", "default": True},
}


def _tags(value) -> list[str]:
    return re.findall(r"[^;, ]+", str(value or ""))


def _agent_enabled(config: dict) -> bool:
    return str(config.get("agent", "0")).split(",")[0] in ("1", "enabled=1", "enabled=true")


def changes(config: dict, args: dict) -> dict:
    """What the VM's configuration must change to be the desktop's (as configure.yml works it out)."""
    owner = args["owner"].lower()
    wanted = [t.lower() for t in args["tags"]] + ([f"cds-user-{re.sub(r'[^a-z0-9_+.-]', '-', owner)}"] if owner else [])
    found = _tags(config.get("tags"))
    drop = {t.lower() for t in args["drop_tags"]}
    kept = [t for t in found if t not in drop]
    tags = sorted(set(kept + wanted))
    update = {}
    if int(config.get("cores", 1)) != args["cores"]:
        update["cores"] = args["cores"]
    if int(config.get("memory", 512)) != args["memory_mb"]:
        update["memory"] = args["memory_mb"]
    if not _agent_enabled(config):
        update["agent"] = 1
    if set(wanted) - set(kept) or len(kept) != len(found):
        update["tags"] = ",".join(tags)
    if config.get("name") != args["name"]:
        update["name"] = args["name"]
    return update


class ActionModule(_API["ProxmoxAction"]):
    SPEC = ARGUMENT_SPEC
    _VALID_ARGS = frozenset(ARGUMENT_SPEC)

    def act(self, args, result):
        vmid = args["vmid"]
        try:
            api = _API["connect"](args)
            found = [vm for vm in api.cluster.resources.get(type="vm")
                     if vm.get("type") == "qemu" and int(vm.get("vmid", -1)) == vmid]
        except Exception as exc:  # noqa: BLE001 - the message is the answer, as proxmox_vm_info gives it
            return {**result, "failed": True,
                    "msg": f"Failed to retrieve VMs information from cluster resources: {exc}"}
        if not found:
            return {**result, "adopted": False, "ansible_facts": {"proxmox_desktop_exists": False}}
        vm = found[0]
        node, name, template = vm["node"], vm.get("name", ""), vm.get("template") in (1, "1", True)
        if template or (args["verify_name"] and name not in (args["name"], args["adopt_name"])):
            return {**result, "failed": True, "msg": (
                f"VM id {vmid} is already used by {'the template' if template else 'another VM'} '{name}' "
                f"(expected '{args['name']}'); refusing to touch it")}
        qemu = api.nodes(node).qemu(vmid)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                config = qemu.config.get(current=0)  # the configuration the next boot uses
                update = changes(config, args)
                if update:
                    qemu.config.set(**update)
                    config = {**config, **update}
        except Exception as exc:  # noqa: BLE001 - proxmox_kvm's words for a failed update
            return {**result, "failed": True, "msg": f"Unable to update VM {vmid} ({name}) on node {node}: {exc}"}
        result.update(changed=bool(update), adopted=True, updated=sorted(update), ansible_facts={
            "proxmox_desktop_exists": True,
            "proxmox_desktop_status": vm.get("status", "unknown"),
            "proxmox_desktop_vm_node": node,
            "proxmox_desktop_vm_name": args["name"],
            "proxmox_desktop_vm_template": False,
            "proxmox_desktop_config": config,
            "__proxmox_desktop_ours": True,
        })
        return result
