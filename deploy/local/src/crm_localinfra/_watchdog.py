"""Stops a test session's Kafka and SecantusDB if pytest dies without running its teardown.

``python -m crm_localinfra._watchdog OWNER_PID PIDFILE=TAG ...``: polls until OWNER_PID is gone,
then stops (by pid, tag-checked) whatever the pid files name. A normal teardown stops this
process first with SIGTERM. Without it, a ``kill -9`` of pytest (or pytest-timeout's thread
method, which calls ``os._exit``) would leave a 500 MB JVM running for good.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from types import FrameType

from crm_localinfra._proc import live_pid, pid_alive, remove_pid, stop_pid


def _exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is pytest's to handle
    owner = int(argv[0])
    targets = [(Path(p), tag) for p, _, tag in (a.partition("=") for a in argv[1:])]
    while pid_alive(owner):
        time.sleep(1.0)
    for path, tag in targets:
        pid = live_pid(path, tag)
        if pid is not None:
            print(f"owner {owner} is gone; stopping pid {pid} ({path.name})", flush=True)
            stop_pid(pid, timeout=20.0)
            remove_pid(path, pid)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
