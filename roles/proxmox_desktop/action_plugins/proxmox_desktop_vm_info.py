# The VM lookups of the role (by id in status.yml, the template by name in clone.yml), made in the
# Ansible process itself rather than in a module process: the same proxmoxer calls and the same
# answer as community.proxmox.proxmox_vm_info (proxmox_vms, each VM's cluster and node entries
# merged, `template` a bool, `config` when asked), without starting a Python interpreter and
# importing proxmoxer and requests for each lookup (about a quarter of a CPU-second each; a create
# makes three). Errors read as proxmox_vm_info's do ("500 Internal Server Error: no quorum",
# "... Max retries exceeded ... Connection refused"), which services/failures.py classifies.
# Documentation: library/proxmox_desktop_vm_info.py.
from __future__ import annotations

import os
import runpy
import warnings


# The connection options and connect() the role's plugins share (module_utils/proxmox_desktop_api.py).
_API = runpy.run_path(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "module_utils",
                                   "proxmox_desktop_api.py"))
ARGUMENT_SPEC = {
    **_API["API_OPTIONS"],
    "vmid": {"type": "int"},
    "name": {"type": "str"},
    "config": {"type": "str", "choices": ["none", "current", "pending"], "default": "none"},
}


def _as_bool(value) -> bool:
    return value in (1, "1", True, "true", "yes")


class ActionModule(_API["ProxmoxAction"]):
    SPEC = ARGUMENT_SPEC
    _VALID_ARGS = frozenset(ARGUMENT_SPEC)
    RULES = {"mutually_exclusive": [("vmid", "name")]}

    def act(self, args, result):
        try:
            api = _API["connect"](args)
            api.version.get()  # as proxmox_vm_info: a token is only tried by its first request
        except Exception as exc:  # noqa: BLE001 - the message is the answer, as proxmox_vm_info gives it
            return {**result, "failed": True, "msg": f"{exc}"}
        try:
            machines = {int(vm["vmid"]): vm for vm in api.cluster.resources.get(type="vm")}
        except Exception as exc:  # noqa: BLE001
            return {**result, "failed": True,
                    "msg": f"Failed to retrieve VMs information from cluster resources: {exc}"}
        try:
            found = self._qemu_vms(api, machines, args["vmid"], args["name"], args["config"])
        except Exception as exc:  # noqa: BLE001
            return {**result, "failed": True, "msg": f"Failed to retrieve QEMU VMs information: {exc}"}
        result["proxmox_vms"] = [vm for _, vm in sorted(found.items())]
        return result


    @staticmethod
    def _qemu_vms(api, machines: dict, vmid: int | None, name: str | None, config: str) -> dict:
        """proxmox_vm_info's get_vms_from_nodes for type qemu."""
        wanted = {
            key: info for key, info in machines.items()
            if info.get("type") == "qemu"
            and not (vmid and int(info.get("vmid", -1)) != vmid)
            and not (name is not None and info.get("name") != name)
        }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for node in sorted({info["node"] for info in wanted.values() if "node" in info}):
                for listed in api.nodes(node).qemu.get():
                    this = int(listed["vmid"])
                    vm = wanted.get(this)
                    if vm is None:
                        continue
                    vm.update(listed)
                    vm["vmid"] = this
                    vm["template"] = _as_bool(vm.get("template", 0))
                    if config != "none":
                        vm["config"] = api.nodes(node).qemu(this).config.get(current=0 if config == "pending" else 1)
        return wanted
