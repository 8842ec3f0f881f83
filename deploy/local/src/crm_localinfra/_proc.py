"""Process plumbing shared by the Kafka, SecantusDB and service launchers.

Every process is started in its own session (so a Ctrl-C in the terminal does not reach it and
we decide the shutdown order), is tagged with an environment variable, and is stopped by pid.
The tag lets a pid file be trusted: a pid can be reused by an unrelated process after a reboot
or a crash, and we must never signal that one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

TAG_ENV = "CRM_LOCALINFRA_TAG"

# Children started by spawn(), so that liveness checks reap them through their Popen (which
# then keeps the real exit status) rather than with a bare waitpid behind its back.
_children: dict[int, subprocess.Popen[bytes]] = {}


class StartupError(RuntimeError):
    """A component did not come up; the message carries the tail of its log."""


def tail(path: Path | None, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file (empty string if it does not exist)."""
    if path is None:
        return ""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            # Logs can be big; a bounded read from the end is enough for a diagnosis.
            f.seek(max(0, size - 64 * 1024))
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def format_failure(what: str, logs: Sequence[Path | None], lines: int = 40) -> str:
    parts = [what]
    for log in logs:
        if log is None:
            continue
        text = tail(log, lines)
        parts.append(f"--- last lines of {log} ---\n{text or '(empty or missing)'}")
    return "\n".join(parts)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host`` (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct free ports (all sockets are held open together, so no repeats)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _proc_file(pid: int, name: str) -> bytes | None:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:
        return None


def process_environ(pid: int) -> dict[str, str] | None:
    """The start-up environment of a process (Linux /proc), or None if it cannot be read."""
    raw = _proc_file(pid, "environ")
    if raw is None:
        return None
    env: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return env


def pid_alive(pid: int) -> bool:
    """True if ``pid`` is a live (non-zombie) process."""
    if pid <= 0:
        return False
    child = _children.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        del _children[pid]
        return False
    # Reap it if it is our own exited child; otherwise kill(0) would keep seeing the zombie.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = _proc_file(pid, "stat")
    if stat is not None:
        # Field 3 is the state; the command name in field 2 may hold spaces, hence rpartition.
        state = stat.rpartition(b")")[2].split()[:1]
        if state == [b"Z"]:
            return False
    return True


def pid_matches(pid: int, tag: str) -> bool:
    """True if ``pid`` is alive and was started by us with this tag.

    Where /proc is unreadable (not Linux) we fall back to liveness only.
    """
    if not pid_alive(pid):
        return False
    env = process_environ(pid)
    if env is None:
        return not Path("/proc/self/environ").exists()
    return env.get(TAG_ENV) == tag


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    try:
        return int(text.split()[0]) if text else None
    except ValueError:
        return None


def live_pid(path: Path, tag: str) -> int | None:
    """The pid in ``path`` if that process is alive and carries ``tag``; else None."""
    pid = read_pid(path)
    if pid is not None and pid_matches(pid, tag):
        return pid
    return None


def write_pid(path: Path, pid: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{pid}\n")
    tmp.replace(path)


def remove_pid(path: Path | None, pid: int | None = None) -> None:
    """Remove a pid file, but only if it still names ``pid`` (another start may own it now)."""
    if path is None:
        return
    if pid is not None and read_pid(path) != pid:
        return
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def spawn(
    argv: Sequence[str],
    *,
    log_path: Path,
    tag: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    pid_path: Path | None = None,
    rotate: bool = True,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` detached from our terminal, stdout+stderr written to ``log_path``.

    With ``rotate`` the previous run's log is kept as ``<log>.1``: a fresh file per start keeps
    the size bounded and makes a start-up failure's log tail about this start only.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if rotate and log_path.exists() and log_path.stat().st_size > 0:
        log_path.replace(log_path.with_name(log_path.name + ".1"))
    full_env = dict(os.environ if env is None else env)
    full_env[TAG_ENV] = tag
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=str(cwd) if cwd is not None else None,
            start_new_session=True,
            close_fds=True,
        )
    _children[proc.pid] = proc
    if pid_path is not None:
        write_pid(pid_path, proc.pid)
    return proc


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        # Our processes lead their own session/group; signalling the group also reaches any
        # helper they forked, so nothing is orphaned. Fall back to the pid alone otherwise.
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass
    except OSError as exc:  # pragma: no cover - e.g. EPERM on a foreign pid
        if exc.errno != errno.ESRCH:
            raise


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if not pid_alive(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def stop_pid(pid: int, *, timeout: float = 30.0, kill_timeout: float = 10.0) -> bool:
    """SIGTERM ``pid``, wait up to ``timeout`` s, then SIGKILL. True if it exited cleanly."""
    if not pid_alive(pid):
        return True
    _signal(pid, signal.SIGTERM)
    if wait_gone(pid, timeout):
        return True
    _signal(pid, signal.SIGKILL)
    if not wait_gone(pid, kill_timeout):  # pragma: no cover - only if the kernel is stuck
        raise RuntimeError(f"process {pid} survived SIGKILL")
    return False


def wait_until(
    check: Callable[[], bool],
    *,
    timeout: float,
    alive: Callable[[], bool],
    what: str,
    logs: Sequence[Path | None],
    interval: float = 0.2,
) -> None:
    """Poll ``check`` until it is true; fail fast (with log tails) if the process died."""
    deadline = time.monotonic() + timeout
    while True:
        if not alive():
            raise StartupError(format_failure(f"{what} exited during start-up", logs))
        if check():
            return
        if time.monotonic() >= deadline:
            raise StartupError(format_failure(f"{what} not ready after {timeout:.0f}s", logs))
        time.sleep(interval)
