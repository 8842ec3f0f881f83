"""``crm-infra``: run the whole suite locally without Docker.

    crm-infra up          Kafka + SecantusDB + the four services; stays in the foreground
    crm-infra up --detach same, but returns once everything is ready
    crm-infra down        stop everything the pid files in the state dir name
    crm-infra status      what is running, where, and where it logs
    crm-infra infra-up    only Kafka + SecantusDB (detached by default)
    crm-infra infra-down  only Kafka + SecantusDB
    crm-infra prepare     fetch Kafka's jars and build SecantusDB's Rust server, with progress

State (data, logs, pid files) lives in ``--state-dir`` (default ``./.crm``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TextIO

from crm_localinfra._proc import (
    StartupError,
    format_failure,
    live_pid,
    pid_alive,
    port_open,
    process_environ,
    read_pid,
    remove_pid,
    spawn,
    stop_pid,
)
from crm_localinfra.stack import KAFKA, SECANTUSDB, Layout, LocalInfra


@dataclass(frozen=True)
class ServiceSpec:
    """One service process: by default ``python -m <module>``; ``argv`` overrides the command."""

    name: str
    module: str
    default_port: int
    argv: tuple[str, ...] | None = None
    ready_path: str = "/health/ready"

    def command(self) -> list[str]:
        if self.argv is not None:
            return list(self.argv)
        return [sys.executable, "-m", self.module]


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("leads", "crm_leads", 8101),
    ServiceSpec("opportunities", "crm_opportunities", 8102),
    ServiceSpec("campaigns", "crm_campaigns", 8103),
    ServiceSpec("reporting", "crm_reporting", 8104),
)

HOST = "127.0.0.1"


@dataclass
class _Started:
    """What this invocation started, so that it stops exactly that (services first)."""

    services: list[tuple[str, int]] = field(default_factory=list)
    kafka: bool = False
    mongo: bool = False


def _say(out: TextIO, text: str = "") -> None:
    print(text, file=out, flush=True)


# Loopback only: never route a health check through an HTTP(S)_PROXY from the environment.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


PROGRESS_EVERY_SECONDS = 5.0


@contextlib.contextmanager
def _progress(
    out: TextIO, waiting_for: Callable[[], str], every: float = PROGRESS_EVERY_SECONDS
) -> Iterator[None]:
    """While the block runs, say every ``every`` seconds what it still waits for and for how
    long, so a slow first start (a JVM on a busy machine) does not look like a hang."""
    done = threading.Event()
    started = time.monotonic()

    def report() -> None:
        while not done.wait(every):
            what = waiting_for()
            if what:
                _say(out, f"  waiting for {what} ({time.monotonic() - started:.0f}s so far)")

    ticker = threading.Thread(target=report, name="crm-infra-progress", daemon=True)
    ticker.start()
    try:
        yield
    finally:
        done.set()
        ticker.join()


def _http_ready(port: int, path: str, timeout: float = 2.0) -> bool:
    try:
        with _NO_PROXY.open(f"http://{HOST}:{port}{path}", timeout=timeout) as resp:
            return 200 <= int(resp.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _service_port(layout: Layout, name: str) -> int | None:
    """The port a running service was started with (read back from its environment)."""
    pid = live_pid(layout.pid_file(name), layout.service_tag(name))
    if pid is None:
        return None
    env = process_environ(pid) or {}
    try:
        return int(env["CRM_HTTP_PORT"])
    except (KeyError, ValueError):
        return None


def service_env(kafka_bootstrap: str, mongo_url: str, port: int) -> dict[str, str]:
    """The environment a service process gets (on top of ours)."""
    env = dict(os.environ)
    env.update(
        CRM_KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        CRM_MONGO_URL=mongo_url,
        CRM_HTTP_HOST=HOST,
        CRM_HTTP_PORT=str(port),
        PYTHONUNBUFFERED="1",  # logs reach the file as they happen
    )
    return env


def _print_table(out: TextIO, layout: Layout, infra: LocalInfra, rows: Sequence[tuple[str, int]]) -> None:
    header = ("NAME", "API", "DOCS", "LOG")
    table: list[tuple[str, str, str, str]] = [header]
    for name, port in rows:
        base = f"http://{HOST}:{port}"
        table.append((name, base, f"{base}/docs", str(layout.log_file(name))))
    table.append((KAFKA, infra.kafka_bootstrap, "-", str(layout.log_file(KAFKA))))
    table.append((SECANTUSDB, infra.mongo_url, "-", str(layout.log_file(SECANTUSDB))))
    widths = [max(len(r[i]) for r in table) for i in range(3)]
    for r in table:
        _say(out, "  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3])


def _start_infra(args: argparse.Namespace, out: TextIO) -> tuple[LocalInfra, _Started]:
    layout = Layout(args.state_dir)
    _check_running_ports(layout, args)
    infra = LocalInfra(
        args.state_dir,
        kafka_port=args.kafka_port,
        kafka_controller_port=args.kafka_controller_port,
        mongo_port=args.mongo_port,
    )
    started = _Started()
    to_start = []
    for comp, name in ((infra.kafka, KAFKA), (infra.mongo, SECANTUSDB)):
        if comp.is_running():
            _say(out, f"{name}: already running (pid {comp.pid})")
        else:
            to_start.append(name)
    if to_start:
        t0 = time.monotonic()
        _say(out, f"starting {' and '.join(to_start)} ...")
        with _progress(out, lambda: " and ".join(to_start) + " to answer"):
            started.kafka, started.mongo = infra.start(timeout=args.infra_timeout)
        _say(out, f"{' and '.join(to_start)} ready in {time.monotonic() - t0:.1f}s")
    return infra, started


def _check_running_ports(layout: Layout, args: argparse.Namespace) -> None:
    """Refuse to 'reuse' a running broker/server that listens somewhere else than asked."""
    kcfg = layout.kafka_config(broker_port=args.kafka_port)
    if live_pid(kcfg.pid_file or layout.pid_file(KAFKA), kcfg.tag) is not None:
        try:
            props = kcfg.server_properties.read_text()
        except OSError:
            props = ""
        if f"PLAINTEXT://{HOST}:{args.kafka_port}," not in props:
            raise StartupError(
                f"Kafka from {layout.root} is already running on another port than "
                f"{args.kafka_port}; run 'crm-infra down' first"
            )
    mcfg = layout.mongo_config(port=args.mongo_port)
    if live_pid(mcfg.pid_file or layout.pid_file(SECANTUSDB), mcfg.tag) is not None:
        try:
            toml = mcfg.config_path.read_text()
        except OSError:
            toml = ""
        if f"port = {args.mongo_port}\n" not in toml:
            raise StartupError(
                f"SecantusDB from {layout.root} is already running on another port than "
                f"{args.mongo_port}; run 'crm-infra down' first"
            )


def _start_services(
    layout: Layout,
    infra: LocalInfra,
    specs: Sequence[tuple[ServiceSpec, int]],
    started: _Started,
    timeout: float,
    out: TextIO,
) -> list[tuple[str, int]]:
    """Spawn every service that is not running yet, then wait until all answer ready."""
    rows: list[tuple[str, int]] = []
    waiting: list[tuple[ServiceSpec, int, int]] = []
    for spec, port in specs:
        pid = live_pid(layout.pid_file(spec.name), layout.service_tag(spec.name))
        if pid is not None:
            running_port = _service_port(layout, spec.name) or port
            _say(out, f"{spec.name}: already running (pid {pid}) on port {running_port}")
            rows.append((spec.name, running_port))
            continue
        if port_open(HOST, port):
            raise StartupError(f"port {HOST}:{port} for {spec.name} is already in use")
        log = layout.log_file(spec.name)
        proc = spawn(
            spec.command(),
            log_path=log,
            tag=layout.service_tag(spec.name),
            env=service_env(infra.kafka_bootstrap, infra.mongo_url, port),
            pid_path=layout.pid_file(spec.name),
        )
        started.services.append((spec.name, proc.pid))
        waiting.append((spec, port, proc.pid))
        rows.append((spec.name, port))
        _say(out, f"{spec.name}: started (pid {proc.pid}) on port {port}")
    deadline = time.monotonic() + timeout
    pending = list(waiting)

    def still_waiting() -> str:
        names = [spec.name for spec, _, _ in list(pending)]
        return f"{', '.join(names)} to answer GET /health/ready" if names else ""

    with _progress(out, still_waiting):
        _await_ready(layout, pending, deadline, timeout, out)
    return rows


def _await_ready(
    layout: Layout, pending: list[tuple[ServiceSpec, int, int]], deadline: float, timeout: float, out: TextIO
) -> None:
    while pending:
        for item in list(pending):
            spec, port, pid = item
            log = layout.log_file(spec.name)
            if not pid_alive(pid):
                raise StartupError(format_failure(f"{spec.name} exited during start-up", [log]))
            if _http_ready(port, spec.ready_path):
                _say(out, f"{spec.name}: ready")
                pending.remove(item)
        if pending and time.monotonic() >= deadline:
            spec = pending[0][0]
            raise StartupError(
                format_failure(
                    f"{spec.name} did not answer GET {spec.ready_path} within {timeout:.0f}s",
                    [layout.log_file(spec.name)],
                )
            )
        if pending:
            time.sleep(0.25)


def _stop_started(layout: Layout, infra: LocalInfra | None, started: _Started, out: TextIO) -> None:
    for name, pid in reversed(started.services):
        _say(out, f"stopping {name} (pid {pid}) ...")
        stop_pid(pid, timeout=20.0)
        remove_pid(layout.pid_file(name), pid)
    if infra is not None and started.kafka:
        _say(out, "stopping Kafka ...")
        infra.kafka.stop()
    if infra is not None and started.mongo:
        _say(out, "stopping SecantusDB ...")
        infra.mongo.stop()
    started.services.clear()
    started.kafka = started.mongo = False


class _Stop(Exception):
    """Raised by our signal handler to unwind the foreground wait."""


def _wait_foreground(layout: Layout, infra: LocalInfra, started: _Started, out: TextIO) -> None:
    """Block until SIGINT/SIGTERM/SIGHUP, then stop what this invocation started.

    A service that dies meanwhile is reported once (with its log tail); the rest keep running.
    """
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, handler) for s in sigs}
    try:
        _say(out, "running; press Ctrl-C to stop everything started here")
        reported: set[int] = set()
        exited: set[int] = set()  # seen exited once: `down` removes its pid file right after
        while not stop.wait(1.0):
            for name, pid in started.services:
                if pid not in reported and not pid_alive(pid):  # pid_alive reaps our child
                    if read_pid(layout.pid_file(name)) != pid:
                        reported.add(pid)
                        _say(out, f"{name}: stopped (pid {pid})")
                        continue
                    if pid not in exited:
                        exited.add(pid)
                        continue
                    reported.add(pid)
                    log = layout.log_file(name)
                    _say(out, format_failure(f"warning: {name} (pid {pid}) exited", [log]))
            if _stopped_by_down(layout, infra, started):
                # `./crm down` from another terminal stopped everything: end rather than wait
                # on as the parent of its exited Kafka and database (zombies until we exit).
                _say(out, "everything started here has been stopped (./crm down)")
                started.services.clear()
                started.kafka = started.mongo = False
                break
    finally:
        # Handlers stay ours while stopping, so a second Ctrl-C cannot cut the clean-up short.
        _stop_started(layout, infra, started, out)
        _say(out, "stopped")
        for s, h in previous.items():
            signal.signal(s, h)


def _stopped_by_down(layout: Layout, infra: LocalInfra, started: _Started) -> bool:
    """True when ``down`` stopped everything this invocation started: none of it runs (each
    exited child is reaped on the way) and the services' pid files are gone. Services that
    crashed on their own keep their pid files, so the foreground goes on reporting them."""
    if not (started.services or started.kafka or started.mongo):
        return False
    for name, pid in started.services:
        if pid_alive(pid) or read_pid(layout.pid_file(name)) == pid:
            return False
    kafka = started.kafka and infra.kafka.is_running()
    mongo = started.mongo and infra.mongo.is_running()
    return not kafka and not mongo


def _cmd_up(args: argparse.Namespace, services: Sequence[ServiceSpec], out: TextIO) -> int:
    layout = Layout(args.state_dir)
    infra: LocalInfra | None = None
    started = _Started()
    # SIGTERM during start-up must still stop what was started: turn it into an exception.
    old_term = signal.signal(signal.SIGTERM, _raise_stop)
    try:
        infra, started = _start_infra(args, out)
        if args.command == "up":
            specs = [(s, int(getattr(args, _port_dest(s)))) for s in services]
            rows = _start_services(layout, infra, specs, started, args.timeout, out)
        else:
            rows = []
        _say(out)
        _print_table(out, layout, infra, rows)
        _say(out)
        _say(out, f"state dir: {layout.root}")
        _say(out, f"stop with: Ctrl-C, or ./crm down (crm-infra down --state-dir {layout.root})")
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        _stop_started(layout, infra, started, out)
        return 1
    except (_Stop, KeyboardInterrupt):
        _say(out, "interrupted")
        _stop_started(layout, infra, started, out)
        return 130
    except BaseException:
        _stop_started(layout, infra, started, out)
        raise
    finally:
        signal.signal(signal.SIGTERM, old_term)
    if args.foreground:
        _wait_foreground(layout, infra, started, out)
    return 0


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def _known_names(layout: Layout, services: Sequence[ServiceSpec]) -> list[str]:
    names = [s.name for s in services]
    if layout.pids.is_dir():
        for p in sorted(layout.pids.glob("*.pid")):
            if p.stem not in names and p.stem not in (KAFKA, SECANTUSDB):
                names.append(p.stem)
    return names


def _tag(layout: Layout, name: str) -> str:
    if name == KAFKA:
        return layout.kafka_config().tag
    if name == SECANTUSDB:
        return layout.mongo_config().tag
    return layout.service_tag(name)


def _stop_named(layout: Layout, names: Sequence[str], out: TextIO) -> None:
    for name in names:
        path = layout.pid_file(name)
        pid = read_pid(path)
        if pid is None:
            continue
        if live_pid(path, _tag(layout, name)) is None:
            _say(out, f"{name}: not running (removing stale pid file)")
            remove_pid(path, pid)
            continue
        _say(out, f"stopping {name} (pid {pid}) ...")
        stop_pid(pid, timeout=30.0)
        remove_pid(path, pid)


def _cmd_down(args: argparse.Namespace, services: Sequence[ServiceSpec], out: TextIO) -> int:
    layout = Layout(args.state_dir)
    names = [] if args.command == "infra-down" else _known_names(layout, services)
    _stop_named(layout, [*names, KAFKA, SECANTUSDB], out)
    _say(out, "down")
    return 0


def _cmd_status(args: argparse.Namespace, services: Sequence[ServiceSpec], out: TextIO) -> int:
    layout = Layout(args.state_dir)
    rows: list[tuple[str, str, str, str]] = [("COMPONENT", "STATE", "ADDRESS", "LOG")]
    for name in [KAFKA, SECANTUSDB, *_known_names(layout, services)]:
        path = layout.pid_file(name)
        pid = live_pid(path, _tag(layout, name))
        if pid is not None:
            state = f"running (pid {pid})"
        elif read_pid(path) is not None:
            state = "stale pid file"
        else:
            state = "stopped"
        if name == KAFKA:
            address = _kafka_address(layout)
        elif name == SECANTUSDB:
            address = _mongo_address(layout)
        else:
            port = _service_port(layout, name)
            address = f"http://{HOST}:{port}" if port else "-"
        rows.append((name, state, address, str(layout.log_file(name))))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        _say(out, "  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3])
    return 0


def _kafka_address(layout: Layout) -> str:
    try:
        for line in layout.kafka_config().server_properties.read_text().splitlines():
            if line.startswith("advertised.listeners="):
                return line.split("://", 1)[1]
    except OSError:
        pass
    return "-"


def _mongo_address(layout: Layout) -> str:
    import tomllib

    try:
        data = tomllib.loads(layout.mongo_config().config_path.read_text())
        return f"mongodb://{data['server']['host']}:{data['server']['port']}/?directConnection=true"
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "-"


def _port_dest(spec: ServiceSpec) -> str:
    return f"{spec.name.replace('-', '_')}_port"


def build_parser(services: Sequence[ServiceSpec] = SERVICES) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crm-infra", description="Run the CRM suite locally on Kafka and SecantusDB."
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        type=Path,
        default=Path.cwd() / ".crm",
        help="data, logs and pid files (default: ./.crm)",
    )
    infra_opts = argparse.ArgumentParser(add_help=False)
    infra_opts.add_argument("--kafka-port", type=int, default=9092)
    infra_opts.add_argument("--kafka-controller-port", type=int, default=9093)
    infra_opts.add_argument("--mongo-port", type=int, default=27017)
    infra_opts.add_argument(
        "--infra-timeout", type=float, default=120.0, help="seconds to wait for Kafka/SecantusDB"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", parents=[common, infra_opts], help="infrastructure + services")
    for spec in services:
        up.add_argument(
            f"--{spec.name}-port",
            dest=_port_dest(spec),
            type=int,
            default=spec.default_port,
            help=f"HTTP port of {spec.name} (default {spec.default_port})",
        )
    up.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for each service to be ready"
    )
    up.add_argument(
        "--foreground",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="stay until Ctrl-C/SIGTERM, then stop what was started (default)",
    )
    up.add_argument("--detach", dest="foreground", action="store_false", help="= --no-foreground")

    iup = sub.add_parser("infra-up", parents=[common, infra_opts], help="only Kafka + SecantusDB")
    iup.add_argument(
        "--foreground",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="stay until Ctrl-C/SIGTERM (default: return once ready)",
    )
    sub.add_parser("down", parents=[common], help="stop everything named by the pid files")
    sub.add_parser("infra-down", parents=[common], help="stop only Kafka + SecantusDB")
    sub.add_parser("status", parents=[common], help="show what runs where")
    sub.add_parser(
        "prepare",
        parents=[common],
        help="fetch Kafka's jars and build SecantusDB's Rust server now (the slow first-time set-up)",
    )
    return parser


def _cmd_prepare(out: TextIO) -> int:
    from crm_localinfra import secantus_rs
    from crm_localinfra.kafka import fetch_kafka

    t0 = time.monotonic()
    jars = fetch_kafka()
    _say(out, f"Apache Kafka: {len(jars)} jars ready ({time.monotonic() - t0:.0f}s)")
    kind = secantus_rs.resolve(out=out)
    where = secantus_rs.installed_binary() if kind == "rust" else "the Python server from PyPI"
    _say(out, f"SecantusDB: {kind} server ({where}); CRM_MONGO_SERVER=auto|rust|python chooses")
    return 0


def main(
    argv: Sequence[str] | None = None,
    *,
    services: Sequence[ServiceSpec] = SERVICES,
    out: TextIO | None = None,
) -> int:
    """Entry point of ``crm-infra``; ``services`` replaces :data:`SERVICES` (used by tests)."""
    stream = out or sys.stdout
    args = build_parser(services).parse_args(argv)
    args.state_dir = Path(args.state_dir).absolute()
    try:
        if args.command in ("up", "infra-up"):
            return _cmd_up(args, services, stream)
        if args.command in ("down", "infra-down"):
            return _cmd_down(args, services, stream)
        if args.command == "prepare":
            return _cmd_prepare(stream)
        return _cmd_status(args, services, stream)
    except BrokenPipeError:
        # `crm-infra status | head`: the reader left; not an error worth a traceback.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
