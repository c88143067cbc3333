"""easyetcon: edit the knowledge of language models, then consolidate it.

The names below are imported on first use (PEP 562), so ``import easyetcon`` and the
``easyetcon`` command start without loading torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from easyetcon.lazy import lazy_exports

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS = {
    "ChainResult": "easyetcon.chain",
    "EditChain": "easyetcon.chain",
    "StepContext": "easyetcon.chain",
    "hookimpl": "easyetcon.hookspecs",
    "Journal": "easyetcon.journal",
    "EditableModel": "easyetcon.model",
    "load_model": "easyetcon.model",
    "PluginHost": "easyetcon.plugins",
    "get_host": "easyetcon.plugins",
    "Family": "easyetcon.registry",
    "EditRequest": "easyetcon.requests",
    "Probe": "easyetcon.requests",
    "load_requests": "easyetcon.requests",
    "parse_requests": "easyetcon.requests",
}

__all__ = [*sorted(_EXPORTS), "__version__"]

if TYPE_CHECKING:
    from easyetcon.chain import ChainResult, EditChain, StepContext
    from easyetcon.hookspecs import hookimpl
    from easyetcon.journal import Journal
    from easyetcon.model import EditableModel, load_model
    from easyetcon.plugins import PluginHost, get_host
    from easyetcon.registry import Family
    from easyetcon.requests import EditRequest, Probe, load_requests, parse_requests


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
