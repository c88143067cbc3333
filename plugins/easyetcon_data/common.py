"""Small shared pieces of the loaders: the config every file loader takes, turning raw answer
fields into probes, and collecting per-record problems into one error."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from easyetcon.requests import EditRequest, Probe
from easyetcon.dataset_files import DatasetFormatError, read_records


class FileDatasetConfig(BaseModel):
    """Options of a file-based dataset: where it is and how many records to take."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="JSON / JSON-lines file (or a hub id when online).")
    limit: int | None = Field(default=None, ge=1, description="Only the first N records.")


class RecordProblem(Exception):
    """One record cannot be converted; the message says which field and what was found."""


def need(record: dict[str, Any], key: str) -> Any:
    if key not in record or record[key] in (None, ""):
        raise RecordProblem(f"missing {key!r} (found keys: {', '.join(sorted(record)) or 'none'})")
    return record[key]


def text(record: dict[str, Any], key: str) -> str:
    value = need(record, key)
    if not isinstance(value, str):
        raise RecordProblem(f"{key!r} must be a string, got {type(value).__name__}")
    return value


def flatten_answers(value: Any) -> list[str]:
    """Acceptable answers from a string, a list, or KnowEdit's nested ``[[alias, ...], ...]``
    lists, in order, without blanks or duplicates."""
    flat: list[str] = []

    def walk(item: Any) -> None:
        if isinstance(item, str):
            if item.strip() and item not in flat:
                flat.append(item)
        elif isinstance(item, (list, tuple)):
            for sub in item:
                walk(sub)

    walk(value)
    return flat


class ProbeCounter:
    """Builds probes and counts the ones dropped because they have no answer."""

    def __init__(self) -> None:
        self.dropped = 0

    def probe(self, prompt: Any, answers: Any, kind: str | None) -> Probe | None:
        flat = flatten_answers(answers)
        if not isinstance(prompt, str) or not prompt.strip() or not flat:
            self.dropped += 1
            return None
        return Probe(prompt=prompt, answer=flat[0], aliases=tuple(flat[1:]), kind=kind)

    def probes(self, entries: Any, kind: str | None, *, prompt_key: str = "prompt", answer_key: str = "ground_truth") -> list[Probe]:
        """Probes from a list of ``{prompt_key: ..., answer_key: ...}`` dicts."""
        if entries is None:
            return []
        if isinstance(entries, dict):
            entries = [entries]
        if not isinstance(entries, list):
            raise RecordProblem(f"{kind or 'probes'} must be a list of objects, got {type(entries).__name__}")
        found = []
        for entry in entries:
            if not isinstance(entry, dict):
                raise RecordProblem(f"{kind or 'probe'} entries must be objects, got {type(entry).__name__}")
            made = self.probe(entry.get(prompt_key), entry.get(answer_key), kind)
            if made is not None:
                found.append(made)
        return found

    def grouped(self, groups: Any, field: str) -> list[Probe]:
        """KnowEdit's ``{"Reasoning": [...], "Subject_Aliasing": [...]}``: kind = group name."""
        if groups is None:
            return []
        if not isinstance(groups, dict):
            raise RecordProblem(f"{field!r} must be an object of named probe lists, got {type(groups).__name__}")
        found: list[Probe] = []
        for kind, entries in groups.items():
            found.extend(self.probes(entries, kind))
        return found


def split_ground_truth(target: str, ground_truth: Any) -> tuple[str | None, dict[str, Any]]:
    """The canonical old answer and metadata keeping the others. A ground truth equal to the
    target (a known quirk of some benchmark records) is kept in metadata only."""
    flat = flatten_answers(ground_truth)
    metadata: dict[str, Any] = {}
    if len(flat) > 1:
        metadata["ground_truth_aliases"] = flat[1:]
    if not flat:
        return None, metadata
    if flat[0].strip() == target.strip():
        metadata["ground_truth_equals_target"] = flat[0]
        return None, metadata
    return flat[0], metadata


def convert_records(
    records: Sequence[dict[str, Any]],
    convert: Callable[[dict[str, Any], int, ProbeCounter], EditRequest | list[EditRequest] | None],
    *,
    source: str,
    format_name: str,
    limit: int | None = None,
) -> list[EditRequest]:
    """Convert every record, reporting every broken one (index and field) in one error."""
    counter = ProbeCounter()
    requests: list[EditRequest] = []
    problems: list[str] = []
    for index, record in enumerate(records):
        if limit is not None and len(requests) >= limit:
            break
        try:
            made = convert(record, index, counter)
        except RecordProblem as problem:
            problems.append(f"record {index}: {problem}")
            continue
        except ValidationError as error:
            for item in error.errors():
                where = ".".join(str(p) for p in item["loc"]) or "(record)"
                problems.append(f"record {index}: field {where!r}: {item['msg']}")
            continue
        if made is None:
            continue
        requests.extend(made if isinstance(made, list) else [made])
    if problems:
        shown = "\n".join(f"  - {p}" for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise DatasetFormatError(
            f"{source}: {len(problems)} record(s) cannot be read as {format_name}:\n{shown}{more}"
        )
    if not requests:
        raise DatasetFormatError(f"{source}: no edit requests found")
    if limit is not None:
        requests = requests[:limit]
    if counter.dropped:
        warnings.warn(f"{source}: {counter.dropped} probe(s) without an answer were left out", stacklevel=3)
    return requests


def file_loader(
    format_name: str,
    convert: Callable[[dict[str, Any], int, ProbeCounter], EditRequest | list[EditRequest] | None],
    *,
    unwrap: Callable[[list[dict[str, Any]], str], list[dict[str, Any]]] | None = None,
) -> Callable[[FileDatasetConfig], list[EditRequest]]:
    """A dataset loader (``loader(config)``) that reads ``config.path`` and converts each record."""

    def load(config: FileDatasetConfig) -> list[EditRequest]:
        records = read_records(config.path)
        if unwrap is not None:
            records = unwrap(records, config.path)
        return convert_records(
            records, convert, source=f"dataset file {config.path!r}", format_name=format_name, limit=config.limit
        )

    load.__name__ = f"load_{format_name.replace('-', '_')}"
    load.__doc__ = f"Read a {format_name} file into edit requests."
    return load
