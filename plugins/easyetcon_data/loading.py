"""Loading any supported edit-dataset file: detect its format from the records (or take the
name given) and convert it with the registered loader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from easyetcon.errors import UnknownNameError
from easyetcon.requests import EditRequest
from easyetcon_data.reading import DatasetFormatError, read_records

#: Built-in formats in detection order: the most specific shapes first.
DETECTION_ORDER = (
    "edit-requests",
    "knowedit-zsre",
    "knowedit-counterfact",
    "knowedit-recent",
    "knowedit",
    "knowedit-wikibio",
    "knowedit-sanitation",
    "counterfact",
    "counterfact-easyedit",
    "zsre-mend",
    "qa",
)


def _detectors(registry: Any) -> list[tuple[str, Any]]:
    found = {info.name: info.detect for info in registry.datasets() if info.detect is not None}
    ordered = [name for name in DETECTION_ORDER if name in found]
    ordered += sorted(name for name in found if name not in DETECTION_ORDER)
    return [(name, found[name]) for name in ordered]


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
