"""Choosing SecantusDB's server: the Rust one where it is installed or buildable, else Python."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from crm_localinfra import secantus_rs
from crm_localinfra._proc import StartupError
from crm_localinfra.mongo import MongoConfig, SecantusServer, ping


def _fake_binary(bin_dir: Path, version: str) -> Path:
    bin_dir.mkdir(parents=True, exist_ok=True)
    binary = bin_dir / secantus_rs.BINARY
    binary.write_text(f"#!/bin/sh\necho 'secantusd-rs {version}'\n")
    binary.chmod(binary.stat().st_mode | stat.S_IEXEC)
    return binary


def test_preference_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRM_MONGO_SERVER", raising=False)
    assert secantus_rs.preference() == "auto"
    monkeypatch.setenv("CRM_MONGO_SERVER", "Python")
    assert secantus_rs.preference() == "python"
    monkeypatch.setenv("CRM_MONGO_SERVER", "mongod")
    with pytest.raises(StartupError, match="auto, rust or python"):
        secantus_rs.preference()


def test_only_the_pinned_version_counts_as_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARGO_HOME", str(tmp_path))
    monkeypatch.setenv("PATH", "/nonexistent")
    _fake_binary(tmp_path / "bin", "0.0.1")
    assert secantus_rs.installed_binary() is None
    pinned = _fake_binary(tmp_path / "bin", secantus_rs.VERSION)
    assert secantus_rs.installed_binary() == pinned


def test_auto_falls_back_to_python_without_cargo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARGO_HOME", str(tmp_path))
    monkeypatch.setenv("PATH", "/nonexistent")
    assert secantus_rs.resolve("auto") == "python"
    assert secantus_rs.resolve("python") == "python"
    with pytest.raises(StartupError, match="cargo is not on PATH"):
        secantus_rs.resolve("rust")


def test_an_installed_rust_server_is_chosen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARGO_HOME", str(tmp_path))
    monkeypatch.setenv("PATH", "/nonexistent")
    _fake_binary(tmp_path / "bin", secantus_rs.VERSION)
    assert secantus_rs.resolve("auto") == "rust"
    assert secantus_rs.resolve("python") == "python"


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["rust", "python"])
def test_each_server_starts_answers_and_stops(kind: secantus_rs.ServerKind, tmp_path: Path) -> None:
    if kind == "rust" and secantus_rs.installed_binary() is None:
        pytest.skip("the Rust server is not built here (crm-infra prepare builds it)")
    from crm_localinfra._proc import free_ports

    (port,) = free_ports(1)
    server = SecantusServer(MongoConfig(data_dir=tmp_path, port=port, server=kind))
    server.start()  # also commits a two-collection transaction and reads it back
    try:
        pid = server.pid
        assert pid is not None
        reply = ping(server.url)
        assert reply is not None and reply.get("setName")  # a one-node replica set: transactions work
        exe = os.readlink(f"/proc/{pid}/exe")
        assert (secantus_rs.BINARY in exe) == (kind == "rust")
    finally:
        server.stop()
    assert ping(server.url, timeout=0.5) is None
