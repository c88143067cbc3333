"""Reading raw records of an edit dataset with the ``datasets`` library.

Local files (a JSON list, JSON lines, or one JSON object whose values are lists, like KnowEdit's
Sanitation file) are read with ``datasets.load_dataset("json", data_files=...)``; a Hugging Face
hub id (``owner/name``) is read with ``datasets.load_dataset(id)`` and needs the network.
Columns that ``datasets`` fills with ``None`` for records that lack them are dropped again, so a
record looks as it does in the file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from easyetcon.errors import RequestError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class DatasetFormatError(RequestError):
    """A dataset file is missing, empty, unreadable, of an unknown shape, or mixes formats."""


def drop_nones(value: Any) -> Any:
    """Remove ``None`` values from dicts (recursively): ``datasets`` unifies columns across
    records, adding ``None`` for keys a record does not have."""
    if isinstance(value, dict):
        return {k: drop_nones(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_nones(v) for v in value]
    return value


def _quiet_datasets() -> Any:
    import datasets

    datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity_error()
    return datasets


def read_records(path: str | Path, *, split: str = "train") -> list[dict[str, Any]]:
    """The records of a dataset file (or hub id) as plain dicts.

    A file holding one JSON object of lists (``{"success": [...], "locality": [...]}``) gives one
    record: that object. Errors name the file and say what is wrong.
    """
    source = str(path)
    local = Path(source).expanduser()
    if not local.exists():
        if _HUB_ID.match(source) and not source.endswith((".json", ".jsonl")):
            return _read_hub(source, split)
        raise DatasetFormatError(f"dataset file {source!r} does not exist")
    if local.is_dir():
        raise DatasetFormatError(f"{source!r} is a folder; pass a JSON or JSON-lines file")
    if local.stat().st_size == 0 or not local.read_bytes()[:4096].strip():
        raise DatasetFormatError(f"dataset file {source!r} is empty")
    datasets = _quiet_datasets()
    try:
        table = datasets.load_dataset("json", data_files=str(local), split="train")
    except Exception as error:  # datasets wraps parse errors in several exception types
        cause = error.__cause__ or error.__context__ or error
        if isinstance(error, ValueError) and "corresponds to no data" in str(error):
            raise DatasetFormatError(f"dataset file {source!r} holds no records") from None
        raise DatasetFormatError(
            f"dataset file {source!r} is not readable as JSON or JSON lines: "
            f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"
        ) from error
    records = [drop_nones(row) for row in table.to_list()]
    if not records:
        raise DatasetFormatError(f"dataset file {source!r} holds no records")
    bad = next((i for i, r in enumerate(records) if not isinstance(r, dict)), None)
    if bad is not None:
        raise DatasetFormatError(f"dataset file {source!r}, record {bad}: expected a JSON object")
    return records


def _read_hub(hub_id: str, split: str) -> list[dict[str, Any]]:
    datasets = _quiet_datasets()
    try:
        table = datasets.load_dataset(hub_id, split=split)
    except Exception as error:
        raise DatasetFormatError(
            f"{hub_id!r} is not a local file and could not be loaded from the Hugging Face hub "
            f"({type(error).__name__}: {error}); check the path, or go online for hub datasets"
        ) from error
    return [drop_nones(row) for row in table.to_list()]
