"""A warm Ansible: a process beside each worker that has imported ansible-playbook already and forks
a copy of itself for every playbook run, so that a run does not pay for starting Python and
importing Ansible (about 0.7 s of CPU a run; see benchmarks/create.py's start-up phase).

    python -m controlplane.runner.warm --socket <path> [--parent <pid>]

ansible-runner still runs every playbook: it starts launch.py as always (events, timeouts and
cancelling are unchanged). launch.py, given CONTROLPLANE_ANSIBLE_WARM (this socket's path), asks
this process to run ansible-playbook on its terminal instead of becoming ansible-playbook itself;
without it, or when this process does not answer, launch.py execs ansible-playbook as before.

The exchange, on a Unix socket in a folder only the worker's user can enter:
1. launch.py sends one line of JSON: the settings Ansible reads when it is imported (ANSIBLE_*,
   HOME, TMPDIR, the locale) and the working directory, never a secret. The first request imports
   Ansible under those settings ("primes"); a later one whose settings differ gets a fresh
   ansible-playbook (exec), so a run never works with settings it was not given. This process
   answers {"ready": true} once it is ready.
2. This process forks a monitor for the request, which takes the rest: one byte carrying
   launch.py's terminal (descriptors 0, 1, 2) and its lock on the run's private folder, then one
   line of JSON with the command and the whole environment (secrets included: they never pass
   through this process, only through the monitor, a fork that ends with the run).
3. The monitor forks the run: a new session whose descriptors are launch.py's, in launch.py's
   folder and environment and at its niceness (a warm-pool fill's runs are niced), running ansible-playbook's main (warm), or exec'ing it (cold). It
   answers {"pid", "warm"}, then {"status"} when the run ends, and launch.py exits with it.
4. When launch.py dies first (ansible-runner kills its process group on a timeout or a cancel),
   the monitor kills the run and every process the run started, in whatever session or process
   group they put themselves (it is their subreaper), so nothing keeps working for a job that
   has ended.

Modules still run as Ansible runs them (one interpreter per task, AnsiballZ). The runs of one warm
process share its Ansible temporary folder, so a module's AnsiballZ payload is built once per
worker, not once per run. A change to Ansible or to a collection needs the worker restarted (as
any change to the worker's code does).
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import select
import signal
import socket
import struct
import sys

from .launch import nice_session

MAX_HEADER = 64 * 1024  # bytes: the settings line
MAX_REQUEST = 1024 * 1024  # bytes: the command and environment line (the secrets pipe holds 60 kB)
MAX_FDS = 4  # stdin, stdout, stderr and the private folder's lock
_PR_SET_CHILD_SUBREAPER = 36
# What the warm process itself is started with (the worker's other variables, its secrets among
# them, stay out); a run gets the whole environment launch.py was given.
_BASE_NAMES = frozenset({"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR"})


def base_env(environ) -> dict[str, str]:
    return {k: v for k, v in environ.items() if k in _BASE_NAMES or k.startswith("LC_")}


def _read_line(conn: socket.socket, limit: int, first: bytes = b"") -> bytes:
    data = first
    while not data.endswith(b"\n"):
        if len(data) > limit:
            raise ValueError("request too large")
        chunk = conn.recv(65536)
        if not chunk:
            raise ValueError("request cut short")
        data += chunk
    if len(data) > limit:
        raise ValueError("request too large")
    return data


def _send(conn: socket.socket, message: dict) -> None:
    conn.sendall((json.dumps(message) + "\n").encode())


class Server:
    def __init__(self, path: str, parent: int | None):
        self.path, self.parent = path, parent
        self.primed: str | None = None  # the primed settings, as canonical JSON
        self.broken: str | None = None  # why Ansible could not be imported here
        self.monitors: dict[int, int | None] = {}  # pid -> its pidfd (None where pidfds are missing)
        self.parent_fd: int | None = None
        self.base_env = dict(os.environ)

    def prime(self, config: dict[str, str], cwd: str) -> None:
        os.environ.clear()
        os.environ.update(self.base_env)
        os.environ.update(config)
        try:
            os.chdir(cwd)
            import ansible.cli.playbook  # noqa: F401  (the import is the point)
            import ansible.executor.playbook_executor  # noqa: F401
            import ansible.executor.task_executor  # noqa: F401
            import ansible.plugins.strategy.linear  # noqa: F401
            import ansible.template  # noqa: F401
            from ansible import constants as C
            os.makedirs(C.DEFAULT_LOCAL_TMP, exist_ok=True)  # the runs' shared temporary folder
            try:  # for the roles' action plugins (proxmox_desktop_vm_info), which run in the forks
                import proxmoxer  # noqa: F401
                import proxmoxer.backends.https  # noqa: F401
            except ImportError:
                pass
        except Exception as exc:  # noqa: BLE001 - any failure means cold runs, said once
            self.broken = f"{type(exc).__name__}: {exc}"
            print(f"warm ansible: cannot import Ansible, every run starts cold: {self.broken}", file=sys.stderr,
                  flush=True)

    def serve(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        staging = self.path + ".new"
        listener.bind(staging)
        os.chmod(staging, 0o600)
        listener.listen(64)
        os.rename(staging, self.path)  # the path appears once connections are taken
        _say_ready()
        self.parent_fd = parent = _pidfd(self.parent) if self.parent is not None else None
        try:
            # Woken by a connection, a monitor's end (reaped at once) or the parent's; without pidfds
            # (Linux < 5.3), it looks at its parent and monitors every second instead.
            while self.parent is None or os.getppid() == self.parent:
                pidfds = [fd for fd in self.monitors.values() if fd is not None]
                polled = (self.parent is not None and parent is None) or None in self.monitors.values()
                readable, _, _ = select.select([listener] + pidfds + ([parent] if parent is not None else []),
                                               [], [], 1.0 if polled else None)
                self._reap()
                if parent is not None and parent in readable:
                    break  # the worker that started it has ended
                if listener not in readable:
                    continue
                try:
                    conn, _ = listener.accept()
                except OSError:
                    continue
                try:
                    self._handle(conn, listener)
                finally:
                    conn.close()
        finally:
            listener.close()
            if parent is not None:
                os.close(parent)
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def _reap(self) -> None:
        for pid, pidfd in list(self.monitors.items()):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                del self.monitors[pid]
                if pidfd is not None:
                    os.close(pidfd)

    def _handle(self, conn: socket.socket, listener: socket.socket) -> None:
        conn.settimeout(5)  # a client that does not send its settings does not hold the others up
        try:
            header = json.loads(_read_line(conn, MAX_HEADER))
            config, cwd = header["config"], header["cwd"]
            if not (isinstance(config, dict) and all(isinstance(k, str) and isinstance(v, str)
                                                     for k, v in config.items()) and isinstance(cwd, str)):
                raise ValueError("bad settings")
        except (OSError, ValueError, KeyError, TypeError):
            return
        key = json.dumps([config, cwd], sort_keys=True)
        if self.primed is None and self.broken is None:
            self.prime(config, cwd)
            self.primed = key
        warm = self.broken is None and key == self.primed
        try:
            _send(conn, {"ready": True})  # launch.py sends the rest only now: the read above took nothing of it
        except OSError:
            return
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                listener.close()
                for fd in [self.parent_fd, *self.monitors.values()]:
                    if fd is not None:
                        os.close(fd)  # the server's, not the run's
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                conn.settimeout(None)
                code = Monitor(conn, warm).run()
            except BaseException as exc:  # noqa: BLE001 - a monitor never returns into the server's loop
                print(f"warm ansible: monitor failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            finally:
                os._exit(code)
        self.monitors[pid] = _pidfd(pid)


def _pidfd(pid: int) -> int | None:
    """A descriptor that becomes readable when the process ends, or None (no pidfd_open here, or
    the process is already gone)."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


class Monitor:
    """One run: receives launch.py's descriptors and request, forks the run, relays its status, and
    kills everything the run started when launch.py goes away first."""

    def __init__(self, conn: socket.socket, warm: bool):
        self.conn, self.warm = conn, warm

    def run(self) -> int:
        mark, fds, _, _ = socket.recv_fds(self.conn, 1, MAX_FDS)
        if mark != b"F" or len(fds) < 3:
            for fd in fds:
                os.close(fd)
            return 1
        request = json.loads(_read_line(self.conn, MAX_REQUEST))
        argv, env, cwd = request["argv"], request["env"], request["cwd"]
        try:
            import ctypes
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        except Exception:  # noqa: BLE001 - without it, only the run's own process group is killed
            pass
        niceness = _peer_niceness(self.conn)
        child = os.fork()
        if child == 0:
            self.conn.close()
            _lower_priority(niceness)
            _become_run(fds, argv, env, cwd, self.warm)  # never returns
        for fd in fds:
            os.close(fd)  # the terminal is the run's and launch.py's now
        _send(self.conn, {"pid": child, "warm": self.warm})
        status = self._wait(child)
        try:
            _send(self.conn, {"status": status})
        except OSError:
            pass
        return 0

    def _wait(self, child: int) -> int:
        pidfd = _pidfd(child)
        while True:
            watch = [self.conn] + ([pidfd] if pidfd is not None else [])
            readable, _, _ = select.select(watch, [], [], 0.5 if pidfd is None else None)
            if pidfd is not None and pidfd in readable or pidfd is None:
                done, status = os.waitpid(child, os.WNOHANG)
                if done:
                    if pidfd is not None:
                        os.close(pidfd)
                    _kill_descendants()  # what the run left running (a module it started, say)
                    return os.waitstatus_to_exitcode(status)
            if self.conn in readable:
                try:
                    gone = not self.conn.recv(64)
                except OSError:
                    gone = True
                if gone:  # launch.py was killed: the run has nobody to report to
                    try:
                        os.killpg(child, signal.SIGKILL)
                    except OSError:
                        pass
                    _kill_descendants(spare=child)
                    _, status = os.waitpid(child, 0)
                    _kill_descendants()
                    return os.waitstatus_to_exitcode(status)


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _kill_descendants(spare: int | None = None) -> None:
    """SIGKILL every process below this one and reap them (as subreaper, orphans come here); `spare`
    is killed too but left for the caller to reap."""
    import time
    for _ in range(100):
        pids = [pid for pid in _descendants(os.getpid()) if pid != spare]
        if not pids:
            return
        waiting = False
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for pid in pids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:  # a grandchild: it comes to this process once its parent is gone
                waiting = True
        if waiting:
            time.sleep(0.02)


def _peer_niceness(conn: socket.socket) -> int:
    """The niceness of launch.py at the other end (a warm-pool fill runs at a lower priority than a
    user's create: runner/launch.py NICE), so that the run forked here keeps it; 0 if unknown."""
    try:
        pid, _, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        return os.getpriority(os.PRIO_PROCESS, pid)
    except (OSError, AttributeError, struct.error):
        return 0


def _lower_priority(niceness: int) -> None:
    """Only ever lowers this process' priority (raising it would need privileges and is not asked)."""
    try:
        if niceness > os.getpriority(os.PRIO_PROCESS, 0):
            os.setpriority(os.PRIO_PROCESS, 0, niceness)
    except OSError:
        pass


def _become_run(fds: list[int], argv: list[str], env: dict[str, str], cwd: str, warm: bool) -> None:
    code = 1
    try:
        os.setsid()
        nice_session()  # a new session is a new autogroup: it takes the run's niceness too
        fds = [fd if fd > 2 else fcntl.fcntl(fd, fcntl.F_DUPFD, 3) for fd in fds]  # dup2 below must not clobber one
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target)
        for fd in fds[:3]:
            if fd > 2 and fd not in fds[3:]:
                os.close(fd)
        for fd in fds[3:]:
            os.set_inheritable(fd, True)  # the private folder's lock, held by Ansible's forks too
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.chdir(cwd)
        if not warm or os.path.basename(argv[0]) != "ansible-playbook":
            os.execvpe(argv[0], argv, env)
        os.environ.clear()
        os.environ.update(env)
        sys.argv = list(argv)
        for stream in (sys.stdout, sys.stderr):
            stream.reconfigure(line_buffering=os.isatty(stream.fileno()))  # as a fresh interpreter would
        from ansible.cli.playbook import main
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException as exc:  # noqa: BLE001 - reported on the run's own output
        print(f"ERROR! the playbook could not be started: {type(exc).__name__}: {exc}", file=sys.stderr)
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(code)  # not sys.exit: the warm process's exit handlers (its temporary folder) stay its own


def _say_ready() -> None:
    """One line on stdout (a pipe to start()'s caller), then stdout is /dev/null: nobody reads it after."""
    try:
        os.write(1, b"ready\n")
    except OSError:
        pass
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)


def wait_ready(process, timeout: float = 30) -> bool:
    """Whether the process start() made is listening, waiting for its ready line up to `timeout` s."""
    readable, _, _ = select.select([process.stdout], [], [], timeout)
    return bool(readable) and process.stdout.readline() == b"ready\n"


def start(path: str):
    """Start a warm process listening at `path` for the calling process (it ends when that one does,
    or when terminated), with only base_env of this process's environment; wait_ready() tells when
    it listens."""
    import subprocess
    return subprocess.Popen([sys.executable, "-m", "controlplane.runner.warm", "--socket", path,
                             "--parent", str(os.getpid())], env=base_env(os.environ), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="controlplane.runner.warm")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--parent", type=int)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        Server(args.socket, args.parent).serve()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
