"""Helpers for testing easyetcon plugins: tiny offline models and the editor conformance suite.

Installed as a pytest plugin (``pytest11`` entry point), so the fixtures in
:mod:`easyetcon.testing.pytest_plugin` are available in every test suite::

    from easyetcon.testing import EditorConformance

    class TestMyEditor(EditorConformance):
        editor = "my-editor"
        options = {"learning_rate": 0.1}
        invalid_options = [{"learning_rate": -1}]
"""

from easyetcon.testing.conformance import EditorConformance
from easyetcon.testing.tiny import (
    ARCHITECTURES,
    tiny_learnable_requests,
    tiny_model,
    tiny_requests,
    tiny_tokenizer,
    tiny_torch_model,
)

__all__ = [
    "ARCHITECTURES",
    "EditorConformance",
    "tiny_learnable_requests",
    "tiny_model",
    "tiny_requests",
    "tiny_tokenizer",
    "tiny_torch_model",
]
