# The VM lookups of the role (by id in status.yml, the template by name in clone.yml), made in the
# Ansible process itself rather than in a module process: the same proxmoxer calls and the same
# answer as community.proxmox.proxmox_vm_info (proxmox_vms, each VM's cluster and node entries
# merged, `template` a bool, `config` when asked), without starting a Python interpreter and
# importing proxmoxer and requests for each lookup (about a quarter of a CPU-second each; a create
# makes three). Errors read as proxmox_vm_info's do ("500 Internal Server Error: no quorum",
# "... Max retries exceeded ... Connection refused"), which services/failures.py classifies.
# Documentation: library/proxmox_desktop_vm_info.py.
from __future__ import annotations

import warnings

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.module_utils.common.parameters import remove_values
from ansible.plugins.action import ActionBase

ARGUMENT_SPEC = {
    "api_host": {"type": "str", "required": True},
    "api_port": {"type": "int"},
    "api_user": {"type": "str", "required": True},
    "api_password": {"type": "str", "no_log": True},
    "api_token_id": {"type": "str"},
    "api_token_secret": {"type": "str", "no_log": True},
    "validate_certs": {"type": "bool", "default": False},
    "vmid": {"type": "int"},
    "name": {"type": "str"},
    "config": {"type": "str", "choices": ["none", "current", "pending"], "default": "none"},
}


def _as_bool(value) -> bool:
    return value in (1, "1", True, "true", "yes")


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(ARGUMENT_SPEC)

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        checked = ArgumentSpecValidator(ARGUMENT_SPEC, required_one_of=[("api_password", "api_token_id")],
                                        required_together=[("api_token_id", "api_token_secret")],
                                        mutually_exclusive=[("vmid", "name")]).validate(self._task.args)
        if checked.error_messages:
            raise AnsibleActionFail("; ".join(checked.error_messages))
        args = checked.validated_parameters
        result["changed"] = False
        # As AnsibleModule does: no value of a no_log option (the password, the token) in the answer.
        return remove_values(self._look_up(args, result), checked._no_log_values)

    def _look_up(self, args, result):
        try:
            api = self._connect(args)
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
    def _connect(args):
        from proxmoxer import ProxmoxAPI  # imported by the warm Ansible process before it forks a run

        auth = {"user": args["api_user"]}
        if args["api_port"]:
            auth["port"] = args["api_port"]
        if args["api_password"]:
            auth["password"] = args["api_password"]
        else:
            auth["token_name"] = args["api_token_id"]
            auth["token_value"] = args["api_token_secret"]
        with warnings.catch_warnings():  # an unverified lab certificate: validate_certs says so already
            warnings.simplefilter("ignore")
            api = ProxmoxAPI(args["api_host"], verify_ssl=args["validate_certs"], **auth)
            api.version.get()  # as proxmox_vm_info: a token is only tried by its first request
        return api

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
