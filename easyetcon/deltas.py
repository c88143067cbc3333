"""Edit exports: the net change of a run in one verified safetensors file, applied to another
copy of the same base model (``easyetcon export`` and ``easyetcon apply``).

For each weight the journal's *applied* steps changed (undone steps are left out), an export
holds one of two forms, whichever is smaller:

``factors``
    The low-rank updates the run added to the weight (ROME, MEMIT, AlphaEdit and EMMET record
    them in the journal), as one ``left`` and one ``right`` matrix with the rank of each update:
    the rebuild adds them to the base value one update after another, rounding to the weight's
    dtype after each as the run did (adding their sum at once rounds otherwise: 36 % of the
    entries differ after three ROME edits of the world model). Entries the rebuild still does
    not reproduce bit for bit are stored as a sparse correction (their flat indices and final
    values); there are normally none.
``full``
    The whole new value (dense editors such as FT-M, or a change whose factors are not smaller).

The entries of each external memory's store (retrieval memory, GRACE) travel too, with the
name and options of the editor that reads them. The file's metadata is one JSON document under
``easyetcon.edits`` whose SHA-256 is under ``easyetcon.edits.sha256``: the format version, a
hash of the base model's digests (:func:`model_hash`), each weight's base and final digest,
every tensor's digest, and the run's steps. :func:`read_export` checks all of it, so a damaged
or edited file is refused, never applied; :func:`apply_export` refuses another base model and
checks every rebuilt weight against its final digest before it writes any.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from easyetcon.errors import ExportError
from easyetcon.journal import APPLIED, Journal, model_digests
from easyetcon.records import (
    LOW_RANK_BLOCK_ELEMENTS,
    Factors,
    MemoryEntry,
    MemoryStore,
    tensor_digest,
    write_weights,
)
from easyetcon.registry import Family

EXPORT_FORMAT = "easyetcon-edits/1"
DOCUMENT_KEY = "easyetcon.edits"
CHECK_KEY = "easyetcon.edits.sha256"
DOCUMENT_FIELDS = ("format", "base_model", "final_model", "dtype", "run", "weights", "memories", "tensors")
#: What ``easyetcon apply`` writes beside ``DIR/model`` when the export carries memories.
MEMORY_FILE = "memory.safetensors"


def model_hash(digests: Mapping[str, str]) -> str:
    """One SHA-256 over a model's :func:`~easyetcon.journal.model_digests` (every parameter and
    buffer, in name order): equal hashes, bit-identical models. The journal's
    :attr:`~easyetcon.journal.Journal.base_digests` give the base model's."""
    digest = hashlib.sha256()
    for name in sorted(digests):
        digest.update(f"{name}\0{digests[name]}\n".encode())
    return digest.hexdigest()


def short(hash_value: str) -> str:
    """The first 16 hex digits of a hash, as messages show it."""
    return hash_value[:16]


# ------------------------------------------------------------------------------------------
# Rebuilding a factored change
# ------------------------------------------------------------------------------------------


def rebuild_factored(base: torch.Tensor, left: torch.Tensor, right: torch.Tensor, ranks: list[int]) -> torch.Tensor:
    """``base`` after each low-rank update in turn: columns ``0 .. ranks[0]`` of ``left`` times
    the same rows of ``right``, then the next ``ranks[1]``, and so on, each added in fp64 and
    cast to ``base``'s dtype (as :func:`~easyetcon.records.add_low_rank_to` does).

    Each update is summed term by term, in order, with elementwise products and no matrix
    multiply, whose order of summation depends on the library: a rank-one update gives exactly
    what ``add_low_rank_to`` gave in the run. Rows go in blocks that stay in cache.
    """
    base = base.detach().to("cpu")
    left = left.detach().to("cpu", torch.float64)
    right = right.detach().to("cpu", torch.float64)
    bounds, start = [], 0
    for rank in ranks:
        bounds.append((start, start + rank))
        start += rank
    out = torch.empty_like(base)
    rows = max(1, LOW_RANK_BLOCK_ELEMENTS // max(1, base.shape[1]))
    for first in range(0, base.shape[0], rows):
        block = base[first : first + rows]
        block_left = left[first : first + rows]
        for begin, end in bounds:
            update = block_left[:, begin : begin + 1] * right[begin : begin + 1]
            for k in range(begin + 1, end):
                update = update + block_left[:, k : k + 1] * right[k : k + 1]
            block = (block.to(torch.float64) + update).to(base.dtype)
        out[first : first + rows] = block
    return out


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    integer = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.element_size()]
    return tensor.detach().to("cpu").contiguous().reshape(-1).view(integer)


def _differing_entries(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Flat indices where two tensors of one dtype and shape differ in their bits (NaN = NaN)."""
    return torch.nonzero(_bits(a) != _bits(b)).reshape(-1)


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ------------------------------------------------------------------------------------------
# The export
# ------------------------------------------------------------------------------------------


@dataclass
class EditExport:
    """An export in memory: its metadata ``document`` (the JSON under ``easyetcon.edits``) and
    its ``tensors`` by name. Made by :func:`build_export`, read by :func:`read_export`."""

    document: dict[str, Any]
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def base_model(self) -> str:
        """:func:`model_hash` of the model this export applies to."""
        return self.document["base_model"]

    @property
    def final_model(self) -> str:
        """:func:`model_hash` of the model it produces."""
        return self.document["final_model"]

    @property
    def dtype(self) -> str:
        """The dtype the run's model was edited in (``float32``, ``bfloat16``, ...)."""
        return self.document["dtype"]

    @property
    def weights(self) -> dict[str, dict[str, Any]]:
        """Per changed weight: ``form``, ``shape``, ``dtype``, ``base`` and ``final`` digests,
        and for the factored form ``ranks`` and ``corrections``."""
        return self.document["weights"]

    @property
    def memories(self) -> list[dict[str, Any]]:
        """Per memory store: ``store``, ``editor``, ``config`` and its ``entries`` in order."""
        return self.document["memories"]

    def stored_bytes(self) -> int:
        """Bytes of tensors the export holds (factors, corrections, whole values, memory entries)."""
        return sum(_nbytes(t) for t in self.tensors.values())

    def dense_bytes(self) -> int:
        """Bytes the changed weights take whole, in their dtype: what a dense export would store."""
        total = 0
        for info in self.weights.values():
            numel = 1
            for size in info["shape"]:
                numel *= size
            total += numel * torch.empty((), dtype=getattr(torch, info["dtype"])).element_size()
        return total

    def counts(self) -> dict[str, int]:
        """How many weights are factored and whole, and how many memory stores and entries."""
        forms = Counter(info["form"] for info in self.weights.values())
        return {
            "factored": forms["factors"], "whole": forms["full"], "stores": len(self.memories),
            "entries": sum(len(store["entries"]) for store in self.memories),
        }

    def memory_only(self) -> EditExport:
        """This export's memories alone, made for the model this export produces: what
        ``easyetcon apply`` writes as ``DIR/memory.safetensors`` beside ``DIR/model``."""
        names = {name for store in self.memories for entry in store["entries"] for name in entry["tensors"].values()}
        document = {
            **self.document, "base_model": self.final_model, "weights": {},
            "tensors": {name: self.document["tensors"][name] for name in sorted(names)},
        }
        return EditExport(document, {name: self.tensors[name] for name in names})

    def save(self, path: str | Path) -> Path:
        """Write the export to ``path`` (a temporary file renamed into place, so ``path`` is
        either complete or untouched)."""
        from safetensors.torch import save_file

        path = Path(path)
        text = json.dumps(self.document, sort_keys=True, separators=(",", ":"))
        metadata = {DOCUMENT_KEY: text, CHECK_KEY: hashlib.sha256(text.encode()).hexdigest()}
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            save_file({k: v.detach().to("cpu").contiguous() for k, v in self.tensors.items()}, str(temporary), metadata=metadata)
            with open(temporary, "rb") as stream:
                os.fsync(stream.fileno())
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        return path


def _weight_tensor(name: str, part: str) -> str:
    return f"weights/{name}/{part}"


def _encode_weight(
    name: str, base: torch.Tensor, final: torch.Tensor, factors: Factors | None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The smaller of the factored form (when ``factors`` are known) and the whole value, each
    checked to rebuild ``final`` from ``base`` bit for bit."""
    info: dict[str, Any] = {
        "shape": list(final.shape), "dtype": _dtype_name(final.dtype),
        "base": tensor_digest(base), "final": tensor_digest(final),
    }
    dtypes = {t.dtype for pair in factors or [] for t in pair}
    factor_dtype = dtypes.pop() if len(dtypes) == 1 else torch.float64  # a cast to fp64 is exact
    element = torch.empty((), dtype=factor_dtype).element_size()
    factor_bytes = sum((l.shape[0] + r.shape[1]) * l.shape[1] for l, r in factors or []) * element
    if factors and final.dim() == 2 and factor_bytes < _nbytes(final):  # else not worth a rebuild
        left = torch.cat([l.to(factor_dtype) for l, _ in factors], dim=1)
        right = torch.cat([r.to(factor_dtype) for _, r in factors], dim=0)
        ranks = [int(l.shape[1]) for l, _ in factors]
        rebuilt = rebuild_factored(base, left, right, ranks)
        wrong = _differing_entries(rebuilt, final)
        index = wrong.to(torch.int32 if final.numel() < 2**31 else torch.int64)
        values = final.reshape(-1)[wrong].clone()
        tensors = {_weight_tensor(name, "left"): left, _weight_tensor(name, "right"): right}
        if len(wrong):
            tensors[_weight_tensor(name, "correction_index")] = index
            tensors[_weight_tensor(name, "correction_value")] = values
        if sum(_nbytes(t) for t in tensors.values()) < _nbytes(final):
            return {**info, "form": "factors", "ranks": ranks, "corrections": len(wrong)}, tensors
    return {**info, "form": "full"}, {_weight_tensor(name, "full"): final.detach().to("cpu").contiguous().clone()}


def _decode_weight(name: str, info: dict[str, Any], current: torch.Tensor, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    if info["form"] == "full":
        return tensors[_weight_tensor(name, "full")]
    value = rebuild_factored(current, tensors[_weight_tensor(name, "left")], tensors[_weight_tensor(name, "right")], info["ranks"])
    if info["corrections"]:
        index = tensors[_weight_tensor(name, "correction_index")].to(torch.int64)
        value.reshape(-1)[index] = tensors[_weight_tensor(name, "correction_value")].to(value.dtype)
    return value


def _run_summary(journal: Journal, applied: list[dict[str, Any]]) -> dict[str, Any]:
    steps: dict[str, str] = {}
    for entry in applied:
        steps.setdefault(entry["step_name"], entry["editor"])
    return {
        "model": journal.metadata.get("model"),
        "chain": [{"step": step, "editor": editor} for step, editor in steps.items()],
        "steps": len(applied),
        "requests": len({request_id for entry in applied for request_id in entry["request_ids"]}),
    }


def _memories(journal: Journal, applied: list[dict[str, Any]], tensors: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    """Each store's entries as the applied memory steps leave them (as
    :meth:`~easyetcon.journal.Journal.restore_memories` rebuilds them), with the editor of the
    first step that wrote to it."""
    stores: dict[str, MemoryStore] = {}
    editors: dict[str, tuple[str, dict[str, Any]]] = {}
    for entry in applied:
        if entry["family"] != Family.MEMORY.value:
            continue
        record = journal.record(entry["position"])
        key = record.memory.store if record.memory is not None else entry["step_name"]
        store = stores.setdefault(key, MemoryStore(key))
        editors.setdefault(key, (entry["editor"], entry["config"]))
        if record.memory is not None:
            store.apply_states(record.memory.after)
    documents = []
    for number, (key, store) in enumerate(stores.items()):
        entries = []
        for position, (entry_id, memory_entry) in enumerate(store.items()):
            names = {}
            for tensor_number, (tensor_key, value) in enumerate(sorted(memory_entry.tensors.items())):
                names[tensor_key] = f"memory/{number}/{position}/{tensor_number}"
                tensors[names[tensor_key]] = value.detach().to("cpu").contiguous().clone()  # safetensors refuses shared storage
            entries.append({"id": entry_id, "data": memory_entry.data, "tensors": names})
        editor, config = editors[key]
        documents.append({"store": key, "editor": editor, "config": config, "entries": entries})
    return documents


def build_export(journal: Journal, model: Any, *, what: str = "the run's model") -> EditExport:
    """The net change of ``journal``'s applied steps relative to its base model, read from
    ``model``, which must be in the state the journal describes (checked, weight by weight, as
    ``easyetcon undo`` does: :meth:`~easyetcon.journal.Journal.check_current`; ``what`` names
    the model in the error)."""
    journal.check_current(model, what=what)
    base_digests = journal.base_digests or {}
    final_digests = model_digests(model)
    applied = journal.entries(APPLIED)
    changed: dict[str, list[int]] = {}  # weight -> the applied steps that changed it, in order
    for entry in applied:
        for name in entry.get("weights") or {}:
            changed.setdefault(name, []).append(entry["position"])
    changed = {name: positions for name, positions in changed.items() if final_digests[name] != base_digests[name]}
    # a weight is factored when every applied change of it kept its factors (a dense step does not)
    steps = journal.entries()
    factored = {name for name, positions in changed.items() if all(steps[p]["weights"][name].get("ranks") for p in positions)}
    factors: dict[str, Factors] = {name: [] for name in factored}
    for position in sorted({p for name in factored for p in changed[name]}):
        record = journal.record(position)
        for name, change in record.weights.changes.items():
            if name in factored:
                factors[name].extend(change.factors or [])
    weights: dict[str, dict[str, Any]] = {}
    tensors: dict[str, torch.Tensor] = {}
    for name in changed:
        base = journal.base_value(name)
        if tensor_digest(base) != base_digests[name]:
            raise ExportError(f"the journal's base value of {name!r} does not match its recorded digest; the journal is damaged")
        final = model.parameter(name).detach().to("cpu")
        info, parts = _encode_weight(name, base, final, factors.get(name))
        rebuilt = _decode_weight(name, info, base, parts)
        if tensor_digest(rebuilt) != info["final"]:  # never write an export that does not rebuild the run
            raise ExportError(f"the export of {name!r} does not rebuild the run's weight bit for bit; nothing was written")
        weights[name] = info
        tensors.update(parts)
    memories = _memories(journal, applied, tensors)
    dtypes = Counter(p.dtype for p in model.torch_model.parameters())
    document = {
        "format": EXPORT_FORMAT,
        "base_model": model_hash(base_digests),
        "final_model": model_hash(final_digests),
        "dtype": _dtype_name(dtypes.most_common(1)[0][0]),
        "run": _run_summary(journal, applied),
        "weights": weights,
        "memories": memories,
        "tensors": {name: tensor_digest(value) for name, value in sorted(tensors.items())},
    }
    return EditExport(document, tensors)


# ------------------------------------------------------------------------------------------
# Reading and applying
# ------------------------------------------------------------------------------------------


def read_export(path: str | Path) -> EditExport:
    """Read an export written by :meth:`EditExport.save`, verified: the metadata against its
    checksum, every tensor against its digest. A damaged or edited file raises
    :class:`~easyetcon.errors.ExportError`."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    where = repr(str(path))
    try:
        with safe_open(str(path), framework="pt") as stream:
            metadata = stream.metadata() or {}
            text, check = metadata.get(DOCUMENT_KEY), metadata.get(CHECK_KEY)
            if text is None:
                raise ExportError(
                    f"{where} is not an easyetcon edit export (it has no {DOCUMENT_KEY!r} metadata); "
                    f"make one with `easyetcon export RUN --out FILE`"
                )
            if hashlib.sha256(text.encode()).hexdigest() != check:
                raise ExportError(
                    f"the metadata of {where} does not match its checksum (the file was edited or corrupted); nothing was applied"
                )
            names = set(stream.keys())
            tensors = {name: stream.get_tensor(name) for name in names}
    except (SafetensorError, OSError, ValueError) as error:
        raise ExportError(f"{where} cannot be read as an easyetcon edit export: {error}") from error
    try:
        document = json.loads(text)
        if document.get("format") != EXPORT_FORMAT:
            raise ExportError(
                f"{where} was written in format {document.get('format')!r}; this easyetcon reads "
                f"{EXPORT_FORMAT!r}: export the run again with this easyetcon"
            )
        missing = [key for key in DOCUMENT_FIELDS if key not in document]
    except (json.JSONDecodeError, AttributeError) as error:
        raise ExportError(f"the metadata of {where} is not a JSON object ({error}); export the run again") from error
    if missing:
        raise ExportError(f"the metadata of {where} lacks {', '.join(missing)}; export the run again")
    expected = document["tensors"]
    if names != set(expected):
        missing, extra = sorted(set(expected) - names)[:3], sorted(names - set(expected))[:3]
        raise ExportError(
            f"{where} holds other tensors than its metadata lists (missing {missing}, extra {extra}); "
            f"the file was edited or corrupted"
        )
    damaged = [name for name in sorted(names) if tensor_digest(tensors[name]) != expected[name]]
    if damaged:
        raise ExportError(
            f"tensor(s) {', '.join(damaged[:3])}{' ...' if len(damaged) > 3 else ''} of {where} do not match "
            f"their digests (the file was edited or corrupted); nothing was applied"
        )
    problems = _inconsistencies(document, tensors)
    if problems:
        raise ExportError(f"{where} does not hold what its metadata describes ({'; '.join(problems[:3])}); export the run again")
    return EditExport(document, tensors)


def _inconsistencies(document: dict[str, Any], tensors: dict[str, torch.Tensor]) -> list[str]:
    """What in a (checksummed) document does not fit its tensors: a file only a writer other
    than :meth:`EditExport.save` makes, refused here rather than failing half way through."""
    problems = []
    for name, info in document["weights"].items():
        try:
            shape, form = tuple(info["shape"]), info["form"]
            if not isinstance(getattr(torch, info["dtype"], None), torch.dtype):
                problems.append(f"{name!r} has an unknown dtype {info['dtype']!r}")
            elif form == "full":
                if tuple(tensors[_weight_tensor(name, "full")].shape) != shape:
                    problems.append(f"the whole value of {name!r} is not of shape {list(shape)}")
            elif form == "factors":
                left, right = tensors[_weight_tensor(name, "left")], tensors[_weight_tensor(name, "right")]
                ranks, rank = info["ranks"], sum(info["ranks"])
                if len(shape) != 2 or not all(isinstance(r, int) and r > 0 for r in ranks) or (
                    tuple(left.shape), tuple(right.shape)) != ((shape[0], rank), (rank, shape[1])):
                    problems.append(f"the factors of {name!r} do not fit its shape {list(shape)} and ranks")
                if info["corrections"] and len(tensors[_weight_tensor(name, "correction_index")]) != info["corrections"]:
                    problems.append(f"the corrections of {name!r} are not {info['corrections']} entries")
            else:
                problems.append(f"{name!r} has an unknown form {form!r}")
        except (KeyError, TypeError) as error:
            problems.append(f"the record of {name!r} lacks {error}")
    for store in document["memories"]:
        try:
            unknown = [n for entry in store["entries"] for n in entry["tensors"].values() if n not in tensors]
            if unknown or not isinstance(store["store"], str) or not isinstance(store["config"], dict):
                problems.append(f"memory store {store['store']!r} names missing tensors or lacks its options")
        except (KeyError, TypeError, AttributeError) as error:
            problems.append(f"a memory store's record lacks {error}")
    return problems


def apply_export(model: Any, export: EditExport, *, registry: Any = None, what: str = "the model") -> list[str]:
    """Apply ``export`` to ``model`` in place and attach its memories; return the weights written.

    ``model`` must be bit for bit the base model the export was made for (its
    :func:`model_hash`); every weight is rebuilt and checked against its final digest, and the
    memory editors are created, before anything is written, so on any error ``model`` is as it was.
    """
    if registry is None:
        from easyetcon.plugins import get_host

        registry = get_host().registry
    digests = model_digests(model)
    actual = model_hash(digests)
    if actual != export.base_model:
        differing = [name for name, info in export.weights.items() if digests.get(name) != info["base"]]
        detail = (
            f"; {len(differing)} of the {len(export.weights)} weight(s) it changes differ ({', '.join(differing[:3])})"
            if differing else ""
        )
        raise ExportError(
            f"this export was made for base {short(export.base_model)}; {what} has {short(actual)}{detail}. "
            f"Apply it to the model the run started from (the same weights, loaded in {export.dtype})"
        )
    editors = []
    for store in export.memories:
        key = store["store"]
        if len(model.memories.get(key) or ()) or key in model.attached_memories:
            raise ExportError(f"{what} already has a memory store {key!r}; apply the export to a model without it")
        editors.append(registry.editor(store["editor"]).create(store["config"]))
    values: dict[str, torch.Tensor] = {}
    before: dict[str, torch.Tensor] = {}
    for name, info in export.weights.items():
        before[name] = model.parameter(name).detach().to("cpu", copy=True)
        values[name] = _decode_weight(name, info, before[name], export.tensors)
    wrong = [name for name, value in values.items() if tensor_digest(value) != export.weights[name]["final"]]
    if wrong:
        raise ExportError(
            f"rebuilding {', '.join(wrong[:3])} does not reproduce the run's final digest; {what} was not changed"
        )
    write_weights(model, values)
    if model_hash(model_digests(model)) != export.final_model:  # e.g. a weight tied to another
        write_weights(model, before)
        raise ExportError(f"{what} is not the run's final model after applying the export; it was put back as it was")
    for store, editor in zip(export.memories, editors):
        memory = model.memory_store(store["store"])
        memory.apply_states({
            entry["id"]: MemoryEntry(entry["data"], {key: export.tensors[name] for key, name in entry["tensors"].items()})
            for entry in store["entries"]
        })
        editor.attach(model, memory)
        model.attached_memories[store["store"]] = editor
    return list(values)


def load_applied(directory: str | Path, *, registry: Any = None) -> Any:
    """Load a folder written by ``easyetcon apply``: ``DIR/model``, with the memories of
    ``DIR/memory.safetensors`` (when the export had any) attached again. ``load_model`` of
    ``DIR/model`` alone gives the weights without the memories."""
    from easyetcon.model import load_model

    directory = Path(directory)
    if not (directory / "model").is_dir():
        raise ExportError(f"{str(directory)!r} has no model/ folder; pass the --out folder of `easyetcon apply`")
    model = load_model(directory / "model", dtype="auto", registry=registry)
    if (directory / MEMORY_FILE).exists():
        apply_export(model, read_export(directory / MEMORY_FILE), registry=registry, what=repr(str(directory / "model")))
    return model
