"""Throwaway helper for testing the desktop playbooks by hand against fakepve.

Runs a fake Proxmox VE (fakepve) in-process on https://127.0.0.2:8006 (root@pam / secret, self-signed
certificate) with two templates and a simulated guest agent: about two seconds after a VM starts, its
agent reports eth0 with 10.66.<vmid // 256 % 256>.<vmid % 256>; when the VM stops the agent goes away.

    .venv/bin/python scripts/dev/fakepve_lab.py [--time-scale 0.01] [--silent-agent 1002 ...]

--silent-agent VMID: the agent of that VM never comes up (to test the IP wait giving up).
--no-acpi VMID: that VM ignores ACPI shutdowns (to test forced and failing stops).
--token USER!TOKENID=SECRET: also accept this API token (to test token authentication).
The real lab stand-in lives in controlplane/lab; this file is only for developing the roles.
"""

import argparse
import asyncio
import shutil
import tempfile
import time

from fakepve import FakePve
from fakepve.certs import make_cert

TEMPLATES = (
    (9000, 'tmpl-debian12-desktop', 'l26'),
    (9001, 'tmpl-windows11', 'win11'),
)
AGENT_DELAY = 2.0


def add_templates(pve):
    for vmid, name, ostype in TEMPLATES:
        pve.add_vm(vmid, name, template=True, config={
            'template': 1,
            'ostype': ostype,
            'cores': 2,
            'memory': 2048,
            'sockets': 1,
            'agent': '1',
            'scsihw': 'virtio-scsi-single',
            # A template's disks are base volumes: linked clones need them.
            'scsi0': 'local-lvm:base-{0}-disk-0,size=32G'.format(vmid),
            'net0': 'virtio=BC:24:11:00:{0:02X}:{1:02X},bridge=vmbr0'.format(vmid // 256 % 256, vmid % 256),
            'boot': 'order=scsi0;net0',
        })


def interfaces(vmid):
    return [
        {'name': 'lo', 'hardware-address': '00:00:00:00:00:00',
         'ip-addresses': [{'ip-address': '127.0.0.1', 'ip-address-type': 'ipv4', 'prefix': 8},
                          {'ip-address': '::1', 'ip-address-type': 'ipv6', 'prefix': 128}]},
        {'name': 'eth0', 'hardware-address': 'bc:24:11:66:{0:02x}:{1:02x}'.format(vmid // 256 % 256, vmid % 256),
         'ip-addresses': [{'ip-address': '10.66.{0}.{1}'.format(vmid // 256 % 256, vmid % 256),
                           'ip-address-type': 'ipv4', 'prefix': 24},
                          {'ip-address': 'fe80::be24:11ff:fe66:{0:x}'.format(vmid),
                           'ip-address-type': 'ipv6', 'prefix': 64}]},
    ]


async def simulate_agents(pve, silent, no_acpi):
    while True:
        now = time.time()
        for vm in pve.vms:
            if vm.template:
                continue
            if vm.vmid in no_acpi:
                vm.acpi = False
            if vm.status != 'running':
                vm.agent = None
            elif vm.agent is None and vm.vmid not in silent and vm.started_at and now - vm.started_at >= AGENT_DELAY:
                vm.agent = {'interfaces': interfaces(vm.vmid)}
                print('agent of VM {0} reports {1}'.format(
                    vm.vmid, vm.agent['interfaces'][1]['ip-addresses'][0]['ip-address']), flush=True)
        await asyncio.sleep(0.2)


async def main(args):
    pve = FakePve(host=args.host, port=args.port)
    pve.time_scale = args.time_scale
    for token in args.token:
        tokenid, _, secret = token.partition('=')
        pve.apitokens[tokenid] = secret
    add_templates(pve)
    tmp = tempfile.mkdtemp(prefix='fakepve-lab-')
    try:
        certfile, keyfile, _ = make_cert(tmp, hosts=(args.host,))
        await pve.start(certfile, keyfile)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print('fakepve lab on {0} (root@pam / secret)'.format(pve.url), flush=True)
    await simulate_agents(pve, set(args.silent_agent), set(args.no_acpi))


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--host', default='127.0.0.2')
    parser.add_argument('--port', type=int, default=8006)
    parser.add_argument('--time-scale', type=float, default=0.01)
    parser.add_argument('--silent-agent', type=int, action='append', default=[])
    parser.add_argument('--no-acpi', type=int, action='append', default=[])
    parser.add_argument('--token', action='append', default=[])
    try:
        asyncio.run(main(parser.parse_args()))
    except KeyboardInterrupt:
        pass
