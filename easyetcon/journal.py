"""The edit journal: every applied chain step on disk — its editor, config, requests and
record — appended, checksummed and verified on every read, so a run can be inspected, replayed
or rolled back later and never silently gives other weights.

Layout of a journal folder (format version 2)::

    journal.jsonl           one JSON line per event, appended and fsynced: the header, the
                            base model's digests, each step, each status change
    requests.jsonl          one line per request id, written when the id is first seen
    records/00000/          one folder per step: safetensors files whose SHA-256 is in its line

Each line carries a checksum of its own content; each step line names the SHA-256 of every
file of its record folder, which is checked before the file is used. A step's folder stores the
*base* value (the unedited model's) of each weight this journal had not touched before, and per
changed weight either low-rank factors or the whole new value; every ``checkpoint_every``-th
factored change of a weight also stores the whole value (its form is then ``full``), so
rebuilding any state replays at most that many updates. A line cut off by a crash is ignored (and dropped at the next write).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from easyetcon.devices import state_tensors
from easyetcon.errors import JournalError, UndoError
from easyetcon.records import (
    EditRecord,
    MemoryDelta,
    MemoryEntry,
    TensorChange,
    WeightDelta,
    check_digests,
    tensor_digest,
    write_weights,
)
from easyetcon.requests import EditRequest

JOURNAL_VERSION = 2
INDEX_FILE = "journal.jsonl"
REQUESTS_FILE = "requests.jsonl"
DEFAULT_CHECKPOINT_EVERY = 50


class Status(str, Enum):
    """The status of a journalled step."""

    APPLIED = "applied"
    UNDONE = "undone"
    ROLLED_BACK = "rolled-back"


APPLIED, UNDONE, ROLLED_BACK = Status.APPLIED.value, Status.UNDONE.value, Status.ROLLED_BACK.value


# ------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------


def _fsync_directory(path: Path) -> None:
    try:
        handle = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary file in the same folder, then rename it into place."""
    write_bytes_atomic(path, json.dumps(data, indent=2).encode("utf-8"))


def _checked(payload: dict[str, Any]) -> dict[str, Any]:
    body = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return {**payload, "check": hashlib.sha256(body.encode()).hexdigest()}


def _verify_line(line: dict[str, Any]) -> bool:
    payload = {k: v for k, v in line.items() if k != "check"}
    return _checked(payload).get("check") == line.get("check")


def read_json_lines(path: Path, *, what: str) -> tuple[list[dict[str, Any]], int]:
    """The verified lines of a JSON-lines file and the byte length of its intact part.

    A last line without its newline (a write cut off by a crash) is left out; any other line
    that does not parse or fails its checksum is an error naming the file and the line.
    """
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise JournalError(f"{what} {str(path)!r} cannot be read: {error.strerror or error}") from error
    *complete, torn = raw.split(b"\n")  # ``torn`` is empty unless the last write was cut off
    lines: list[dict[str, Any]] = []
    for number, chunk in enumerate(complete, start=1):
        try:
            line = json.loads(chunk.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise JournalError(f"{what} {str(path)!r} is damaged at line {number}: {error}") from error
        if not isinstance(line, dict) or not _verify_line(line):
            raise JournalError(
                f"{what} {str(path)!r} is damaged at line {number}: its checksum does not match "
                f"(the file was edited or corrupted); nothing was changed"
            )
        lines.append(line)
    intact = len(raw) - len(torn)
    return lines, intact


def _append_line(path: Path, payload: dict[str, Any]) -> None:
    data = (json.dumps(_checked(payload), separators=(",", ":")) + "\n").encode("utf-8")
    with open(path, "ab") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())


def _drop_torn_tail(path: Path, intact: int) -> None:
    if path.exists() and path.stat().st_size > intact:
        with open(path, "r+b") as stream:
            stream.truncate(intact)
            os.fsync(stream.fileno())


def model_digests(model: Any) -> dict[str, str]:
    """:func:`~easyetcon.records.tensor_digest` of every parameter and buffer, by name."""
    return {name: tensor_digest(t) for name, t in sorted(state_tensors(model.torch_model).items())}


def _save_tensors(folder: Path, name: str, tensors: dict[str, torch.Tensor], files: dict[str, str]) -> None:
    if not tensors:
        return
    data = save_safetensors({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()})
    with open(folder / name, "wb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())
    files[name] = hashlib.sha256(data).hexdigest()


def _entries_index(states: dict[str, MemoryEntry | None], prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    index: dict[str, Any] = {}
    for entry_id, entry in states.items():
        if entry is None:
            index[entry_id] = None
            continue
        index[entry_id] = {"data": entry.data, "tensors": sorted(entry.tensors)}
        for key, value in entry.tensors.items():
            tensors[f"{prefix}/{entry_id}/{key}"] = value
    return index


def _entries_from(index: dict[str, Any], prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, MemoryEntry | None]:
    return {
        entry_id: None if info is None
        else MemoryEntry(info["data"], {key: tensors[f"{prefix}/{entry_id}/{key}"] for key in info["tensors"]})
        for entry_id, info in index.items()
    }


# ------------------------------------------------------------------------------------------
# The journal
# ------------------------------------------------------------------------------------------


class Journal:
    """An append-only, verified log of chain steps in ``directory``."""

    def __init__(
        self,
        directory: str | Path,
        *,
        create: bool = True,
        metadata: dict[str, Any] | None = None,
        checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    ) -> None:
        if checkpoint_every < 1:
            raise JournalError(f"checkpoint_every must be at least 1, got {checkpoint_every}")
        self.directory = Path(directory)
        self.index_path = self.directory / INDEX_FILE
        self._requests_path = self.directory / REQUESTS_FILE
        self.checkpoint_every = checkpoint_every
        self._metadata: dict[str, Any] = {}
        self._base: dict[str, str] | None = None
        self._steps: list[dict[str, Any]] = []
        self._touched: dict[str, list[int]] = {}  # weight -> positions of the steps that changed it
        self._base_at: dict[str, int] = {}  # weight -> position whose folder holds its base value
        self._requests: dict[str, Any] | None = None
        if self.index_path.exists():
            self._load()
        elif (self.directory / "journal.json").exists():
            version = _legacy_version(self.directory / "journal.json")
            raise JournalError(
                f"the journal in {str(self.directory)!r} was written in journal format version {version} "
                f"(journal.json) by an earlier easyetcon; this easyetcon reads format {JOURNAL_VERSION} "
                f"(journal.jsonl). Undo or replay it with the easyetcon that wrote it, or rerun the edits"
            )
        elif create:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                if any((self.directory / name).exists() for name in ("records", REQUESTS_FILE)):
                    raise JournalError(f"{str(self.directory)!r} holds journal files but no {INDEX_FILE}; choose a new folder")
                _append_line(self.index_path, {
                    "kind": "header", "version": JOURNAL_VERSION,
                    "created": datetime.now(timezone.utc).isoformat(), "metadata": metadata or {},
                })
            except OSError as error:
                raise JournalError(f"cannot create a journal in {str(self.directory)!r}: {error.strerror or error}") from error
            self._metadata = dict(metadata or {})
            self._intact = self.index_path.stat().st_size
        else:
            raise JournalError(f"no journal in {str(self.directory)!r} ({INDEX_FILE} is missing)")

    @classmethod
    def open(cls, directory: str | Path) -> Journal:
        """Open an existing journal (error if there is none)."""
        return cls(directory, create=False)

    # ---- reading the index -------------------------------------------------------------------
    def _load(self) -> None:
        lines, self._intact = read_json_lines(self.index_path, what="journal")
        if not lines or lines[0].get("kind") != "header":
            raise JournalError(f"journal {str(self.index_path)!r} has no header line; it is not an easyetcon journal")
        header = lines[0]
        if header.get("version") != JOURNAL_VERSION:
            raise JournalError(
                f"journal {str(self.directory)!r} was written in format version {header.get('version')!r}; "
                f"this easyetcon reads version {JOURNAL_VERSION}"
            )
        self._metadata = dict(header.get("metadata") or {})
        for number, line in enumerate(lines[1:], start=2):
            kind = line.get("kind")
            try:
                if kind == "step":
                    self._add_step(line)
                elif kind == "status":
                    self._apply_status(line["positions"], line["status"])
                elif kind == "metadata":
                    self._metadata.update(line["values"])
                elif kind == "base":
                    self._base = dict(line["parameters"])
                else:
                    raise ValueError(f"unknown line kind {kind!r}")
            except (KeyError, TypeError, ValueError) as error:
                raise JournalError(f"journal {str(self.index_path)!r} line {number} is invalid: {error}") from error

    def _add_step(self, line: dict[str, Any]) -> None:
        position = line["position"]
        if position != len(self._steps):
            raise ValueError(f"step position {position!r} out of order (expected {len(self._steps)})")
        Status(line["status"])
        entry = dict(line)
        entry.pop("check", None)
        entry.pop("kind", None)
        self._steps.append(entry)
        for name in entry.get("weights") or {}:
            self._touched.setdefault(name, []).append(position)
        for name in entry.get("base") or []:
            self._base_at.setdefault(name, position)

    def _apply_status(self, positions: Sequence[int], status: str) -> None:
        Status(status)
        for position in positions:
            if not isinstance(position, int) or not 0 <= position < len(self._steps):
                raise ValueError(f"status names step {position!r}, which the journal does not have")
            self._steps[position]["status"] = status

    # ---- writing -------------------------------------------------------------------------------
    def _append(self, payload: dict[str, Any]) -> None:
        try:
            _drop_torn_tail(self.index_path, self._intact)
            _append_line(self.index_path, payload)
            self._intact = self.index_path.stat().st_size
        except OSError as error:
            raise JournalError(f"cannot write the journal {str(self.index_path)!r}: {error.strerror or error}") from error

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self._metadata)

    def update_metadata(self, **values: Any) -> None:
        self._append({"kind": "metadata", "values": values})
        self._metadata.update(values)

    @property
    def base_digests(self) -> dict[str, str] | None:
        """Digests of every parameter and buffer of the model the journal started from."""
        return None if self._base is None else dict(self._base)

    def record_base(self, model: Any) -> None:
        """Store the digests of the unedited ``model`` (once, before the first step)."""
        if self._base is not None:
            return
        if self._steps:
            raise JournalError(f"journal {str(self.directory)!r} already has steps; its base model can no longer be recorded")
        digests = model_digests(model)
        self._append({"kind": "base", "parameters": digests})
        self._base = digests

    def check_base(self, model: Any, *, what: str = "this model") -> None:
        """Raise :class:`JournalError` unless ``model`` is bit for bit the journal's base model."""
        if self._base is None:
            raise JournalError(f"journal {str(self.directory)!r} stores no base-model digests, so {what} cannot be checked against it")
        self._compare(model_digests(model), self._base, what, "the model this journal started from")

    def check_current(self, model: Any, *, what: str = "this model") -> None:
        """Raise :class:`JournalError` unless ``model`` is in the state the journal's applied
        steps leave: every weight a step changed as the last applied step left it, every other
        weight as in the base model."""
        if self._base is None:
            raise JournalError(f"journal {str(self.directory)!r} stores no base-model digests, so {what} cannot be checked against it")
        self._compare(model_digests(model), {**self._base, **self.expected_digests()}, what, "the state its journal describes")

    def _compare(self, actual: dict[str, str], expected: dict[str, str], what: str, target: str) -> None:
        if actual.keys() != expected.keys():
            missing = sorted(expected.keys() - actual.keys())[:3]
            extra = sorted(actual.keys() - expected.keys())[:3]
            raise JournalError(f"{what} has other parameters than {target} (missing {missing}, extra {extra})")
        differing = [name for name in expected if actual[name] != expected[name]]
        if differing:
            raise JournalError(
                f"{what} is not {target}: {len(differing)} parameter(s) differ "
                f"({', '.join(differing[:3])}{' ...' if len(differing) > 3 else ''}); load the right model"
            )

    def add_requests(self, requests: Iterable[EditRequest]) -> None:
        """Write each request whose id the journal has not seen; a known id with other content
        is an error (request ids must name one request)."""
        known = self.requests()
        for request in requests:
            data = request.model_dump(mode="json")
            if request.request_id in known:
                if known[request.request_id] != data:
                    raise JournalError(
                        f"request id {request.request_id!r} is already in journal {str(self.directory)!r} "
                        f"with other content; give the new request another id"
                    )
                continue
            try:
                _drop_torn_tail(self._requests_path, self._requests_intact)
                _append_line(self._requests_path, {"request_id": request.request_id, "request": data})
                self._requests_intact = self._requests_path.stat().st_size
            except OSError as error:
                raise JournalError(f"cannot write {str(self._requests_path)!r}: {error.strerror or error}") from error
            known[request.request_id] = data

    def needs_base(self, names: Iterable[str]) -> list[str]:
        """The weights among ``names`` no step of this journal has changed yet."""
        return [name for name in names if name not in self._touched]

    def append(self, record: EditRecord, *, base: dict[str, torch.Tensor] | None = None, model: Any = None) -> int:
        """Save ``record`` (files first, then its index line) and return its position.

        ``base`` holds the value before this step of each weight :meth:`needs_base` named;
        ``model`` (the model right after the step) supplies checkpoint values.
        """
        position = len(self._steps)
        folder = self.directory / "records" / f"{position:05d}"
        staging = self.directory / "records" / f".{position:05d}.tmp"
        changes = record.weights.changes if record.weights is not None else {}
        missing = [name for name in self.needs_base(changes) if base is None or name not in base]
        if missing:
            raise JournalError(f"step {record.step_index} changes {', '.join(missing[:3])} for the first time; pass their values before it as base")
        if model is not None:
            self._checkpoint(changes, model)
        files: dict[str, str] = {}
        try:
            for leftover in (staging, folder):  # left behind by a crash before the index was written
                if leftover.exists():
                    shutil.rmtree(leftover)
            staging.mkdir(parents=True)
            base_tensors = {name: base[name] for name in self.needs_base(changes)} if base else {}
            _save_tensors(staging, "base.safetensors", base_tensors, files)
            _save_tensors(staging, "full.safetensors", {n: c.full for n, c in changes.items() if c.full is not None}, files)
            _save_tensors(staging, "factors.safetensors", {
                f"{n}/{i}/{side}": tensor
                for n, c in changes.items() for i, pair in enumerate(c.factors or [])
                for side, tensor in zip(("left", "right"), pair)
            }, files)
            memory = None
            if record.memory is not None:
                tensors: dict[str, torch.Tensor] = {}
                memory = {
                    "store": record.memory.store,
                    "before": _entries_index(record.memory.before, "before", tensors),
                    "after": _entries_index(record.memory.after, "after", tensors),
                }
                _save_tensors(staging, "memory.safetensors", tensors, files)
            _save_tensors(staging, "state.safetensors", record.editor_state, files)
            os.replace(staging, folder)
            _fsync_directory(folder.parent)
        except OSError as error:
            shutil.rmtree(staging, ignore_errors=True)
            raise JournalError(
                f"cannot write step {position}'s record to {str(folder)!r}: {error.strerror or error}"
            ) from error
        line = {
            "kind": "step", "position": position, "step_index": record.step_index,
            "step_name": record.step_name, "editor": record.editor, "family": record.family,
            "config": record.config, "request_ids": record.request_ids, "seconds": record.seconds,
            "weights": {
                n: {"before": c.before, "after": c.after, "form": c.form,
                    "ranks": [int(l.shape[1]) for l, _ in c.factors or []]}
                for n, c in changes.items()
            } if record.weights is not None else None,
            "base": sorted(base_tensors),
            "memory": memory,
            "state": sorted(record.editor_state),
            "files": files,
            "status": APPLIED,
        }
        self._append(line)
        line.pop("kind")
        self._steps.append(line)
        for name in changes:
            self._touched.setdefault(name, []).append(position)
        for name in base_tensors:
            self._base_at.setdefault(name, position)
        return position

    def _checkpoint(self, changes: dict[str, TensorChange], model: Any) -> None:
        """Store the whole value of a weight whose last ``checkpoint_every - 1`` applied changes
        were all factored, so rebuilding a state never replays more than that many updates."""
        for name, change in changes.items():
            if change.factors is None:
                continue
            factored = 0  # applied factored changes since the last whole value, newest first
            for position in reversed(self._touched.get(name, [])):
                step = self._steps[position]
                if step["status"] != APPLIED:
                    continue
                if step["weights"][name]["form"] != "factors" or factored + 1 >= self.checkpoint_every:
                    break
                factored += 1
            if factored + 1 >= self.checkpoint_every:
                # The factors stay beside the whole value (they are small), so an export of the
                # run's net change (easyetcon.deltas) can still store it factored.
                change.full = model.parameter(name).detach().to("cpu", copy=True)

    def set_status(self, positions: Sequence[int], status: str) -> None:
        Status(status)
        if not positions:
            return
        self._append({"kind": "status", "positions": list(positions), "status": status})
        self._apply_status(positions, status)

    # ---- reading ---------------------------------------------------------------------------
    def entries(self, status: str | None = None) -> list[dict[str, Any]]:
        if status is not None:
            Status(status)
        return [dict(e) for e in self._steps if status is None or e["status"] == status]

    def requests(self) -> dict[str, Any]:
        if self._requests is None:
            self._requests, self._requests_intact = {}, 0
            if self._requests_path.exists():
                lines, self._requests_intact = read_json_lines(self._requests_path, what="journal requests")
                for line in lines:
                    request, request_id = line.get("request"), line.get("request_id")
                    if not isinstance(request, dict) or not isinstance(request_id, str):
                        raise JournalError(f"{str(self._requests_path)!r} holds a line without a request")
                    self._requests[request_id] = request
        return self._requests

    def _folder(self, position: int) -> Path:
        folder = (self.directory / "records" / f"{position:05d}").resolve()
        if not folder.is_relative_to((self.directory / "records").resolve()):
            raise JournalError(f"step {position}'s record folder {str(folder)!r} lies outside the journal")
        return folder

    def _tensors(self, position: int, name: str) -> dict[str, torch.Tensor]:
        """One safetensors file of a step's record, checked against the SHA-256 in its line."""
        expected = self._steps[position]["files"].get(name)
        if expected is None:
            return {}
        path = self._folder(position) / name
        try:
            data = path.read_bytes()
        except OSError as error:
            raise JournalError(f"step {position}'s record file {str(path)!r} cannot be read: {error.strerror or error}") from error
        if hashlib.sha256(data).hexdigest() != expected:
            raise JournalError(
                f"step {position}'s record file {str(path)!r} does not match its checksum (truncated, "
                f"edited or corrupted); nothing was changed"
            )
        try:
            return load_safetensors(data)
        except (SafetensorError, ValueError) as error:
            raise JournalError(f"step {position}'s record file {str(path)!r} is unreadable: {error}") from error

    def record(self, position: int) -> EditRecord:
        """The step at ``position``, with every file verified."""
        if not 0 <= position < len(self._steps):
            raise JournalError(f"journal {str(self.directory)!r} has no step {position}")
        entry = self._steps[position]
        weights = None
        if entry.get("weights") is not None:
            full = self._tensors(position, "full.safetensors")
            factors = self._tensors(position, "factors.safetensors")
            changes = {}
            for name, info in entry["weights"].items():
                change = TensorChange(info["before"], info["after"])
                try:
                    if info["form"] == "full":
                        change.full = full[name]
                    if info.get("ranks"):  # a factored change, or a checkpoint that kept its factors
                        change.factors = [
                            (factors[f"{name}/{i}/left"], factors[f"{name}/{i}/right"]) for i in range(len(info["ranks"]))
                        ]
                except KeyError as error:
                    raise JournalError(f"step {position}'s record lacks tensor {error} of {name!r}") from error
                changes[name] = change
            weights = WeightDelta(changes)
        memory = None
        if entry.get("memory") is not None:
            tensors = self._tensors(position, "memory.safetensors")
            info = entry["memory"]
            try:
                memory = MemoryDelta(
                    info["store"], _entries_from(info["before"], "before", tensors), _entries_from(info["after"], "after", tensors)
                )
            except KeyError as error:
                raise JournalError(f"step {position}'s memory record lacks {error}") from error
        state = self._tensors(position, "state.safetensors")
        return EditRecord(
            step_index=entry["step_index"], step_name=entry["step_name"], editor=entry["editor"],
            family=entry["family"], config=entry["config"], request_ids=entry["request_ids"],
            weights=weights, memory=memory, seconds=entry.get("seconds", 0.0), editor_state=state,
        )

    def __len__(self) -> int:
        return len(self._steps)

    # ---- states of weights ---------------------------------------------------------------------
    def _applied_chain(self, name: str, before_position: int) -> list[int]:
        return [p for p in self._touched.get(name, []) if p < before_position and self._steps[p]["status"] == APPLIED]

    def base_value(self, name: str) -> torch.Tensor:
        """The value of weight ``name`` before any step of this journal changed it."""
        position = self._base_at.get(name)
        if position is None:
            raise JournalError(f"journal {str(self.directory)!r} stores no base value of {name!r}")
        tensors = self._tensors(position, "base.safetensors")
        if name not in tensors:
            raise JournalError(f"step {position}'s record lacks the base value of {name!r}")
        return tensors[name]

    def state_before(self, name: str, position: int, *, device: torch.device | str = "cpu") -> torch.Tensor:
        """The value of weight ``name`` just before step ``position``, as the applied steps
        before it left it: rebuilt from the nearest whole value and verified by its digest."""
        chain = self._applied_chain(name, position)
        start = 0
        for i in range(len(chain) - 1, -1, -1):
            if self._steps[chain[i]]["weights"][name]["form"] == "full":
                start = i
                break
        if chain and self._steps[chain[start]]["weights"][name]["form"] == "full":
            value = self.record(chain[start]).weights.changes[name].full.to(device)
            rest = chain[start + 1 :]
        else:
            value = self.base_value(name).to(device)
            rest = chain
        for q in rest:
            value = self.record(q).weights.changes[name].rebuild(value)
        expected = self._steps[chain[-1]]["weights"][name]["after"] if chain else self._base_digest(name)
        if tensor_digest(value) != expected:
            raise JournalError(
                f"rebuilding {name!r} before step {position} does not reproduce its recorded digest "
                f"(damaged record, or factors that round differently on this device)"
            )
        return value

    def _base_digest(self, name: str) -> str:
        position = self._base_at.get(name)
        if position is None:
            raise JournalError(f"journal {str(self.directory)!r} stores no base value of {name!r}")
        return self._steps[position]["weights"][name]["before"]  # the first step to change it started from the base

    def expected_digests(self) -> dict[str, str]:
        """For each weight a step changed: its digest as the applied steps leave it."""
        expected = {}
        for name in self._touched:
            chain = self._applied_chain(name, len(self._steps))
            expected[name] = self._steps[chain[-1]]["weights"][name]["after"] if chain else self._base_digest(name)
        return expected

    # ---- rolling back and replaying ---------------------------------------------------------
    def rollback(self, model: Any, *, last: int | None = None, mark: bool = True) -> list[int]:
        """Undo applied steps newest first (all, or the ``last`` N) and mark them undone.

        Every weight is first checked to be as the journal left it; the restored weights are
        rebuilt from the records and checked against their digests before they are written.
        With ``mark=False`` the statuses are left for the caller to set (after saving).
        """
        if last is not None and last < 1:
            raise UndoError(f"last must be at least 1, got {last}")
        applied = [e["position"] for e in self._steps if e["status"] == APPLIED]
        chosen = applied[::-1] if last is None else applied[::-1][:last]
        if not chosen:
            return []
        oldest = min(chosen)
        names = sorted({n for p in chosen for n in (self._steps[p].get("weights") or {})})
        current = self.expected_digests()
        check_digests(model, {n: current[n] for n in names}, "undo")
        targets = {n: self.state_before(n, oldest, device=model.parameter(n).device) for n in names}
        memories = [self.record(p).memory for p in chosen if self._steps[p].get("memory") is not None]
        write_weights(model, targets)
        for memory in memories:
            model.memory_store(memory.store).apply_states(memory.before)
        if mark:
            self.set_status(chosen, UNDONE)
        return chosen

    def replay(self, model: Any, *, positions: Sequence[int] | None = None) -> list[int]:
        """Apply the applied steps' recorded changes to ``model``, which must be the base model
        (checked when the journal stores its digests)."""
        if self._base is not None:
            self.check_base(model, what="the model to replay onto")
        applied = list(positions) if positions is not None else [e["position"] for e in self._steps if e["status"] == APPLIED]
        for position in applied:
            self.record(position).redo(model)
        return applied

    def restore_memories(self, model: Any, registry: Any) -> None:
        """Rebuild external memories of applied steps and attach their editors to ``model``."""
        for entry in self.entries(APPLIED):
            if entry["family"] != "external-memory":
                continue
            record = self.record(entry["position"])
            if record.memory is not None:
                model.memory_store(record.memory.store).apply_states(record.memory.after)
            store_key = record.memory.store if record.memory else entry["step_name"]
            if store_key not in model.attached_memories:
                editor = registry.editor(entry["editor"]).create(entry["config"])
                editor.attach(model, model.memory_store(store_key))
                model.attached_memories[store_key] = editor


def _legacy_version(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("version", "unknown")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return "unknown"
