"""SecantusDB's Rust server (crate ``secantus-mdb``, binary ``secantusd-rs``), built with cargo.

Same wire protocol, storage engine (WiredTiger) and config file as the Python server, several
times faster per operation (see deploy/local/README.md for the side-by-side figures). It is the
default where it can be had; the Python server (a PyPI dependency, always present) is the
fallback. ``CRM_MONGO_SERVER`` chooses: ``auto`` (default: the Rust server, built on first use
if cargo is on PATH, else the Python one), ``rust`` (build it or fail) or ``python``.

The build compiles WiredTiger from C: about 7 minutes on two cores the first time, then cached
by cargo in its standard places (``~/.cargo``); the binary goes to ``$CARGO_HOME/bin``. The
crate declares rust-version 1.98 and builds with 1.95, hence ``--ignore-rust-version``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal, TextIO

from crm_localinfra._proc import StartupError
from crm_localinfra.kafka import _file_lock, cache_root

CRATE = "secantus-mdb"
VERSION = "0.5.3-beta.196"
BINARY = "secantusd-rs"
# Roughly the crates a clean build compiles, for a progress figure (cargo prints one line each).
_CRATES_IN_BUILD = 215

ServerKind = Literal["rust", "python"]
Preference = Literal["auto", "rust", "python"]


def preference() -> Preference:
    value = os.environ.get("CRM_MONGO_SERVER", "auto").strip().lower() or "auto"
    if value not in ("auto", "rust", "python"):
        raise StartupError(f"CRM_MONGO_SERVER must be auto, rust or python, not {value!r}")
    return value  # type: ignore[return-value]


def cargo_bin_dir() -> Path:
    home = os.environ.get("CARGO_HOME")
    return (Path(home) if home else Path.home() / ".cargo") / "bin"


def installed_binary() -> Path | None:
    """The pinned ``secantusd-rs`` if it is installed (a different version does not count)."""
    for candidate in (cargo_bin_dir() / BINARY, shutil.which(BINARY)):
        if candidate is None or not Path(candidate).is_file():
            continue
        try:
            reply = subprocess.run(
                [str(candidate), "--version"], capture_output=True, text=True, timeout=10, check=False
            )
        except OSError:
            continue
        if VERSION in reply.stdout + reply.stderr:
            return Path(candidate)
    return None


def build(out: TextIO = sys.stderr, timeout: float = 3600.0) -> Path:
    """``cargo install`` the pinned server (once; a file lock serialises concurrent callers),
    printing one progress line per compiled crate. Returns the binary."""
    cargo = shutil.which("cargo")
    if cargo is None:
        raise StartupError("cargo is not on PATH: cannot build SecantusDB's Rust server")
    with _file_lock(cache_root() / "secantus-rs.lock"):
        found = installed_binary()
        if found is not None:
            return found
        print(
            f"building {CRATE} {VERSION} with cargo (first time only, ~7 min on 2 cores) ...",
            file=out,
            flush=True,
        )
        started = time.monotonic()
        argv = [cargo, "install", CRATE, "--version", VERSION, "--ignore-rust-version", "--locked"]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        compiled = 0
        tail: list[str] = []
        for line in proc.stdout:
            tail = [*tail[-40:], line.rstrip()]
            if match := re.match(r"\s*Compiling (\S+)", line):
                compiled += 1
                elapsed = time.monotonic() - started
                print(
                    f"  [{compiled:>3}/~{_CRATES_IN_BUILD}] {elapsed:5.0f}s compiling {match.group(1)}",
                    file=out,
                    flush=True,
                )
            if time.monotonic() - started > timeout:
                proc.kill()
                raise StartupError(f"building {CRATE} took longer than {timeout:.0f}s")
        if proc.wait() != 0:
            raise StartupError(f"cargo install {CRATE} {VERSION} failed:\n" + "\n".join(tail))
        found = installed_binary()
        if found is None:
            raise StartupError(f"cargo installed {CRATE} but {BINARY} {VERSION} is not in {cargo_bin_dir()}")
        print(f"built {BINARY} in {time.monotonic() - started:.0f}s: {found}", file=out, flush=True)
        return found


def resolve(wanted: Preference | None = None, out: TextIO = sys.stderr) -> ServerKind:
    """Which server to run: the Rust one where it is installed or can be built, else Python."""
    wanted = wanted or preference()
    if wanted == "python":
        return "python"
    if installed_binary() is not None:
        return "rust"
    if wanted == "rust":
        build(out)
        return "rust"
    if shutil.which("cargo") is None:
        print("cargo not found: using SecantusDB's Python server", file=out, flush=True)
        return "python"
    try:
        build(out)
    except StartupError as exc:
        print(f"{exc}\nfalling back to SecantusDB's Python server", file=out, flush=True)
        return "python"
    return "rust"
