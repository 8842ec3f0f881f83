"""``crm-infra`` end to end with fake services: infra-up, foreground up, detached up, status,
down, and down from another terminal ending a foreground up; start-up progress."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from crm_localinfra._proc import free_ports, pid_alive, read_pid
from crm_localinfra.cli import SERVICES, ServiceSpec, _progress, main

# A stand-in for a service: answers /health/ready with the CRM_* environment it was given.
FAKE_SERVICE = """
import http.server, json, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != "/health/ready":
            self.send_response(404); self.end_headers(); return
        body = json.dumps({k: v for k, v in os.environ.items() if k.startswith("CRM_")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
print("fake service listening", flush=True)
http.server.HTTPServer((os.environ["CRM_HTTP_HOST"], int(os.environ["CRM_HTTP_PORT"])), H).serve_forever()
"""

BROKEN_SERVICE = "import sys; print('boom: no such thing', flush=True); sys.exit(3)"

RUNNER = """
import sys
from crm_localinfra.cli import ServiceSpec, main
code = open(sys.argv[1]).read()
specs = [ServiceSpec(n, "unused", 0, argv=(sys.executable, "-c", code)) for n in ("alpha", "beta")]
raise SystemExit(main(sys.argv[2:], services=specs))
"""


def _fakes() -> list[ServiceSpec]:
    return [ServiceSpec(n, "unused", 0, argv=(sys.executable, "-c", FAKE_SERVICE)) for n in ("alpha", "beta")]


def _run(argv: list[str], services: list[ServiceSpec]) -> tuple[int, str]:
    out = io.StringIO()
    rc = main(argv, services=services, out=out)
    return rc, out.getvalue()


def _get_json(url: str) -> dict[str, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as resp:
        data: dict[str, str] = json.loads(resp.read())
    return data


def test_services_constant_names_the_four_services() -> None:
    assert [(s.name, s.module, s.default_port) for s in SERVICES] == [
        ("leads", "crm_leads", 8101),
        ("opportunities", "crm_opportunities", 8102),
        ("campaigns", "crm_campaigns", 8103),
        ("reporting", "crm_reporting", 8104),
    ]
    assert SERVICES[0].command()[1:] == ["-m", "crm_leads"]


@pytest.mark.integration
def test_cli_up_status_down(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / ".crm"
    kport, cport, mport, aport, bport = free_ports(5)
    infra_args = [
        "--state-dir",
        str(state),
        "--kafka-port",
        str(kport),
        "--kafka-controller-port",
        str(cport),
        "--mongo-port",
        str(mport),
    ]
    svc_args = ["--alpha-port", str(aport), "--beta-port", str(bport), "--timeout", "30"]
    fakes = _fakes()
    pids_dir = state / "pids"
    try:
        # 1. Only the infrastructure, detached.
        rc, out = _run(["infra-up", *infra_args], fakes)
        assert rc == 0, out
        kafka_pid = read_pid(pids_dir / "kafka.pid")
        mongo_pid = read_pid(pids_dir / "secantusdb.pid")
        assert kafka_pid and pid_alive(kafka_pid) and mongo_pid and pid_alive(mongo_pid)
        assert (state / "logs" / "kafka.log").stat().st_size > 0
        assert (state / "logs" / "secantusdb.log").exists()

        # 2. A service that dies at start: up fails, shows its log, stops what it started.
        broken = [*fakes[:1], ServiceSpec("broken", "unused", 0, argv=(sys.executable, "-c", BROKEN_SERVICE))]
        broken_args = ["--alpha-port", str(aport), "--broken-port", str(free_ports(1)[0])]
        rc, out = _run(["up", "--detach", *infra_args, *broken_args], broken)
        assert rc == 1
        assert "boom: no such thing" in capsys.readouterr().err
        assert not (pids_dir / "alpha.pid").exists() and not (pids_dir / "broken.pid").exists()
        assert pid_alive(kafka_pid) and pid_alive(mongo_pid)  # not started by that run

        # 3. Foreground up in a child process: prints the table, SIGTERM stops what it started.
        code_file = tmp_path / "fake_service.py"
        code_file.write_text(FAKE_SERVICE)
        fg = subprocess.Popen(
            [sys.executable, "-c", RUNNER, str(code_file), "up", *infra_args, *svc_args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert fg.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = fg.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("running;"):
                break
        text = "".join(lines)
        assert "running; press Ctrl-C" in text, text
        assert f"http://127.0.0.1:{aport}/docs" in text and f"http://127.0.0.1:{bport}/docs" in text
        fg_pids = [read_pid(pids_dir / "alpha.pid"), read_pid(pids_dir / "beta.pid")]
        assert all(p is not None and pid_alive(p) for p in fg_pids)
        fg.send_signal(signal.SIGTERM)
        rest, _ = fg.communicate(timeout=60)
        assert fg.returncode == 0, text + rest
        assert "stopping alpha" in rest and "stopping Kafka" not in rest
        for p in fg_pids:
            assert p is not None and _gone(p)
        assert pid_alive(kafka_pid) and pid_alive(mongo_pid)

        # 4. Detached up: reuses the running infra, starts the services, prints the table.
        rc, out = _run(["up", "--detach", *infra_args, *svc_args], fakes)
        assert rc == 0, out
        assert "kafka: already running" in out
        for name, port in (("alpha", aport), ("beta", bport)):
            assert f"http://127.0.0.1:{port}/docs" in out
            assert str(state / "logs" / f"{name}.log") in out
        env = _get_json(f"http://127.0.0.1:{aport}/health/ready")
        assert env["CRM_KAFKA_BOOTSTRAP_SERVERS"] == f"127.0.0.1:{kport}"
        assert env["CRM_MONGO_URL"] == f"mongodb://127.0.0.1:{mport}/?directConnection=true"
        assert env["CRM_HTTP_HOST"] == "127.0.0.1" and env["CRM_HTTP_PORT"] == str(aport)

        rc, out = _run(["status", "--state-dir", str(state)], fakes)
        assert rc == 0
        assert out.count("running (pid") == 4, out
        assert f"http://127.0.0.1:{bport}" in out

        all_pids = [read_pid(pids_dir / f"{n}.pid") for n in ("kafka", "secantusdb", "alpha", "beta")]
        assert all(p is not None for p in all_pids)

        # 5. down stops everything named by the pid files.
        rc, out = _run(["down", "--state-dir", str(state)], fakes)
        assert rc == 0
        assert out.index("stopping alpha") < out.index("stopping kafka") < out.index("stopping secantusdb")
        for p in all_pids:
            assert p is not None and _gone(p), f"pid {p} still running"
        assert list(pids_dir.glob("*.pid")) == []
        rc, out = _run(["status", "--state-dir", str(state)], fakes)
        assert "running (pid" not in out
    finally:
        _run(["down", "--state-dir", str(state)], fakes)


def _gone(pid: int) -> bool:
    """True once ``pid`` no longer exists at all (exited and reaped)."""
    if pid_alive(pid):  # also reaps it if it was our child
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_progress_says_what_start_up_still_waits_for_and_how_long() -> None:
    out = io.StringIO()
    waiting = ["kafka and secantusdb to answer"]
    with _progress(out, lambda: waiting[0], every=0.05):
        deadline = time.monotonic() + 30
        while "waiting for" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
        waiting[0] = ""  # nothing left: no more lines
    assert re.search(r"^  waiting for kafka and secantusdb to answer \(\d+s so far\)$", out.getvalue(), re.M)


@pytest.mark.integration
def test_down_from_another_terminal_ends_a_foreground_up(tmp_path: Path) -> None:
    state = tmp_path / ".crm"
    kport, cport, mport, aport, bport = free_ports(5)
    ports = ["--kafka-port", str(kport), "--kafka-controller-port", str(cport), "--mongo-port", str(mport)]
    services = ["--alpha-port", str(aport), "--beta-port", str(bport), "--timeout", "60"]
    code_file = tmp_path / "fake_service.py"
    code_file.write_text(FAKE_SERVICE)
    fg = subprocess.Popen(
        [sys.executable, "-c", RUNNER, str(code_file), "up", "--state-dir", str(state), *ports, *services],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert fg.stdout is not None
        lines: list[str] = []
        for line in fg.stdout:
            lines.append(line)
            if line.startswith("running;"):
                break
        assert "running; press Ctrl-C" in "".join(lines), "".join(lines)
        pids = [read_pid(state / "pids" / f"{n}.pid") for n in ("kafka", "secantusdb", "alpha", "beta")]

        rc, out = _run(["down", "--state-dir", str(state)], _fakes())
        assert rc == 0, out
        # The foreground notices, reaps its children (no zombie Kafka or database) and ends.
        rest, _ = fg.communicate(timeout=120)
        assert fg.returncode == 0, "".join(lines) + rest
        assert "everything started here has been stopped (./crm down)" in rest, rest
        assert "alpha: stopped" in rest and "warning" not in rest, rest
        for pid in pids:
            assert pid is not None and _gone(pid), f"pid {pid} still running"
    finally:
        if fg.poll() is None:
            fg.send_signal(signal.SIGTERM)
            fg.communicate(timeout=120)
        _run(["down", "--state-dir", str(state)], _fakes())
