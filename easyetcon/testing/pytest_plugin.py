"""pytest fixtures for easyetcon plugin authors (loaded through the ``pytest11`` entry point)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from easyetcon.plugins import PluginHost, get_host, set_host
from easyetcon.testing.tiny import ARCHITECTURES, tiny_model, tiny_requests


@pytest.fixture
def easyetcon_host() -> Iterator[PluginHost]:
    """A freshly loaded plugin host, installed as the process-wide host for the test."""
    previous = get_host.__globals__["_default_host"]
    host = PluginHost()
    set_host(host)
    yield host
    set_host(previous)


@pytest.fixture
def tiny_model_factory(easyetcon_host: PluginHost) -> Callable[..., Any]:
    """``tiny_model_factory("gpt2", seed=0)`` builds a tiny random EditableModel."""

    def make(architecture: str = "llama", *, seed: int = 0) -> Any:
        return tiny_model(architecture, seed=seed, registry=easyetcon_host.registry)

    return make


@pytest.fixture
def edit_requests() -> list:
    """A few counterfactual edit requests that tiny models can be edited with."""
    return tiny_requests()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run conformance checks once per architecture listed on the test class (every tiny
    architecture where the class lists none)."""
    if "conformance_architecture" in metafunc.fixturenames:
        architectures = getattr(metafunc.cls, "architectures", ARCHITECTURES)
        metafunc.parametrize("conformance_architecture", list(architectures))
