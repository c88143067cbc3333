"""Requests and models shared by the memory tests."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any

from easyetcon.requests import EditRequest, Probe


def world_model() -> Any | None:
    """The fact world's shipped model as an EditableModel, or None while it is not there."""
    try:
        from easyetcon_world.shipped import default_model_path, has_default_model
    except ImportError:
        return None
    if not has_default_model():
        return None
    from easyetcon.model import load_model
    from easyetcon.plugins import get_host

    return load_model(default_model_path(), registry=get_host().registry)


def world_requests(n: int, split: str = "test", seed: int = 0) -> list[EditRequest]:
    from easyetcon_world.edits import make_edit_requests
    from easyetcon_world.shipped import default_model_path, load_world
    from easyetcon_world.world import build_world

    try:
        world = load_world(default_model_path())
    except Exception:  # noqa: BLE001 - fall back to regenerating the default world
        world = build_world("default", 0)
    return make_edit_requests(world, split, n, seed)


def people_requests() -> list[EditRequest]:
    """Edits of two relations of made-up people, with rephrases and locality probes."""
    return [
        EditRequest(
            prompt="Zarvik Tollen lives in the city of",
            subject="Zarvik Tollen",
            target_new="Pelmora",
            relation="lives_in",
            rephrase_prompts=["The city where Zarvik Tollen lives is", "Zarvik Tollen currently lives in"],
            locality=[
                Probe(prompt="Zarvik Tollen works for", answer="Kridaim"),
                Probe(prompt="Mira Selvane lives in the city of", answer="Vastria"),
            ],
        ),
        EditRequest(
            prompt="Ostra Welling works for",
            subject="Ostra Welling",
            target_new="Tessaline Partners",
            relation="works_for",
            rephrase_prompts=["The employer of Ostra Welling is", "Ostra Welling is employed by"],
            locality=[
                Probe(prompt="Ostra Welling lives in the city of", answer="Draiport"),
                Probe(prompt="Bruno Kasset works for", answer="Lumen Works"),
            ],
        ),
    ]


@functools.lru_cache(maxsize=None)
def serac_classifier_file() -> str:
    """A serac scope classifier (TF-IDF features, so no embedding model loads) trained in well
    under a second on :func:`people_requests`, saved once per test session in a temporary
    folder removed at exit (conformance and placement options need a path at class level)."""
    from easyetcon_memory import train_serac_classifier

    folder = tempfile.mkdtemp(prefix="serac-classifier-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    classifier = train_serac_classifier(people_requests(), retriever="tfidf", epochs=100, hidden=16)
    return str(classifier.save(Path(folder) / "classifier.safetensors"))



def birthplace_request() -> EditRequest:
    """A third edit beside :func:`people_requests`, of a third relation, with a rephrase and a
    same-subject locality probe."""
    return EditRequest(
        prompt="Lira Montague was born in the city of",
        subject="Lira Montague",
        target_new="Quellport",
        relation="born_in",
        rephrase_prompts=["The birthplace of Lira Montague is"],
        locality=[Probe(prompt="Lira Montague works for", answer="Brightwater")],
    )
