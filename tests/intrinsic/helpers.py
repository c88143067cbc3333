"""Requests and options that tiny random models can be edited with, and the fact-world model.

A random 3-layer model with hidden size 32 barely moves information between positions, so a
change written at the subject's last token (ROME, MEMIT, AlphaEdit) only reaches the output when
the subject ends the prompt. These requests are built that way and have one-token targets in the
tiny tokenizer; the fact world's pretrained model (when shipped) is edited with ordinary prompts.
"""

from __future__ import annotations

from typing import Any

from easyetcon.locate import KeyOptions, ValueOptions
from easyetcon.requests import EditRequest

#: Statistics that take a second to collect on a tiny model (texts sampled from the model itself).
TINY_STATISTICS = {"source": "model-samples", "samples": 32, "max_length": 32, "batch_size": 16, "progress": False}

#: Value optimisation strong enough for a random model (whose MLP outputs are tiny).
STRONG_VALUES = {
    "prefixes": 2, "prefix_source": "fixed", "steps": 20, "weight_decay": 0.0, "kl_factor": 0.0,
    "clamp_norm_factor": 1e4, "statistics": TINY_STATISTICS,
}


def sectioned(options: dict[str, Any]) -> dict[str, Any]:
    """Locate-then-edit options written flat here (flat dicts combine with ``**``) in the form the
    editors read: the key and value options under ``key:`` and ``value:``."""
    result = {name: value for name, value in options.items() if name not in KeyOptions.model_fields and name not in ValueOptions.model_fields}
    for section, fields in (("key", KeyOptions.model_fields), ("value", ValueOptions.model_fields)):
        part = {name: value for name, value in options.items() if name in fields}
        if part:
            result[section] = part
    return result


def subject_final_requests() -> list[EditRequest]:
    return [
        EditRequest(
            prompt="The mother tongue of Danielle Darrieux", subject="Danielle Darrieux", target_new="Paris",
            ground_truth="French", case_id="end-0",
        ),
        EditRequest(
            prompt="Where is the Eiffel Tower", subject="Eiffel Tower", target_new="guitar",
            ground_truth="Paris", case_id="end-1",
        ),
    ]


def world_model(name: str = "default"):
    """A shipped fact-world model as an EditableModel, or ``None`` when it is not shipped."""
    try:
        from easyetcon_world import has_shipped_model, shipped_model_path
    except ImportError:
        return None
    if not has_shipped_model(name):
        return None
    from easyetcon.model import load_model

    return load_model(shipped_model_path(name))


#: MEND training that takes a couple of seconds on a tiny model and makes its edits land there.
TINY_MEND = {"steps": 100, "rank": 8, "initial_step": 3.0, "edit_weight": 1.0}
_MEND_FILES: dict[str, str] = {}


def mend_hypernetwork(architecture: str = "llama") -> str:
    """The file of a MEND hypernetwork trained (once per test process) for the tiny
    ``architecture`` model on the tiny learnable requests, with :data:`TINY_MEND`."""
    if architecture not in _MEND_FILES:
        import atexit
        import shutil
        import tempfile
        from pathlib import Path

        from easyetcon_intrinsic.mend import train_mend

        from easyetcon.testing import tiny_learnable_requests, tiny_model

        folder = Path(tempfile.mkdtemp(prefix="easyetcon-mend-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        hypernetwork = train_mend(tiny_model(architecture), tiny_learnable_requests(), TINY_MEND)
        _MEND_FILES[architecture] = str(hypernetwork.save(folder / f"mend-{architecture}.safetensors"))
    return _MEND_FILES[architecture]
