"""The generated secantusd.toml (no server started)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from crm_localinfra.mongo import MongoConfig, _toml

UNITS = {"M": 2**20, "G": 2**30}


def test_default_cache_outgrows_a_100k_lead_import(tmp_path: Path) -> None:
    """At 256M the Rust server stalled 60 s at a time from ~75,000 imported leads on (the data
    outgrew WiredTiger's cache, deploy/local/README.md); the default must leave room."""
    storage = tomllib.loads(_toml(MongoConfig(data_dir=tmp_path, server="rust")))["storage"]
    size = storage["cache_size"]
    assert int(size[:-1]) * UNITS[size[-1]] >= 2**30


def test_a_chosen_cache_reaches_the_server(tmp_path: Path) -> None:
    config = MongoConfig(data_dir=tmp_path, cache_size="3G")
    assert tomllib.loads(_toml(config))["storage"]["cache_size"] == "3G"
