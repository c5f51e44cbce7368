# Waits for a VM's guest agent to report its IPv4 address, in the Ansible process: polls
# GET /nodes/{node}/qemu/{vmid}/agent/network-get-interfaces (proxmox_vm_info's `network` fails
# outright while an agent is not running) up to retries + 1 times, delay seconds apart, until the
# agent reports the expected static address (expected_ip), or any usable address when none is
# expected. Loopback, link-local and the interfaces matching ignore_interfaces do not count;
# `ip-addresses` may be missing just after boot, and a 500 (agent not running yet) is waited out.
# One task in place of the nine (log in, poll, pick, check) wait_ip.yml ran before: about 0.3 s of
# every create and start. Sets proxmox_desktop_ip and proxmox_desktop_ips; fails with "Guest agent
# reported no IPv4 address after N attempts (D s apart); last answer: ...", a step failure for
# services/failures.py. Documentation: library/proxmox_desktop_guest_ip.py.
from __future__ import annotations

import os
import runpy
import re
import time
import warnings

from ansible.errors import AnsibleActionFail

# The connection options and connect() the role's plugins share (module_utils/proxmox_desktop_api.py).
_API = runpy.run_path(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "module_utils",
                                   "proxmox_desktop_api.py"))
ARGUMENT_SPEC = {
    **_API["API_OPTIONS"],
    "node": {"type": "str", "required": True},
    "vmid": {"type": "int", "required": True},
    "expected_ip": {"type": "str", "default": ""},
    "ignore_interfaces": {"type": "str", "default": "^$"},
    "retries": {"type": "int", "default": 60},
    "delay": {"type": "float", "default": 2},
}
_UNUSABLE = re.compile(r"^(127[.]|169[.]254[.])")


def addresses(interfaces, ignore: str) -> list[str]:
    """The usable IPv4 addresses of the agent's answer, in its order."""
    if not isinstance(interfaces, list):
        return []
    skip = re.compile(ignore)
    found = []
    for interface in interfaces:
        if not isinstance(interface, dict) or skip.match(str(interface.get("name", ""))):
            continue
        for address in interface.get("ip-addresses") or []:
            if (isinstance(address, dict) and address.get("ip-address-type") == "ipv4"
                    and not _UNUSABLE.match(str(address.get("ip-address", "")))):
                found.append(str(address["ip-address"]))
    return found


class ActionModule(_API["ProxmoxAction"]):
    SPEC = ARGUMENT_SPEC
    _VALID_ARGS = frozenset(ARGUMENT_SPEC)

    def act(self, args, result):
        try:
            re.compile(args["ignore_interfaces"])
        except re.error as exc:
            raise AnsibleActionFail(f"ignore_interfaces is not a regular expression: {exc}") from exc
        expected, attempts = args["expected_ip"], args["retries"] + 1
        last, found = "no answer", []
        agent = None
        for attempt in range(attempts):
            if attempt:
                time.sleep(args["delay"])
            try:
                if agent is None:
                    agent = _API["connect"](args).nodes(args["node"]).qemu(args["vmid"]).agent
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    answer = agent("network-get-interfaces").get()
            except Exception as exc:  # noqa: BLE001 - not up yet (500), or Proxmox did not answer: wait
                last, found = str(exc) or type(exc).__name__, []
                continue
            interfaces = answer.get("result") if isinstance(answer, dict) else None
            found = addresses(interfaces, args["ignore_interfaces"])
            last = f"addresses {', '.join(found)}" if found else "no usable IPv4 address"
            if (expected in found) if expected else found:
                result.update(attempts=attempt + 1, ansible_facts={
                    "proxmox_desktop_ips": found, "proxmox_desktop_ip": expected or found[0]})
                return result
        delay = f"{args['delay']:g}"
        return {**result, "failed": True, "attempts": attempts, "msg": (
            f"Guest agent reported {'not the static address ' + expected if expected else 'no IPv4 address'} "
            f"after {attempts} attempts ({delay} s apart); last answer: {last}")}
