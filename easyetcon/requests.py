"""Edit requests: the one input every editor, dataset loader and metric agrees on."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from easyetcon.errors import RequestError


class Probe(BaseModel):
    """A prompt and the answer(s) that count as correct for it.

    ``answer`` is the canonical answer; ``aliases`` are other strings that also count
    (datasets such as ZsRE ship nested alias lists; metrics use them).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str = Field(min_length=1)
    answer: str = Field(min_length=1)
    aliases: tuple[str, ...] = ()
    kind: str | None = Field(
        default=None, description="Free label, e.g. 'neighborhood', 'same-subject', 'two-hop'."
    )

    @property
    def answers(self) -> tuple[str, ...]:
        """The canonical answer followed by its aliases."""
        return (self.answer, *self.aliases)


class EditRequest(BaseModel):
    """One fact to change: ``prompt`` should be completed by ``target_new`` instead of ``ground_truth``.

    ``prompt`` is the text the model continues (``"The Eiffel Tower is located in"``), ``subject``
    the entity inside it whose fact changes (``"The Eiffel Tower"``), ``target_new`` the new answer
    (``"Rome"``; leading spaces are added by editors that need them, not stored here).
    """

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1)
    subject: str = Field(min_length=1)
    target_new: str = Field(min_length=1)
    ground_truth: str | None = None
    target_aliases: tuple[str, ...] = ()
    rephrase_prompts: list[str] = Field(default_factory=list)
    locality: list[Probe] = Field(default_factory=list)
    portability: list[Probe] = Field(default_factory=list)
    relation: str | None = None
    case_id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("target_new", "subject", "prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not visible_text(value):
            raise ValueError("must not be blank (it holds only spaces or invisible characters)")
        return value

    @field_validator("case_id", mode="before")
    @classmethod
    def _case_id_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) else value

    @model_validator(mode="after")
    def _new_differs_from_old(self) -> EditRequest:
        if self.ground_truth is not None and self.ground_truth.strip() == self.target_new.strip():
            raise ValueError("target_new equals ground_truth: there is nothing to edit")
        return self

    @property
    def request_id(self) -> str:
        """``case_id`` when given, else a short stable hash of prompt and target."""
        if self.case_id is not None:
            return self.case_id
        import hashlib

        digest = hashlib.sha1(f"{self.prompt}\x00{self.target_new}".encode()).hexdigest()
        return digest[:12]

    @property
    def subject_in_prompt(self) -> bool:
        return self.subject in self.prompt

    def require_subject_in_prompt(self) -> None:
        """Raise :class:`RequestError` naming this request if ``subject`` is not in ``prompt``.

        Locate-then-edit editors call this: they need the subject's token positions.
        """
        if not self.subject_in_prompt:
            raise RequestError(
                f"request {self.request_id!r}: subject {self.subject!r} does not occur in prompt "
                f"{self.prompt!r}; fix the record or use an editor that does not locate subjects"
            )


def visible_text(value: str) -> str:
    """``value`` without white space and invisible characters (zero-width spaces, format and
    control characters): empty when nothing in it would show."""
    import unicodedata

    return "".join(c for c in value if not c.isspace() and unicodedata.category(c) not in ("Cf", "Cc", "Zs", "Zl", "Zp"))


def require_unique_ids(requests: Sequence[EditRequest], *, source: str = "requests") -> None:
    """Raise :class:`RequestError` naming each repeated request id and the positions it is at."""
    seen: dict[str, list[int]] = {}
    for index, request in enumerate(requests):
        seen.setdefault(request.request_id, []).append(index)
    repeated = {i: places for i, places in seen.items() if len(places) > 1}
    if repeated:
        shown = "; ".join(f"{i!r} at records {', '.join(map(str, places))}" for i, places in list(repeated.items())[:5])
        raise RequestError(f"{source}: request ids must be unique; repeated: {shown} (give each request its own case_id)")


def _format_validation_error(prefix: str, error: ValidationError) -> list[str]:
    problems = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(record)"
        problems.append(f"{prefix}field {where!r}: {item['msg']}")
    return problems


def parse_requests(records: Iterable[Any], *, source: str = "requests") -> list[EditRequest]:
    """Validate raw records (dicts) into :class:`EditRequest` objects.

    Every malformed record is reported, each with its index and field, in one :class:`RequestError`.
    """
    requests: list[EditRequest] = []
    problems: list[str] = []
    for index, record in enumerate(records):
        if isinstance(record, EditRequest):
            requests.append(record)
            continue
        if not isinstance(record, dict):
            problems.append(f"record {index}: expected an object, got {type(record).__name__}")
            continue
        try:
            requests.append(EditRequest.model_validate(record))
        except ValidationError as error:
            problems.extend(_format_validation_error(f"record {index}: ", error))
    if problems:
        shown = problems[:20]
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise RequestError(
            f"{source}: {len(problems)} problem(s) in edit requests:\n"
            + "\n".join(f"  - {p}" for p in shown)
            + more
        )
    if not requests:
        raise RequestError(f"{source}: no edit requests found")
    return requests


def load_requests(path: str | Path) -> list[EditRequest]:
    """Read edit requests from a JSON list, a JSON object with a ``requests`` list, or JSON lines."""
    path = Path(path)
    if not path.is_file():
        raise RequestError(f"request file {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise RequestError(f"request file {str(path)!r} is not UTF-8 text (byte {error.start}); save it as UTF-8") from None
    except OSError as error:
        raise RequestError(f"request file {str(path)!r} cannot be read: {error.strerror or error}") from None
    if not text.strip():
        raise RequestError(f"request file {str(path)!r} is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as json_error:
        try:  # JSON lines
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError:
            raise RequestError(
                f"request file {str(path)!r} is neither JSON nor JSON lines: {json_error}"
            ) from None
    if isinstance(data, dict):
        if "requests" not in data:
            raise RequestError(
                f"request file {str(path)!r}: top-level object needs a 'requests' list; "
                f"found keys {sorted(data)}"
            )
        data = data["requests"]
    if not isinstance(data, list):
        raise RequestError(f"request file {str(path)!r}: expected a list of records")
    return parse_requests(data, source=str(path))


def save_requests(requests: Sequence[EditRequest], path: str | Path) -> None:
    """Write requests as a JSON list that :func:`load_requests` reads back unchanged."""
    Path(path).write_text(
        json.dumps([r.model_dump(mode="json") for r in requests], indent=2), encoding="utf-8"
    )


#: What each argument of EasyEdit's ``BaseEditor.edit`` becomes in an :class:`EditRequest`.
EASYEDIT_ARGUMENTS = {
    "prompts": "prompt",
    "target_new": "target_new",
    "subject": "subject",
    "ground_truth": "ground_truth",
    "rephrase_prompts": "rephrase_prompts",
    "locality_inputs": "locality probes, their kind the input's key (e.g. 'neighborhood')",
    "portability_inputs": "portability probes, their kind the input's key (e.g. 'one_hop')",
}


def requests_from_easyedit(
    *,
    prompts: str | Sequence[str],
    target_new: str | Sequence[str],
    subject: str | Sequence[str],
    ground_truth: str | Sequence[str] | None = None,
    rephrase_prompts: str | Sequence[Any] | None = None,
    locality_inputs: dict[str, dict[str, Any]] | None = None,
    portability_inputs: dict[str, dict[str, Any]] | None = None,
) -> list[EditRequest]:
    """Requests from the arguments of EasyEdit's ``BaseEditor.edit`` (:data:`EASYEDIT_ARGUMENTS`
    says what each becomes). Lists are aligned by position, as in EasyEdit; a single string
    stands for a list of one. ``locality_inputs`` and ``portability_inputs`` map a kind to
    ``{"prompt": [...], "ground_truth": [...]}``, one entry per request, each a string or a list
    (several probes, or a ground truth with aliases). EasyEdit's ``'<|endoftext|>'`` placeholder
    ground truth means none. A length that does not match, or an empty field, is an error naming
    the argument and the position."""

    def as_list(name: str, value: Any) -> list[Any] | None:
        if value is None:
            return None
        values = [value] if isinstance(value, str) else list(value)
        if len(values) != count:
            raise RequestError(f"EasyEdit argument {name!r} has {len(values)} entries, prompts has {count}")
        return values

    prompt_list = [prompts] if isinstance(prompts, str) else list(prompts)
    count = len(prompt_list)
    if count == 0:
        raise RequestError("EasyEdit argument 'prompts' is empty")
    targets, subjects = as_list("target_new", target_new), as_list("subject", subject)
    truths = as_list("ground_truth", ground_truth)
    rephrases = as_list("rephrase_prompts", rephrase_prompts)

    def probe_columns(name: str, inputs: dict[str, dict[str, Any]] | None) -> list[tuple[str, list[Any], list[Any]]]:
        """Each kind of ``inputs`` with its prompt and ground-truth columns, checked once."""
        columns = []
        for kind, fields in (inputs or {}).items():
            if not isinstance(fields, dict) or "prompt" not in fields or "ground_truth" not in fields:
                raise RequestError(f"EasyEdit argument {name}[{kind!r}] needs 'prompt' and 'ground_truth' lists")
            columns.append((kind, as_list(f"{name}[{kind!r}]['prompt']", fields["prompt"]),
                            as_list(f"{name}[{kind!r}]['ground_truth']", fields["ground_truth"])))
        return columns

    def probes(name: str, columns: list[tuple[str, list[Any], list[Any]]], index: int) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for kind, prompt_column, truth_column in columns:
            prompt_at, truth_at = prompt_column[index], truth_column[index]
            prompts_here = [prompt_at] if isinstance(prompt_at, str) else list(prompt_at)
            if isinstance(truth_at, str):
                truths_here = [truth_at] * len(prompts_here)
            elif len(prompts_here) == 1:  # one prompt: its ground truth, with aliases
                truths_here = [truth_at]
            else:
                truths_here = list(truth_at)
            if len(truths_here) != len(prompts_here):
                raise RequestError(
                    f"EasyEdit argument {name}[{kind!r}] at position {index}: {len(prompts_here)} prompts, "
                    f"{len(truths_here)} ground truths"
                )
            for probe_prompt, truth in zip(prompts_here, truths_here):
                answers = [t for t in _flatten(truth) if isinstance(t, str)]
                found.append({"prompt": probe_prompt, "answer": answers[0] if answers else "", "aliases": answers[1:], "kind": kind})
        return found

    locality_columns = probe_columns("locality_inputs", locality_inputs)
    portability_columns = probe_columns("portability_inputs", portability_inputs)
    records = []
    for index in range(count):
        truth = truths[index] if truths is not None else None
        rephrase = rephrases[index] if rephrases is not None else []
        records.append({
            "prompt": prompt_list[index],
            "target_new": targets[index],
            "subject": subjects[index],
            "ground_truth": None if truth in (None, "<|endoftext|>") else truth,
            "rephrase_prompts": [rephrase] if isinstance(rephrase, str) else list(rephrase),
            "locality": probes("locality_inputs", locality_columns, index),
            "portability": probes("portability_inputs", portability_columns, index),
        })
    return parse_requests(records, source="EasyEdit's edit() arguments")


def _flatten(value: Any) -> list[Any]:
    """Nested lists of answers (ZsRE's aliases) as one list."""
    if isinstance(value, (list, tuple)):
        return [item for part in value for item in _flatten(part)]
    return [value]
