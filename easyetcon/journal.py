"""The edit journal: every applied chain step on disk — its editor, config, requests and
record — written atomically, so a run can be inspected, replayed or rolled back later.

Layout of a journal folder::

    journal.json            index: one entry per step, in order, with its status
    requests.json           every request the run saw, by request id
    records/00000/          one folder per step: record.json + safetensors files
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from easyetcon.errors import JournalError
from easyetcon.records import EditRecord
from easyetcon.requests import EditRequest

JOURNAL_VERSION = 1
APPLIED, UNDONE, ROLLED_BACK = "applied", "undone", "rolled-back"


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary file in the same folder, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(data, stream, indent=2)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class Journal:
    """An append-only log of chain steps in ``directory``."""

    def __init__(self, directory: str | Path, *, create: bool = True, metadata: dict[str, Any] | None = None) -> None:
        self.directory = Path(directory)
        self.index_path = self.directory / "journal.json"
        if self.index_path.exists():
            try:
                self._index = json.loads(self.index_path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as error:
                raise JournalError(f"journal {str(self.index_path)!r} is unreadable: {error}") from error
            if self._index.get("version") != JOURNAL_VERSION:
                raise JournalError(
                    f"journal {str(self.directory)!r} has version {self._index.get('version')!r}; "
                    f"this easyetcon reads version {JOURNAL_VERSION}"
                )
        elif create:
            self._index = {
                "version": JOURNAL_VERSION,
                "created": datetime.now(timezone.utc).isoformat(),
                "metadata": metadata or {},
                "steps": [],
            }
            write_json_atomic(self.index_path, self._index)
        else:
            raise JournalError(f"no journal in {str(self.directory)!r} (journal.json is missing)")
        self._requests_path = self.directory / "requests.json"

    @classmethod
    def open(cls, directory: str | Path) -> Journal:
        """Open an existing journal (error if there is none)."""
        return cls(directory, create=False)

    # ---- writing ---------------------------------------------------------------------------
    @property
    def metadata(self) -> dict[str, Any]:
        return self._index.setdefault("metadata", {})

    def update_metadata(self, **values: Any) -> None:
        self.metadata.update(values)
        write_json_atomic(self.index_path, self._index)

    def add_requests(self, requests: Iterable[EditRequest]) -> None:
        known = self.requests()
        for request in requests:
            known.setdefault(request.request_id, request.model_dump(mode="json"))
        write_json_atomic(self._requests_path, known)

    def append(self, record: EditRecord) -> int:
        """Save ``record`` (tensors first, then the index entry) and return its position."""
        position = len(self._index["steps"])
        folder = f"records/{position:05d}"
        staging = self.directory / f"records/.{position:05d}.tmp"
        if staging.exists():
            shutil.rmtree(staging)
        record.save(staging)
        final = self.directory / folder
        if final.exists():  # left behind by a crash before the index was written
            shutil.rmtree(final)
        os.replace(staging, final)
        self._index["steps"].append(
            {
                "position": position,
                "step_index": record.step_index,
                "step_name": record.step_name,
                "editor": record.editor,
                "family": record.family,
                "config": record.config,
                "request_ids": record.request_ids,
                "seconds": record.seconds,
                "record": folder,
                "status": APPLIED,
            }
        )
        write_json_atomic(self.index_path, self._index)
        return position

    def set_status(self, positions: Sequence[int], status: str) -> None:
        for position in positions:
            self._index["steps"][position]["status"] = status
        write_json_atomic(self.index_path, self._index)

    # ---- reading ---------------------------------------------------------------------------
    def entries(self, status: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self._index["steps"] if status is None or e["status"] == status]

    def requests(self) -> dict[str, Any]:
        if not self._requests_path.exists():
            return {}
        return json.loads(self._requests_path.read_text(encoding="utf-8"))

    def record(self, position: int) -> EditRecord:
        entry = self._index["steps"][position]
        return EditRecord.load(self.directory / entry["record"])

    def __len__(self) -> int:
        return len(self._index["steps"])

    # ---- rolling back and replaying ---------------------------------------------------------
    def rollback(self, model: Any, *, last: int | None = None) -> list[int]:
        """Undo applied steps newest first (all, or the ``last`` N) and mark them undone."""
        applied = [e["position"] for e in self.entries(APPLIED)]
        chosen = applied[::-1] if last is None else applied[::-1][:last]
        for position in chosen:
            self.record(position).undo(model)
        self.set_status(chosen, UNDONE)
        return chosen

    def replay(self, model: Any) -> list[int]:
        """Apply every applied step's recorded change to ``model`` (e.g. the unedited base)."""
        applied = [e["position"] for e in self.entries(APPLIED)]
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
                model.attached_memories.add(store_key)
