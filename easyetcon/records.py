"""Edit records: what a chain step changed, kept so the step can be undone bit-exactly,
replayed, and saved (tensors with safetensors, the rest as JSON).

A record stores what an update *is*, not two copies of every changed matrix: for each changed
weight the SHA-256 of its bits before and after, plus either the low-rank factors the editor
added (:meth:`EditableModel.add_low_rank`; two vectors for a rank-one ROME edit) or, for a dense
update, the whole new value. Applying a record checks the weight it starts from and the weight
it produces against those digests, so a replay can never silently produce other weights.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from easyetcon.errors import JournalError, UndoError

# ------------------------------------------------------------------------------------------
# Bits
# ------------------------------------------------------------------------------------------


def _raw_bytes(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors hold the same dtype, shape and bit pattern (so NaN equals NaN)."""
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(_raw_bytes(a), _raw_bytes(b))


def tensor_digest(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bits: equal digests, bit-identical tensors."""
    digest = hashlib.sha256(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    digest.update(_raw_bytes(tensor).numpy().tobytes())
    return digest.hexdigest()


def non_finite_count(tensor: torch.Tensor) -> int:
    """How many entries of a floating-point tensor are NaN or infinite (0 for other dtypes)."""
    if not tensor.is_floating_point():
        return 0
    return int((~torch.isfinite(tensor)).sum())


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


#: Elements of ``weight`` updated at a time by :func:`add_low_rank_to`: 512 KB of fp64 work that
#: stays in cache (a 4096 × 16384 rank-one update takes 0.12 s this way, 1.0 s in 32 MB blocks).
LOW_RANK_BLOCK_ELEMENTS = 1 << 16


def add_low_rank_to(
    weight: torch.Tensor, left: torch.Tensor, right: torch.Tensor, *, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``weight + left @ right``, computed in fp64 on the weight's device and cast to its dtype.

    The one definition of a low-rank update: :meth:`EditableModel.add_low_rank` applies it and
    replay applies it again, so the two agree bit for bit on the same kind of device. Rows are
    done in blocks of about :data:`LOW_RANK_BLOCK_ELEMENTS` elements, so the fp64 work stays in
    cache and costs half a megabyte at any width, not 28 bytes per weight; ``out`` may be ``weight``
    itself (each block is read before it is written).
    """
    device = weight.device
    left = left.to(device=device, dtype=torch.float64)
    right = right.to(device=device, dtype=torch.float64)
    out = torch.empty_like(weight) if out is None else out
    rows = max(1, LOW_RANK_BLOCK_ELEMENTS // max(1, weight.shape[1]))
    for start in range(0, weight.shape[0], rows):
        block = slice(start, start + rows)
        out[block] = (weight[block].to(torch.float64) + left[block] @ right).to(weight.dtype)
    return out


Factors = list[tuple[torch.Tensor, torch.Tensor]]


def apply_factors(weight: torch.Tensor, factors: Factors) -> torch.Tensor:
    """``weight`` after each low-rank update of ``factors`` in turn (:func:`add_low_rank_to`)."""
    for left, right in factors:
        weight = add_low_rank_to(weight, left, right)
    return weight


@dataclass
class TensorChange:
    """How one parameter changed in one step.

    ``factors`` (low-rank updates applied in order) or ``full`` (the whole new value) rebuilds
    the new value from the old; ``before`` and ``after`` are :func:`tensor_digest` values. A
    journal checkpoint keeps both (its form is ``full``: the whole value is what rebuilds it).
    """

    before: str
    after: str
    factors: Factors | None = None
    full: torch.Tensor | None = None
    released_form: str | None = None

    @property
    def form(self) -> str:
        if self.full is not None:
            return "full"
        return "factors" if self.factors is not None else self.released_form or "full"

    def release(self) -> None:
        """Drop the tensors (kept in a journal); the digests and the form stay."""
        self.released_form = self.form
        self.factors = self.full = None

    def rebuild(self, before: torch.Tensor) -> torch.Tensor:
        """The new value, from the old one (computed on its device; ``before`` is not changed)."""
        if self.released_form is not None:
            raise JournalError("this change's tensors were released to the journal; load its record with Journal.record")
        return self.full if self.full is not None else apply_factors(before, self.factors or [])

    def stored_bytes(self) -> int:
        tensors = [self.full] if self.full is not None else [t for pair in self.factors or [] for t in pair]
        return sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class WeightDelta:
    """The parameters a step changed, each as a :class:`TensorChange`."""

    changes: dict[str, TensorChange] = field(default_factory=dict)

    @classmethod
    def between(
        cls,
        before: dict[str, torch.Tensor],
        after: dict[str, torch.Tensor],
        factors: dict[str, Factors] | None = None,
        devices: dict[str, torch.device] | None = None,
    ) -> WeightDelta:
        """Keep the parameters whose bits changed. Where the step wrote a parameter only through
        low-rank ``factors`` and re-applying them to ``before`` (on the parameter's device, from
        ``devices``) reproduces ``after`` bit for bit, the change is stored as those factors;
        otherwise as the whole new value."""
        changes: dict[str, TensorChange] = {}
        for name, old in before.items():
            new = after[name]
            if same_bits(old, new):
                continue
            change = TensorChange(tensor_digest(old), tensor_digest(new))
            candidate = (factors or {}).get(name)
            device = (devices or {}).get(name, old.device)
            if candidate and same_bits(apply_factors(old.to(device), candidate), new):
                change.factors = [(l.detach().to("cpu"), r.detach().to("cpu")) for l, r in candidate]
            else:
                change.full = new
            changes[name] = change
        return cls(changes)

    @property
    def names(self) -> list[str]:
        return list(self.changes)

    def stored_bytes(self) -> int:
        return sum(change.stored_bytes() for change in self.changes.values())


def parameter_digest(model: Any, name: str) -> str:
    return tensor_digest(model.parameter(name).detach())


def check_digests(model: Any, expected: dict[str, str], action: str) -> None:
    """Raise :class:`UndoError` unless each named parameter's bits have the expected digest."""
    stale = [name for name, digest in expected.items() if parameter_digest(model, name) != digest]
    if stale:
        raise UndoError(
            f"cannot {action}: parameter(s) {', '.join(stale[:3])}{' ...' if len(stale) > 3 else ''} "
            f"are not in the state this step expects (another step changed them since, or the model "
            f"is not the one this record belongs to); undo later steps first or load the right model"
        )


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
            and all(same_bits(self.tensors[k], other.tensors[k]) for k in self.tensors)
        )

    def non_finite(self) -> list[str]:
        """Names of tensors (and data fields) holding NaN or infinite values."""
        bad = [f"tensor {k!r}" for k, t in self.tensors.items() if non_finite_count(t)]
        bad += [f"field {k!r}" for k, v in self.data.items() if isinstance(v, float) and not math.isfinite(v)]
        return bad


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
    """What one chain step did: enough to apply it again and, with the weights it started from,
    to undo it bit-exactly.

    ``editor_state`` holds what the editor asked to keep for replay
    (:meth:`~easyetcon.protocols.PreparedEditor.journal_state`).
    """

    step_index: int
    step_name: str
    editor: str
    family: str
    config: dict[str, Any]
    request_ids: list[str]
    weights: WeightDelta | None = None
    memory: MemoryDelta | None = None
    seconds: float = 0.0
    editor_state: dict[str, torch.Tensor] = field(default_factory=dict)

    def redo(self, model: Any) -> None:
        """Apply this step's change again (replay): each changed weight must be in the state
        the step started from, and must come out in the state it produced."""
        if self.weights is not None:
            changes = self.weights.changes
            check_digests(model, {n: c.before for n, c in changes.items()}, "replay")
            # on each weight's device: the factors were checked there to reproduce the edit bit for bit
            rebuilt = {n: c.rebuild(model.parameter(n).detach()) for n, c in changes.items()}
            wrong = [n for n, value in rebuilt.items() if tensor_digest(value) != changes[n].after]
            if wrong:
                raise JournalError(
                    f"replaying step {self.step_index} ({self.step_name}) does not reproduce "
                    f"{', '.join(wrong[:3])} bit for bit (the record is damaged, or its low-rank "
                    f"factors round differently on this device); the model was not changed"
                )
            write_weights(model, rebuilt)
        if self.memory is not None:
            model.memory_store(self.memory.store).apply_states(self.memory.after)

    def restore(self, model: Any, states: dict[str, torch.Tensor]) -> None:
        """Undo this step, given each changed weight's value before it (``states``): the model
        must hold exactly what the step produced, and ``states`` what it started from."""
        if self.weights is not None:
            changes = self.weights.changes
            check_digests(model, {n: c.after for n, c in changes.items()}, "undo")
            wrong = [n for n in changes if n not in states or tensor_digest(states[n]) != changes[n].before]
            if wrong:
                raise UndoError(
                    f"cannot undo step {self.step_index} ({self.step_name}): the saved value of "
                    f"{', '.join(wrong[:3])} before it does not match its digest; the model was not changed"
                )
            write_weights(model, {n: states[n] for n in changes})
        if self.memory is not None:
            model.memory_store(self.memory.store).apply_states(self.memory.before)

    def release_tensors(self) -> None:
        """Drop the weight tensors and editor state once they are in a journal (digests, forms
        and memory deltas stay); :meth:`Journal.record` loads them again."""
        if self.weights is not None:
            for change in self.weights.changes.values():
                change.release()
        self.editor_state = {}

    def stored_bytes(self) -> int:
        """Bytes of tensors this record keeps (weights and editor state; not memory entries)."""
        weights = self.weights.stored_bytes() if self.weights is not None else 0
        return weights + sum(t.numel() * t.element_size() for t in self.editor_state.values())
