"""Fixtures of the intrinsic-editing tests: a private statistics cache, tiny requests, the world model."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def private_statistics_cache(tmp_path_factory, monkeypatch):
    """Key statistics are cached under a per-session folder, never in the user's ~/.cache."""
    folder = tmp_path_factory.getbasetemp() / "easyetcon-cache"
    monkeypatch.setenv("EASYETCON_CACHE", str(folder))
    return folder / "stats"
