"""easyetcon: edit the knowledge of language models, then consolidate it."""

from easyetcon.chain import ChainResult, EditChain, StepContext
from easyetcon.hookspecs import hookimpl
from easyetcon.journal import Journal
from easyetcon.model import EditableModel, load_model
from easyetcon.plugins import PluginHost, get_host
from easyetcon.registry import Family
from easyetcon.requests import EditRequest, Probe, load_requests, parse_requests

__version__ = "0.1.0"

__all__ = [
    "ChainResult",
    "EditChain",
    "EditRequest",
    "EditableModel",
    "Family",
    "Journal",
    "PluginHost",
    "Probe",
    "StepContext",
    "__version__",
    "get_host",
    "hookimpl",
    "load_model",
    "load_requests",
    "parse_requests",
]
