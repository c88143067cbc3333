"""easyetcon's own request files (``easyetcon.save_requests``, ``easyetcon world edits``): a list
of :class:`easyetcon.EditRequest` objects, or ``{"requests": [...]}``."""

from __future__ import annotations

from typing import Any

from easyetcon.requests import EditRequest
from easyetcon_data.common import ProbeCounter

REQUEST_KEYS = frozenset(EditRequest.model_fields)


def _request_shape(record: Any) -> bool:
    return (
        isinstance(record, dict)
        and {"prompt", "subject", "target_new"} <= set(record) <= REQUEST_KEYS
        and isinstance(record.get("locality", []), list)
        and isinstance(record.get("portability", []), list)
        and isinstance(record.get("ground_truth", ""), str)
    )


def detect_requests(records: list[dict[str, Any]]) -> bool:
    if len(records) == 1 and set(records[0]) == {"requests"} and isinstance(records[0]["requests"], list):
        return True
    return all(_request_shape(r) for r in records)


def unwrap_requests(records: list[dict[str, Any]], path: str) -> list[dict[str, Any]]:
    if len(records) == 1 and set(records[0]) == {"requests"}:
        return list(records[0]["requests"])
    return records


def convert_request(record: dict[str, Any], index: int, probes: ProbeCounter) -> EditRequest:
    return EditRequest.model_validate(record)
