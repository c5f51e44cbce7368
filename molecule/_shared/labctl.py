"""Start and stop the lab stand-ins a Molecule scenario needs, in the background, so that they
outlive the create step: the Proxmox VE stand-in (controlplane.lab.proxmox.LabProxmox, which wraps
the fakepve package) and the Guacamole stand-in (python -m controlplane.lab.guacamole).

    labctl.py start --state-dir DIR [--proxmox] [--guacamole]
    labctl.py stop --state-dir DIR [--remove]

Each stand-in listens on 127.0.0.1 on a port the system picks (port 0: nothing to race for) with a
fresh random admin password. `start` waits until every stand-in accepts a login, then writes
DIR/lab.json (mode 0600: it holds the passwords) with their addresses, credentials and process ids;
DIR/<service>.pid and DIR/<service>.log are kept beside it. `start` on a state directory left
over from a run that was not destroyed stops its stand-ins and starts afresh. `stop` ends only the
processes whose pid files are in DIR and whose command line names DIR (a recycled pid is left
alone), and with --remove deletes DIR (only if it holds nothing but what labctl and the stand-ins
make).

`serve-proxmox` is the background process `start` runs for the Proxmox stand-in; not for direct use.
Run everything with the project's virtualenv Python (the one that has controlplane and fakepve).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from controlplane.processes import alive

HOST = "127.0.0.1"
PROXMOX_USER = "root@pam"
PROXMOX_NODE = "pve1"
GUACAMOLE_USER = "guacadmin"
GUACAMOLE_DATA_SOURCE = "postgresql"
# The secrets reach the background processes through the environment, never their command lines.
PROXMOX_PASSWORD_ENV = "LABCTL_PROXMOX_PASSWORD"
GUACAMOLE_PASSWORD_ENV = "GUACAMOLE_STANDIN_PASSWORD"  # read by python -m controlplane.lab.guacamole
SERVICES = ("proxmox", "guacamole")
# What a state directory holds besides <service>.pid/.log (stop --remove deletes nothing else).
STATE_FILES = ("lab.json", "proxmox.port", "proxmox.json", "guacamole.json", "certs")
GUACAMOLE_READY = re.compile(r"^Guacamole stand-in: (http://\S+?)/\s", re.MULTILINE)


class LabError(Exception):
    pass


# ---- helpers ---------------------------------------------------------------------------------

def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _spawn(argv: list[str], state_dir: Path, service: str, env: dict[str, str]) -> subprocess.Popen:
    """Run argv detached from us (own session, no inherited pipes: Ansible does not wait for it),
    output to DIR/<service>.log, its pid in DIR/<service>.pid."""
    log = open(state_dir / f"{service}.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **env}, start_new_session=True, close_fds=True)
    finally:
        log.close()
    (state_dir / f"{service}.pid").write_text(f"{proc.pid}\n")
    return proc


def _http(url: str, data: dict[str, str] | None = None, timeout: float = 3.0) -> tuple[int, dict]:
    """POST form data (or GET) to url; (status, JSON body). TLS is not verified: the Proxmox
    stand-in has a self-signed certificate."""
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as answer:
            return answer.status, json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def _wait(what: str, check, proc: subprocess.Popen, log: Path, deadline: float):
    """Call check() until it returns something truthy; fail if proc exits or the deadline passes."""
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LabError(f"{what} exited with status {proc.returncode}; its log ends with:\n{_tail(log)}")
        try:
            result = check()
            if result:
                return result
        except (OSError, ValueError) as exc:  # not listening yet, or half-written output
            last_error = str(exc)
        time.sleep(0.1)
    raise LabError(f"{what} did not come up in time ({last_error}); its log ends with:\n{_tail(log)}")


def _owned_pid(state_dir: Path, service: str) -> int | None:
    """The pid in DIR/<service>.pid if that process is alive and its command line names DIR."""
    try:
        pid = int((state_dir / f"{service}.pid").read_text().strip())
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except (OSError, ValueError):
        return None
    ours = any(arg == str(state_dir) or arg.startswith(f"{state_dir}/") for arg in argv)
    return pid if ours else None


def _ours(name: str) -> bool:
    """Whether a state directory entry is one that labctl or the stand-ins make."""
    return name in STATE_FILES or name.endswith((".pid", ".log", ".tmp"))


# ---- start -----------------------------------------------------------------------------------

def _start_proxmox(state_dir: Path, args: argparse.Namespace, deadline: float) -> dict:
    password = secrets.token_urlsafe(12)
    port_file = state_dir / "proxmox.port"
    port_file.unlink(missing_ok=True)
    proc = _spawn([sys.executable, os.path.abspath(__file__), "serve-proxmox", "--state-dir", str(state_dir),
                   "--time-scale", str(args.time_scale), "--agent-delay", str(args.agent_delay)],
                  state_dir, "proxmox", {PROXMOX_PASSWORD_ENV: password})
    log = state_dir / "proxmox.log"
    port = _wait("the Proxmox stand-in", lambda: int(port_file.read_text()) if port_file.exists() else None,
                 proc, log, deadline)
    url = f"https://{HOST}:{port}/api2/json"
    _wait("the Proxmox stand-in's login",
          lambda: _http(f"{url}/access/ticket", {"username": PROXMOX_USER, "password": password})[0] == 200,
          proc, log, deadline)
    return {"pid": proc.pid, "host": HOST, "port": port, "url": url, "user": PROXMOX_USER, "password": password,
            "node": PROXMOX_NODE, "validate_certs": False}


def _start_guacamole(state_dir: Path, deadline: float) -> dict:
    password = secrets.token_urlsafe(12)
    proc = _spawn([sys.executable, "-m", "controlplane.lab.guacamole", "--host", HOST, "--port", "0",
                   "--username", GUACAMOLE_USER, "--data-source", GUACAMOLE_DATA_SOURCE,
                   "--state-file", str(state_dir / "guacamole.json")],
                  state_dir, "guacamole", {GUACAMOLE_PASSWORD_ENV: password, "PYTHONUNBUFFERED": "1"})
    log = state_dir / "guacamole.log"

    def announced():
        found = GUACAMOLE_READY.search(log.read_text(errors="replace"))
        return found.group(1) if found else None
    url = _wait("the Guacamole stand-in", announced, proc, log, deadline)
    _wait("the Guacamole stand-in's login",
          lambda: _http(f"{url}/api/tokens", {"username": GUACAMOLE_USER, "password": password})[0] == 200,
          proc, log, deadline)
    return {"pid": proc.pid, "url": url, "username": GUACAMOLE_USER, "password": password,
            "data_source": GUACAMOLE_DATA_SOURCE}


def start(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).resolve()
    if not (args.proxmox or args.guacamole):
        raise LabError("nothing to start: give --proxmox and/or --guacamole")
    if state_dir.exists():  # leftovers of a run that was not destroyed: start afresh
        _stop(state_dir)
        _remove(state_dir)
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (state_dir / "lab.json").unlink(missing_ok=True)
    deadline = time.monotonic() + args.timeout
    lab: dict[str, dict] = {}
    try:
        if args.proxmox:
            lab["proxmox"] = _start_proxmox(state_dir, args, deadline)
        if args.guacamole:
            lab["guacamole"] = _start_guacamole(state_dir, deadline)
    except BaseException:
        _stop(state_dir)
        raise
    _write_private(state_dir / "lab.json", json.dumps(lab, indent=1, sort_keys=True) + "\n")
    shown = {name: {k: v for k, v in service.items() if k != "password"} for name, service in lab.items()}
    print(json.dumps(shown, sort_keys=True))
    return 0


# ---- stop ------------------------------------------------------------------------------------

def _stop(state_dir: Path, timeout: float = 15.0) -> list[str]:
    """SIGTERM every stand-in of state_dir (SIGKILL after timeout); the names of those stopped."""
    stopped = []
    for service in SERVICES:
        pid = _owned_pid(state_dir, service)
        if pid is not None:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pid = None
            else:
                deadline = time.monotonic() + timeout
                while alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.1)
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
                stopped.append(service)
        (state_dir / f"{service}.pid").unlink(missing_ok=True)
    return stopped


def _remove(state_dir: Path) -> None:
    """Delete a state directory, refusing one that holds anything labctl and the stand-ins do not make."""
    strangers = sorted(entry.name for entry in state_dir.iterdir() if not _ours(entry.name))
    if strangers:
        raise LabError(f"{state_dir} holds files labctl did not make ({', '.join(strangers[:5])}): not removing it")
    shutil.rmtree(state_dir)


def stop(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).resolve()
    stopped = _stop(state_dir) if state_dir.exists() else []
    removed = False
    if args.remove and state_dir.exists():
        _remove(state_dir)
        removed = True
    print(json.dumps({"stopped": stopped, "removed": removed}))
    return 0


# ---- the Proxmox stand-in's process ---------------------------------------------------------

async def _serve_proxmox(args: argparse.Namespace) -> None:
    from controlplane.lab.proxmox import LabProxmox  # the project's lab, on top of fakepve

    state_dir = Path(args.state_dir)
    lab = LabProxmox(state_dir / "proxmox.json", state_dir / "certs", host=HOST, port=0, user=PROXMOX_USER,
                     password=os.environ[PROXMOX_PASSWORD_ENV], time_scale=args.time_scale,
                     agent_delay=args.agent_delay)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await lab.start()
    try:
        _write_private(state_dir / "proxmox.port", f"{lab.pve.port}\n")
        logging.getLogger("labctl").info("Proxmox stand-in listening on %s", lab.url)
        await stopping.wait()
    finally:
        await lab.stop()


def serve_proxmox(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_serve_proxmox(args))
    return 0


# ---- command line ----------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p_start = commands.add_parser("start", help="start stand-ins in the background and wait until they answer")
    p_start.add_argument("--state-dir", required=True)
    p_start.add_argument("--proxmox", action="store_true", help="the Proxmox VE stand-in (fakepve with the lab's SDN)")
    p_start.add_argument("--guacamole", action="store_true", help="the Guacamole REST stand-in")
    p_start.add_argument("--time-scale", type=float, default=0.01, help="real seconds per PVE second")
    p_start.add_argument("--agent-delay", type=float, default=0.5, help="seconds until a started VM reports an IP")
    p_start.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the stand-ins")
    p_stop = commands.add_parser("stop", help="stop the stand-ins of a state directory")
    p_stop.add_argument("--state-dir", required=True)
    p_stop.add_argument("--remove", action="store_true", help="then delete the state directory")
    p_serve = commands.add_parser("serve-proxmox", help=argparse.SUPPRESS)
    p_serve.add_argument("--state-dir", required=True)
    p_serve.add_argument("--time-scale", type=float, required=True)
    p_serve.add_argument("--agent-delay", type=float, required=True)
    args = parser.parse_args(argv)
    try:
        return {"start": start, "stop": stop, "serve-proxmox": serve_proxmox}[args.command](args)
    except LabError as exc:
        print(f"labctl {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
