"""Shared fixtures: small plugins that exercise the host without any built-in plugin."""

from __future__ import annotations

import os

import pytest
import torch

from easyetcon.plugins import PluginHost, set_host
from tests import toy_plugins

IN_CI = bool(os.environ.get("CI"))


def require_example_plugin(host: PluginHost) -> None:
    """The example distribution is installed by CI; locally a missing install skips."""
    if not any(dist == "easyetcon-example-editor" for _, dist in host.plugins()):
        if IN_CI:
            pytest.fail("CI must install examples/easyetcon-example-editor (see .ci/run)")
        pytest.skip("examples/easyetcon-example-editor is not installed")


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny models run fastest on one thread, above all on a shared machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def toy_host(monkeypatch):
    """A host with every entry-point plugin blocked and the toy plugins registered."""
    monkeypatch.setenv("EASYETCON_BLOCK_PLUGINS", "*")
    host = PluginHost(plugins=[toy_plugins])
    set_host(host)
    yield host
    set_host(None)
