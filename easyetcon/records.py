"""Edit records: what a chain step changed, kept so the step can be undone bit-exactly,
replayed, and saved (tensors with safetensors, the rest as JSON)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from easyetcon.errors import JournalError, UndoError

# ------------------------------------------------------------------------------------------
# Weights
# ------------------------------------------------------------------------------------------


def snapshot_weights(model: Any, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Copies (on CPU) of the named parameters of an :class:`~easyetcon.EditableModel`."""
    return {name: model.parameter(name).detach().to("cpu", copy=True) for name in dict.fromkeys(names)}


def write_weights(model: Any, tensors: dict[str, torch.Tensor]) -> None:
    """Copy ``tensors`` into the model's parameters of the same names, bit for bit."""
    with torch.no_grad():
        for name, value in tensors.items():
            parameter = model.parameter(name)
            parameter.copy_(value.to(device=parameter.device, dtype=parameter.dtype))


@dataclass
class WeightDelta:
    """Each changed parameter's value before and after a step."""

    before: dict[str, torch.Tensor]
    after: dict[str, torch.Tensor]

    @classmethod
    def between(cls, before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> WeightDelta:
        """Keep only the parameters that really changed."""
        changed = [name for name in before if not torch.equal(before[name], after[name])]
        return cls({n: before[n] for n in changed}, {n: after[n] for n in changed})

    @property
    def names(self) -> list[str]:
        return list(self.before)

    def check_current(self, model: Any, expected: dict[str, torch.Tensor], action: str) -> None:
        stale = [
            name for name, value in expected.items()
            if not torch.equal(model.parameter(name).detach().to("cpu"), value)
        ]
        if stale:
            raise UndoError(
                f"cannot {action}: parameter(s) {', '.join(stale[:3])} changed since this step "
                f"(a later step edited them); undo later steps first"
            )

    def numel(self) -> int:
        return sum(t.numel() for t in self.before.values())


# ------------------------------------------------------------------------------------------
# External memory
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryEntry:
    """One entry of a memory store: JSON-serialisable ``data`` and named ``tensors``."""

    data: dict[str, Any]
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def same_as(self, other: MemoryEntry | None) -> bool:
        return (
            other is not None
            and self.data == other.data
            and self.tensors.keys() == other.tensors.keys()
            and all(torch.equal(self.tensors[k], other.tensors[k]) for k in self.tensors)
        )


@dataclass
class MemoryDelta:
    """The entries of one store a step added, changed or removed (``None`` = absent)."""

    store: str
    before: dict[str, MemoryEntry | None] = field(default_factory=dict)
    after: dict[str, MemoryEntry | None] = field(default_factory=dict)


def _same_state(before: MemoryEntry | None, after: MemoryEntry | None) -> bool:
    if before is None or after is None:
        return before is after
    return after.same_as(before)


class MemoryStore:
    """An ordered key-value store of :class:`MemoryEntry` objects owned by a memory editor.

    Writes inside :meth:`tracking` are recorded in a :class:`MemoryDelta`, which is how the
    chain makes memory edits undoable without the editor doing anything.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._entries: dict[str, MemoryEntry] = {}
        self._counter = itertools.count()
        self._delta: MemoryDelta | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, entry_id: str) -> bool:
        return entry_id in self._entries

    def ids(self) -> list[str]:
        return list(self._entries)

    def items(self) -> list[tuple[str, MemoryEntry]]:
        return list(self._entries.items())

    def get(self, entry_id: str) -> MemoryEntry | None:
        return self._entries.get(entry_id)

    def new_id(self) -> str:
        while True:
            candidate = f"m{next(self._counter):06d}"
            if candidate not in self._entries:
                return candidate

    def add(self, data: dict[str, Any], tensors: dict[str, torch.Tensor] | None = None) -> str:
        """Store a new entry and return its id."""
        entry_id = self.new_id()
        self.put(entry_id, MemoryEntry(dict(data), dict(tensors or {})))
        return entry_id

    def put(self, entry_id: str, entry: MemoryEntry | None) -> None:
        """Set (or with ``None`` delete) the entry ``entry_id``."""
        if self._delta is not None and entry_id not in self._delta.before:
            self._delta.before[entry_id] = self._entries.get(entry_id)
        if entry is None:
            self._entries.pop(entry_id, None)
        else:
            self._entries[entry_id] = MemoryEntry(
                dict(entry.data), {k: v.detach().to("cpu") for k, v in entry.tensors.items()}
            )
        if self._delta is not None:
            self._delta.after[entry_id] = self._entries.get(entry_id)

    def remove(self, entry_id: str) -> None:
        self.put(entry_id, None)

    @contextmanager
    def tracking(self) -> Iterator[MemoryDelta]:
        """Record every write made inside the block."""
        if self._delta is not None:
            raise RuntimeError(f"memory store {self.name!r} is already being tracked")
        self._delta = MemoryDelta(self.name)
        try:
            yield self._delta
        finally:
            delta, self._delta = self._delta, None
            unchanged = [i for i in delta.before if _same_state(delta.before[i], delta.after.get(i))]
            for entry_id in unchanged:
                delta.before.pop(entry_id, None)
                delta.after.pop(entry_id, None)

    def apply_states(self, states: dict[str, MemoryEntry | None]) -> None:
        for entry_id, entry in states.items():
            self.put(entry_id, entry)


# ------------------------------------------------------------------------------------------
# The record of one chain step
# ------------------------------------------------------------------------------------------


@dataclass
class EditRecord:
    """What one chain step did: enough to undo it bit-exactly or to apply it again."""

    step_index: int
    step_name: str
    editor: str
    family: str
    config: dict[str, Any]
    request_ids: list[str]
    weights: WeightDelta | None = None
    memory: MemoryDelta | None = None
    seconds: float = 0.0

    def undo(self, model: Any, *, check: bool = True) -> None:
        """Restore what this step changed. With ``check``, refuse if a later step changed the
        same weights (undo newer records first)."""
        if self.weights is not None:
            if check:
                self.weights.check_current(model, self.weights.after, "undo")
            write_weights(model, self.weights.before)
        if self.memory is not None:
            model.memory_store(self.memory.store).apply_states(self.memory.before)

    def redo(self, model: Any, *, check: bool = True) -> None:
        """Apply this step's change again (replay)."""
        if self.weights is not None:
            if check:
                self.weights.check_current(model, self.weights.before, "replay")
            write_weights(model, self.weights.after)
        if self.memory is not None:
            model.memory_store(self.memory.store).apply_states(self.memory.after)

    # ---- disk -------------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        meta: dict[str, Any] = {
            "step_index": self.step_index,
            "step_name": self.step_name,
            "editor": self.editor,
            "family": self.family,
            "config": self.config,
            "request_ids": self.request_ids,
            "seconds": self.seconds,
            "weights": self.weights.names if self.weights is not None else None,
        }
        if self.weights is not None:
            save_file(_contiguous(self.weights.before), str(directory / "weights_before.safetensors"))
            save_file(_contiguous(self.weights.after), str(directory / "weights_after.safetensors"))
        if self.memory is not None:
            meta["memory"] = {
                "store": self.memory.store,
                "before": _save_entries(self.memory.before, directory / "memory_before.safetensors"),
                "after": _save_entries(self.memory.after, directory / "memory_after.safetensors"),
            }
        (directory / "record.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> EditRecord:
        try:
            meta = json.loads((directory / "record.json").read_text(encoding="utf-8"))
            weights = None
            if meta.get("weights") is not None:
                weights = WeightDelta(
                    load_file(str(directory / "weights_before.safetensors")),
                    load_file(str(directory / "weights_after.safetensors")),
                )
            memory = None
            if meta.get("memory") is not None:
                info = meta["memory"]
                memory = MemoryDelta(
                    info["store"],
                    _load_entries(info["before"], directory / "memory_before.safetensors"),
                    _load_entries(info["after"], directory / "memory_after.safetensors"),
                )
        except (OSError, KeyError, ValueError) as error:
            raise JournalError(f"edit record in {str(directory)!r} is unreadable: {error}") from error
        return cls(
            step_index=meta["step_index"], step_name=meta["step_name"], editor=meta["editor"],
            family=meta["family"], config=meta["config"], request_ids=meta["request_ids"],
            weights=weights, memory=memory, seconds=meta.get("seconds", 0.0),
        )


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: t.contiguous() for name, t in tensors.items()}


def _save_entries(states: dict[str, MemoryEntry | None], path: Path) -> dict[str, Any]:
    tensors: dict[str, torch.Tensor] = {}
    index: dict[str, Any] = {}
    for entry_id, entry in states.items():
        if entry is None:
            index[entry_id] = None
            continue
        index[entry_id] = {"data": entry.data, "tensors": sorted(entry.tensors)}
        for key, value in entry.tensors.items():
            tensors[f"{entry_id}/{key}"] = value.contiguous()
    if tensors:
        save_file(tensors, str(path))
    return index


def _load_entries(index: dict[str, Any], path: Path) -> dict[str, MemoryEntry | None]:
    tensors = load_file(str(path)) if path.exists() else {}
    states: dict[str, MemoryEntry | None] = {}
    for entry_id, info in index.items():
        if info is None:
            states[entry_id] = None
        else:
            states[entry_id] = MemoryEntry(
                info["data"], {key: tensors[f"{entry_id}/{key}"] for key in info["tensors"]}
            )
    return states
