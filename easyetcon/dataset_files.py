"""Edit-dataset files: read their records, recognise their format, load them as requests.

The formats themselves are registered by plugins (``easyetcon_register_datasets``; the built-in
``easyetcon_data`` plugin registers KnowEdit, CounterFact, ZsRE and QA): this module only reads
a file, asks each registered format's ``detect`` whether it recognises the records, and calls
the loader. Everything that accepts ``--data`` (``easyetcon edit``, ``easyetcon eval``) reads
requests through :func:`load_requests_from`.

Local files (a JSON list, JSON lines, or one JSON object whose values are lists, like KnowEdit's
Sanitation file) are read with ``datasets.load_dataset("json", data_files=...)``; a Hugging Face
hub id (``owner/name``) is read with ``datasets.load_dataset(id)`` and needs the network.
Columns that ``datasets`` fills with ``None`` for records that lack them are dropped again, so a
record looks as it does in the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from easyetcon.errors import RequestError, UnknownNameError
from easyetcon.hub import HUB_ID
from easyetcon.requests import EditRequest, load_requests



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
        if HUB_ID.match(source) and not source.endswith((".json", ".jsonl")):
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


def _detectors(registry: Any) -> list[tuple[str, Any]]:
    """Formats that can be recognised, in the order they were registered: a plugin registers its
    most specific shapes first (see ``easyetcon_register_datasets``)."""
    return [(info.name, info.detect) for info in registry.datasets_in_registration_order() if info.detect is not None]


def _matches(detect: Any, records: list[dict[str, Any]]) -> bool:
    try:
        return bool(detect(records))
    except Exception:  # a third-party detector that chokes on a foreign shape says "no"
        return False


def _keys(record: Any) -> str:
    return ", ".join(sorted(record)) if isinstance(record, dict) else type(record).__name__


def detect_format(records: list[dict[str, Any]], *, source: str = "records", registry: Any = None) -> str:
    """The name of the registered dataset format whose ``detect`` accepts every record.

    Unknown shapes and files that mix formats raise :class:`DatasetFormatError` naming the record
    and the keys found.
    """
    if registry is None:
        from easyetcon.plugins import get_host

        registry = get_host().registry
    if not records:
        raise DatasetFormatError(f"{source} holds no records")
    detectors = _detectors(registry)
    for name, detect in detectors:
        if _matches(detect, records):
            return name
    known = ", ".join(name for name, _ in detectors) or "none (is the data plugin installed?)"
    first = [name for name, detect in detectors if _matches(detect, records[:1])]
    if not first:
        raise DatasetFormatError(
            f"{source}: unknown dataset format; record 0 has keys [{_keys(records[0])}]. Known formats: "
            f"{known}. Name the format explicitly, or convert the file (see docs/datasets.md)"
        )
    for index, record in enumerate(records[1:], start=1):
        if not any(_matches(detect, [record]) for name, detect in detectors if name in first):
            other = [name for name, detect in detectors if _matches(detect, [record])]
            what = f"looks like {other[0]}" if other else "matches no known format"
            raise DatasetFormatError(
                f"{source}: mixed formats — record 0 is {first[0]} but record {index} {what} "
                f"(keys [{_keys(record)}]); keep one format per file"
            )
    raise DatasetFormatError(f"{source}: no single format fits all records (record 0 looks like {first[0]})")


def load_edit_dataset(
    path: str | Path, format: str | None = None, *, limit: int | None = None, registry: Any = None
) -> list[EditRequest]:
    """Edit requests from a dataset file in any registered format.

    ``format`` names a registered dataset (``"knowedit-zsre"``, ``"counterfact"``, ...); without
    it the format is detected from the records. ``limit`` keeps the first N requests.
    """
    if registry is None:
        from easyetcon.plugins import get_host

        registry = get_host().registry
    source = f"dataset file {str(path)!r}"
    if format is None and not _detectors(registry):
        # no format plugin loaded: easyetcon's own request files still load (the core reads those)
        requests = load_requests(path)
        return requests[:limit] if limit is not None else requests
    if format is None:
        format = detect_format(read_records(path), source=source, registry=registry)
    try:
        info = registry.dataset(format)
    except UnknownNameError as error:
        raise DatasetFormatError(f"{error}") from None
    fields = info.config_model.model_fields
    if "path" not in fields:
        raise DatasetFormatError(f"dataset {format!r} is not read from a file (its options: {', '.join(fields) or 'none'})")
    options: dict[str, Any] = {"path": str(path)}
    if limit is not None and "limit" in fields:
        options["limit"] = limit
    requests = info.load(options)
    return requests[:limit] if limit is not None else requests


def load_requests_from(
    data: str | Path, format: str | None = None, *, limit: int | None = None,
    options: dict[str, Any] | None = None, registry: Any = None,
) -> list[EditRequest]:
    """Requests from a dataset file (any registered format, detected unless ``format`` names
    one) or from a registered dataset's name (``"fact-world"``, with its ``options``).
    ``limit`` keeps the first N."""
    if registry is None:
        from easyetcon.plugins import get_host

        registry = get_host().registry
    if limit is not None and limit < 1:
        raise RequestError(f"limit must be at least 1, not {limit}")
    data = str(data)
    names = {info.name for info in registry.datasets()}
    looks_like_file = Path(data).expanduser().exists() or "/" in data or data.endswith((".json", ".jsonl"))
    if looks_like_file and data not in names:
        if options:
            raise RequestError(f"dataset options {sorted(options)} apply to registered datasets, not to the file {data!r}")
        return load_edit_dataset(Path(data).expanduser(), format, limit=limit, registry=registry)
    if format is not None:
        raise RequestError(f"a format ({format!r}) applies to dataset files; {data!r} is a registered dataset")
    try:
        info = registry.dataset(data)
    except UnknownNameError as error:
        raise RequestError(f"{data!r} is neither a dataset file nor a registered dataset: {error}") from None
    requests = info.load(options or {})
    return requests[:limit] if limit is not None else requests
