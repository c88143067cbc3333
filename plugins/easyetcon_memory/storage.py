"""Memory stores on disk, and the errors the memory editors share.

A saved memory is a folder with ``memory.json`` (the editor's name and options, the store's
name, each entry's id and JSON data) and ``tensors.safetensors`` (each entry's tensors under
``"<entry id>/<tensor name>"``). :func:`load_memory` puts the entries back under the same ids
and attaches a fresh editor with the saved options, so a model answers exactly as before.

The edit journal keeps the same information step by step
(:meth:`easyetcon.journal.Journal.restore_memories`); a saved folder is the whole memory in
one place, e.g. to ship it beside a model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from easyetcon.errors import EasyEtconError, JournalError
from easyetcon.journal import write_json_atomic
from easyetcon.records import MemoryEntry, MemoryStore

MEMORY_FORMAT = "easyetcon-memory/1"


class EmptyMemoryError(EasyEtconError, LookupError):
    """A memory was queried explicitly (``lookup``) before any edit was stored in it."""


def require_entries(store: MemoryStore, what: str) -> None:
    """Raise :class:`EmptyMemoryError` naming ``what`` when ``store`` has no entries."""
    if len(store) == 0:
        raise EmptyMemoryError(
            f"{what} {store.name!r} is empty: apply an edit with it first (EditChain.apply), or "
            f"load a saved memory with easyetcon_memory.load_memory"
        )


def save_memory(directory: str | Path, model: Any, step: Any) -> Path:
    """Save the memory of chain step ``step`` (a :class:`easyetcon.chain.ChainStep`, e.g.
    ``chain.steps[0]``) of ``model`` to ``directory``; returns the folder."""
    store = model.memory_store(step.name)
    return save_store(directory, store, editor=step.info.name, config=step.config.model_dump(mode="json"))


def save_store(directory: str | Path, store: MemoryStore, *, editor: str, config: dict[str, Any]) -> Path:
    """Write every entry of ``store`` (tensors first, then the index) to ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    entries = []
    for entry_id, entry in store.items():
        entries.append({"id": entry_id, "data": entry.data, "tensors": sorted(entry.tensors)})
        for key, value in entry.tensors.items():
            tensors[f"{entry_id}/{key}"] = value.detach().to("cpu").contiguous()
    save_file(tensors, str(directory / "tensors.safetensors"))
    index = {"format": MEMORY_FORMAT, "store": store.name, "editor": editor, "config": config, "entries": entries}
    write_json_atomic(directory / "memory.json", index)
    return directory


def read_store(directory: str | Path) -> tuple[dict[str, Any], dict[str, MemoryEntry]]:
    """``(index, entries by id)`` of a saved memory folder; a clear error if it is not one."""
    directory = Path(directory)
    index_path = directory / "memory.json"
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        if index.get("format") != MEMORY_FORMAT:
            raise ValueError(f"format is {index.get('format')!r}, expected {MEMORY_FORMAT!r}")
        tensors = load_file(str(directory / "tensors.safetensors"))
        entries = {
            item["id"]: MemoryEntry(item["data"], {k: tensors[f"{item['id']}/{k}"] for k in item["tensors"]})
            for item in index["entries"]
        }
    except (OSError, KeyError, ValueError) as error:
        raise JournalError(f"{str(directory)!r} is not a saved easyetcon memory: {error}") from error
    return index, entries


def load_memory(directory: str | Path, model: Any, *, registry: Any = None, store_name: str | None = None) -> Any:
    """Load a memory saved by :func:`save_memory` into ``model`` and attach its editor.

    The entries replace whatever the store called ``store_name`` (default: the saved name)
    held. Returns the editor, whose ``lookup`` answers queries against the loaded memory.
    """
    if registry is None:
        from easyetcon.plugins import get_host

        registry = get_host().registry
    index, entries = read_store(directory)
    name = store_name or index["store"]
    store = model.memory_store(name)
    for entry_id in store.ids():
        store.remove(entry_id)
    store.apply_states(dict(entries))
    editor = registry.editor(index["editor"]).create(index["config"])
    editor.attach(model, store)
    model.attached_memories[name] = editor
    return editor


class StoreCache:
    """A value derived from a store's entries (stacked keys, an index), rebuilt only when the
    store changed. Entries are immutable objects replaced on every write, so comparing them by
    identity detects any add, change or removal."""

    def __init__(self) -> None:
        self._entries: tuple[MemoryEntry, ...] = ()
        self._value: Any = None
        self._valid = False

    def get(self, store: MemoryStore, build: Any) -> Any:
        entries = tuple(entry for _, entry in store.items())
        fresh = self._valid and len(entries) == len(self._entries) and all(
            a is b for a, b in zip(entries, self._entries)
        )
        if not fresh:
            self._value, self._entries, self._valid = build(store.items()), entries, True
        return self._value
