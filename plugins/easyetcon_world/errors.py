"""Errors of the fact world. They subclass the core's typed errors so callers can catch either."""

from __future__ import annotations

from easyetcon.errors import ConfigError, RequestError


class WorldConfigError(ConfigError):
    """A world or training option is invalid (unknown preset, negative size, ...)."""


class WorldRecordError(RequestError):
    """A record of an edit-dataset file cannot become part of a world (e.g. it has no ground truth)."""


class WorldCacheError(ConfigError):
    """A cached or shipped world directory is missing files or was corrupted."""
