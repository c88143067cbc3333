"""Typed errors. Each names the record, field, option or plugin at fault and says what to do next."""

from __future__ import annotations


class EasyEtconError(Exception):
    """Base class of every error easyetcon raises on purpose."""


class PluginError(EasyEtconError):
    """A plugin could not be loaded or registered something invalid (duplicate name, bad class)."""


class UnknownNameError(EasyEtconError, KeyError):
    """A name (editor, dataset, metric, reward, adapter) is not registered."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class ConfigError(EasyEtconError, ValueError):
    """Options for an editor or a chain step failed validation. ``problems`` lists every one."""

    def __init__(self, message: str, problems: list[str] | None = None):
        self.problems = list(problems or [])
        if self.problems:
            message = message + "\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message)


class RequestError(EasyEtconError, ValueError):
    """An edit request (or a record of a request file) is malformed."""


class UnsupportedModelError(EasyEtconError):
    """No architecture adapter fits the model, and the structural fallback could not map it."""


class ChainStepError(EasyEtconError):
    """A chain step failed. The model has been restored to its state before the chain ran."""

    def __init__(self, message: str, *, step_index: int, editor: str, request_ids: list[str]):
        self.step_index = step_index
        self.editor = editor
        self.request_ids = request_ids
        super().__init__(message)


class StepVetoed(EasyEtconError):
    """A plugin's ``easyetcon_before_step`` hook refused to let a chain step run."""


class JournalError(EasyEtconError):
    """A journal on disk is missing, corrupted, or does not match the model it is applied to."""


class UndoError(EasyEtconError):
    """An edit record cannot be undone bit-exactly (e.g. a later step changed the same weights)."""


class ExportError(EasyEtconError):
    """An edit export (``easyetcon export``) is damaged, or does not fit the model it is applied to."""


class OffloadedWeightError(EasyEtconError):
    """A weight an editor needs is offloaded by accelerate: it lives on the ``meta`` device and is
    loaded from CPU memory or disk only during its module's forward pass, so it cannot be edited
    in place (see :mod:`easyetcon.devices`)."""


class RewardGateError(EasyEtconError):
    """GRPO's rewards can never be non-zero: no sampled answer of its first group passes the
    format gate (the answers are not in the answer format the rewards expect)."""
