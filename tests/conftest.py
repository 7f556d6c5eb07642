"""Shared test fixtures. Every test is offline: nothing here reaches the network."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Each test gets its own empty ossrun home and never sees the user's."""
    home = tmp_path_factory.mktemp("ossrun-home")
    monkeypatch.setenv("OSSRUN_HOME", str(home))
    monkeypatch.delenv("OSSRUN_DEBUG", raising=False)
    return home


@pytest.fixture(scope="session")
def encoding():
    """The real gpt-oss harmony encoding, loaded offline from tests/data."""
    from ossrun import harmony

    return harmony.load_encoding(DATA)
