"""The floor of a warm-pool create: the Proxmox VE and Guacamole calls the product makes to hand a
pool VM to a desktop, made directly from one Python process, with nothing around them.

    .venv/bin/python benchmarks/floor.py --proxmox https://127.0.0.7:8006 --proxmox-token 'root@pam!bench=<secret>' \
        --guacamole http://127.0.0.1:8081/guacamole --guacamole-login guacadmin:<password> --vmid 10005 [--runs 20]

The calls (what desktop_create.yml makes for a running pool VM, benchmarks/README.md):
- Proxmox: the VM in cluster/resources, its pending configuration, the configuration update that sizes,
  renames and tags it, the guest agent's interfaces (proxmoxer, an API token: no login).
- Guacamole: log in, list the connections, create the connection, look the user up, create it, read
  its permissions, grant the connection, log out (requests, one kept-alive session).

Each run makes a connection and a user of its own (floor-<n>) and removes them afterwards, untimed.
benchmarks/create.py --pool calls `floor()` on the lab it started, beside the product's creates,
and reports product / floor.
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings
from urllib.parse import quote

import requests


def _proxmox(url: str, token: str):
    from urllib.parse import urlsplit

    from proxmoxer import ProxmoxAPI
    parts = urlsplit(url)
    user, _, rest = token.partition("!")
    name, _, secret = rest.partition("=")
    return ProxmoxAPI(parts.hostname, port=parts.port or 8006, user=user, token_name=name, token_value=secret,
                      verify_ssl=False)


def one_run(pve, guacamole: str, login: tuple[str, str], vmid: int, n: int) -> tuple[float, callable]:
    """(seconds for the calls, a clean-up to run afterwards)."""
    http = requests.Session()
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        [vm] = [v for v in pve.cluster.resources.get(type="vm") if int(v["vmid"]) == vmid]
        qemu = pve.nodes(vm["node"]).qemu(vmid)
        config = qemu.config.get(current=0)
        qemu.config.set(name=config.get("name", f"cds-desktop-{n}"), cores=int(config.get("cores", 2)),
                        memory=int(config.get("memory", 2048)), tags=config.get("tags", "cloud-desktop"))
        [interface, *_] = qemu.agent("network-get-interfaces").get()["result"]
    address = next(a["ip-address"] for i in [interface] for a in i.get("ip-addresses", []))
    answer = http.post(f"{guacamole}/api/tokens", data={"username": login[0], "password": login[1]}, timeout=10)
    answer.raise_for_status()
    token, source = answer.json()["authToken"], answer.json()["dataSource"]
    http.headers["Guacamole-Token"] = token
    api = f"{guacamole}/api/session/data/{quote(source, safe='')}"
    http.get(f"{api}/connections", timeout=10).raise_for_status()
    made = http.post(f"{api}/connections", json={
        "name": f"floor-{n}", "parentIdentifier": "ROOT", "protocol": "vnc",
        "parameters": {"hostname": address, "port": "5900"}, "attributes": {}}, timeout=10)
    made.raise_for_status()
    ident = made.json()["identifier"]
    user = f"floor-{n}"
    if http.get(f"{api}/users/{user}", timeout=10).status_code == 404:
        http.post(f"{api}/users", json={"username": user, "password": "", "attributes": {}},
                  timeout=10).raise_for_status()
    http.get(f"{api}/users/{user}/permissions", timeout=10).raise_for_status()
    http.patch(f"{api}/users/{user}/permissions", json=[
        {"op": "add", "path": f"/connectionPermissions/{ident}", "value": "READ"}], timeout=10).raise_for_status()
    http.delete(f"{guacamole}/api/tokens/{token}", timeout=10)
    seconds = time.perf_counter() - started

    def clean_up():
        again = http.post(f"{guacamole}/api/tokens", data={"username": login[0], "password": login[1]}, timeout=10)
        http.headers["Guacamole-Token"] = again.json()["authToken"]
        http.delete(f"{api}/connections/{ident}", timeout=10)
        http.delete(f"{api}/users/{user}", timeout=10)
        http.delete(f"{guacamole}/api/tokens/{again.json()['authToken']}", timeout=10)
    return seconds, clean_up


def floor(proxmox: str, token: str, guacamole: str, login: tuple[str, str], vmid: int, runs: int) -> list[float]:
    """Seconds of each of `runs` runs on the running VM `vmid` (its configuration is rewritten as it is)."""
    pve = _proxmox(proxmox, token)
    times = []
    for n in range(runs):
        seconds, clean_up = one_run(pve, guacamole.rstrip("/"), login, vmid, n)
        times.append(seconds)
        clean_up()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--proxmox", required=True, help="https://host:port")
    parser.add_argument("--proxmox-token", required=True, help="user@realm!name=secret")
    parser.add_argument("--guacamole", required=True, help="Guacamole's base URL")
    parser.add_argument("--guacamole-login", required=True, help="user:password")
    parser.add_argument("--vmid", type=int, required=True, help="a running VM with a guest agent")
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    user, _, password = args.guacamole_login.partition(":")
    times = floor(args.proxmox, args.proxmox_token, args.guacamole, (user, password), args.vmid, args.runs)
    print(f"floor of a warm-pool create, {len(times)} runs: median {statistics.median(times) * 1000:.1f} ms, "
          f"max {max(times) * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
