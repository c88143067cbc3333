"""Sphinx configuration of the easyetcon documentation.

Build with ``python -m sphinx -W --keep-going -b html docs docs/_build/html``. Autodoc imports
the installed ``easyetcon`` package (``pip install -e .``), so the API pages always show the
code as it is.
"""

from __future__ import annotations

import importlib.metadata

project = "easyetcon"
author = "the easyetcon authors"
copyright = "the easyetcon authors"
release = importlib.metadata.version("easyetcon")
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "myst_parser",
    "sphinxcontrib.autodoc_pydantic",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# ---- MyST ------------------------------------------------------------------------------------
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# ---- autodoc ---------------------------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autodoc_class_signature = "mixed"

# ---- autodoc-pydantic: show fields with their constraints, not the validator plumbing ----------
autodoc_pydantic_model_show_json = False
autodoc_pydantic_model_show_config_summary = False
autodoc_pydantic_model_show_validator_summary = False
autodoc_pydantic_model_show_validator_members = False
autodoc_pydantic_model_show_field_summary = True
autodoc_pydantic_model_member_order = "bysource"
autodoc_pydantic_model_summary_list_order = "bysource"
autodoc_pydantic_field_list_validators = False
autodoc_pydantic_field_show_constraints = True

# ---- HTML ------------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"easyetcon {release}"


# ---- docstrings of attributes are prose -------------------------------------------------------
def _attribute_docstrings_are_prose(app, what, name, obj, options, lines):
    """Keep napoleon from reading an attribute docstring's first line as ``type: description``.

    easyetcon takes attribute types from annotations, and its ``#:`` comments are prose, e.g.
    ``#: Mode used for the edit: "sequential" or "batch".``. Napoleon would render "Mode used
    for the edit" as the type. An empty reST comment (``..``) in front gives napoleon a first
    line without a colon and renders as nothing.
    """
    if what in ("attribute", "data", "property") and lines and ":" in lines[0]:
        lines[:0] = ["..", ""]


def setup(app):
    # Must run before napoleon's own autodoc-process-docstring handler (priority 500).
    app.connect("autodoc-process-docstring", _attribute_docstrings_are_prose, priority=400)
