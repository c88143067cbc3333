"""Fixtures of the intrinsic-editing tests: a private statistics cache, tiny requests, the world model."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny models run fastest on one thread, above all on a shared machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def private_statistics_cache(tmp_path_factory, monkeypatch):
    """Key statistics are cached under a per-session folder, never in the user's ~/.cache."""
    folder = tmp_path_factory.getbasetemp() / "easyetcon-cache"
    monkeypatch.setenv("EASYETCON_CACHE", str(folder))
    return folder / "stats"
