"""Fixtures of the dataset tests: a host with only the data plugin, and the shared real files."""

from pathlib import Path

import pytest

import easyetcon_data.plugin
from easyetcon.plugins import PluginHost, get_host, set_host

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def data_host():
    previous = get_host.__globals__["_default_host"]
    host = PluginHost(load_entry_points=False, plugins=[easyetcon_data.plugin])
    set_host(host)
    yield host
    set_host(previous)


@pytest.fixture
def shared_data():
    """``../shared/data`` next to the repository; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real benchmark files not found at {SHARED_DATA}")
    return SHARED_DATA
