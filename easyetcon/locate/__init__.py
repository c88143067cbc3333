"""Primitives of locate-then-edit editors (ROME, MEMIT, AlphaEdit and any new one).

The core holds them, so an editor in any plugin builds on the same tested parts and no plugin
imports another's modules:

* :mod:`.editor`: the shared options (``key:``, ``value:``, ``statistics:``), the per-model memos
  and the request-shaped steps (:class:`LocateThenEdit`, :class:`EditSites`);
* :mod:`.keys`: keys at the fact token, prefixes, :class:`KeyOptions`;
* :mod:`.values`: the ``δ`` optimisation, :class:`ValueOptions`;
* :mod:`.layers`: which layers (depth defaults, causal tracing);
* :mod:`.solve`: the closed-form updates and their factorisations.

Key statistics are :mod:`easyetcon.statistics`; forward-hook helpers :mod:`easyetcon.activations`.
"""

from easyetcon.locate.editor import (
    EditSites,
    FlatOptionsWarning,
    LocateThenEdit,
    LocateThenEditConfig,
    SpanConfig,
    with_defaults,
)
from easyetcon.locate.keys import KeyOptions, LocatedRequest
from easyetcon.locate.values import ValueOptions

__all__ = [
    "EditSites", "FlatOptionsWarning", "KeyOptions", "LocateThenEdit", "LocateThenEditConfig", "LocatedRequest",
    "SpanConfig", "ValueOptions", "with_defaults",
]
