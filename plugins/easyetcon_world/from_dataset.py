"""A world built from an edit-dataset file, so the dataset's edits hit a model that held the old fact.

The corpus states each record's ground-truth answer after its prompt, its paraphrases and its
locality probes; a model pretrained on it really holds every fact the edits then change. This
loader reads three layouts (KnowEdit lists, CounterFact with ``requested_rewrite``, ZsRE-MEND
with ``src``/``answers``) and keeps only what the corpus needs; the full dataset loaders are
another module's job.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from easyetcon.requests import EditRequest, Probe
from easyetcon_world.errors import WorldRecordError


class Statement(BaseModel):
    """One sentence of the corpus: ``prompt`` followed by `` answer``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str
    answer: str
    role: str  # "prompt", "rephrase" or "locality"
    record: int


class DatasetWorld(BaseModel):
    """Statements to pretrain on plus the dataset's edit requests, which change some of them."""

    model_config = ConfigDict(extra="forbid")

    format: str = "easyetcon-dataset-world/1"
    source: str
    statements: list[Statement]
    requests: list[EditRequest]
    skipped: list[int]  # indices of records without a ground truth, skipped on request
    unchanged: list[
        int
    ] = []  # records whose target_new equals the ground truth: taught, not edited

    def fingerprint(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()

    def summary(self) -> dict[str, object]:
        return {
            "source": self.source,
            "records": len(self.requests),
            "skipped": len(self.skipped),
            "unchanged": len(self.unchanged),
            "statements": len(self.statements),
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=1), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> DatasetWorld:
        return cls.model_validate_json(Path(path).read_text(encoding="utf-8"))


def _first_text(value: Any) -> str | None:
    """Datasets nest answers in lists (ZsRE aliases, KnowEdit's [[...]]); take the first string."""
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, dict) and "str" in value:  # CounterFact {"str": ..., "id": ...}
        return _first_text(value["str"])
    if isinstance(value, (list, tuple)):
        for item in value:
            text = _first_text(item)
            if text:
                return text
    return None


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, str) and v.strip()]
    return []


def _probes(groups: Any) -> list[Probe]:
    """``{"Relation_Specificity": [{"prompt", "ground_truth"}, ...], ...}`` -> probes (kind = key)."""
    probes = []
    if isinstance(groups, dict):
        for kind, items in groups.items():
            for item in items if isinstance(items, list) else []:
                answer = _first_text(item.get("ground_truth")) if isinstance(item, dict) else None
                if answer and isinstance(item.get("prompt"), str) and item["prompt"].strip():
                    probes.append(Probe(prompt=item["prompt"], answer=answer, kind=kind))
    return probes


def _new_question_probe(record: dict) -> list[Probe]:
    portability = record.get("portability") or {}
    question, answer = portability.get("New Question"), portability.get("New Answer")
    if (
        isinstance(question, str)
        and isinstance(answer, str)
        and question.strip()
        and answer.strip()
    ):
        return [Probe(prompt=question, answer=answer, kind="portability")]
    return []


def _parse_record(record: dict) -> dict[str, Any]:
    """One record of any supported layout -> the fields of an EditRequest (ground_truth may be None)."""
    if "requested_rewrite" in record:  # CounterFact
        rewrite = record["requested_rewrite"]
        subject = rewrite["subject"]
        truth = _first_text(rewrite.get("target_true"))
        return {
            "prompt": rewrite["prompt"].replace("{}", subject),
            "subject": subject,
            "target_new": _first_text(rewrite.get("target_new")),
            "ground_truth": truth,
            "rephrase_prompts": _texts(record.get("paraphrase_prompts")),
            # CounterFact's neighbours share the true object of the edited fact
            "locality": [
                Probe(prompt=p, answer=truth, kind="neighborhood")
                for p in _texts(record.get("neighborhood_prompts"))
            ]
            if truth
            else [],
            "portability": _new_question_probe(record),
            "relation": rewrite.get("relation_id"),
            "case_id": record.get("case_id"),
        }
    if "src" in record and "answers" in record:  # ZsRE (MEND split)
        locality = []
        if _first_text(record.get("loc_ans")) and _texts(record.get("loc")):
            locality = [
                Probe(prompt=record["loc"], answer=_first_text(record["loc_ans"]), kind="nq")
            ]
        return {
            "prompt": record["src"],
            "subject": record["subject"],
            "target_new": _first_text(record.get("alt")),
            "ground_truth": _first_text(record.get("answers")),
            "rephrase_prompts": _texts(record.get("rephrase")),
            "locality": locality,
            "portability": _new_question_probe(record),
        }
    if "prompt" in record and "target_new" in record:  # KnowEdit
        rephrase = record.get(
            "rephrase_prompt", record.get("rephrase_prompts", record.get("rephrase"))
        )
        return {
            "prompt": record["prompt"],
            "subject": record.get("subject") or "",
            "target_new": _first_text(record.get("target_new")),
            "ground_truth": _first_text(record.get("ground_truth")),
            "rephrase_prompts": _texts(rephrase),
            "locality": _probes(record.get("locality")),
            "portability": _probes(record.get("portability")),
        }
    raise KeyError(f"unknown layout with keys {sorted(record)}")


def world_from_dataset(
    path: str | Path, *, skip_missing: bool = False, limit: int | None = None
) -> DatasetWorld:
    """Read an edit-dataset file into a :class:`DatasetWorld`.

    A record without a ground-truth answer raises :class:`WorldRecordError` naming its index, or
    is skipped (and counted in ``skipped``) when ``skip_missing`` is true. ``limit`` keeps the
    first ``limit`` usable records.
    """
    path = Path(path)
    if not path.is_file():
        raise WorldRecordError(f"dataset file {str(path)!r} does not exist")
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise WorldRecordError(f"dataset file {str(path)!r} is not JSON: {error}") from None
    if not isinstance(records, list):
        raise WorldRecordError(f"dataset file {str(path)!r}: expected a JSON list of records")

    statements: dict[
        str, Statement
    ] = {}  # prompt -> first statement; later contradictions are dropped
    requests: list[EditRequest] = []
    skipped: list[int] = []
    unchanged: list[int] = []
    for index, record in enumerate(records):
        if limit is not None and len(requests) >= limit:
            break
        try:
            fields = _parse_record(record) if isinstance(record, dict) else None
        except (KeyError, TypeError, AttributeError) as error:
            raise WorldRecordError(
                f"{path.name}: record {index}: cannot read it ({error})"
            ) from None
        if fields is None:
            raise WorldRecordError(f"{path.name}: record {index}: expected an object")
        if fields["ground_truth"] is None:
            if skip_missing:
                skipped.append(index)
                continue
            raise WorldRecordError(
                f"{path.name}: record {index} has no ground-truth answer, so the model cannot be "
                f"taught the old fact; pass skip_missing=True to skip such records"
            )
        truth = fields["ground_truth"]
        items = [(fields["prompt"], truth, "prompt")]
        items += [(p, truth, "rephrase") for p in fields["rephrase_prompts"]]
        items += [(p.prompt, p.answer, "locality") for p in fields["locality"]]
        if fields["target_new"] is not None and fields["target_new"].strip() == truth:
            unchanged.append(index)  # real datasets have a few; the fact is still worth teaching
        else:
            requests.append(_make_request(fields, path.name, index))
        for prompt, answer, role in items:
            if prompt.strip():
                statements.setdefault(
                    prompt, Statement(prompt=prompt, answer=answer, role=role, record=index)
                )
    if not requests:
        raise WorldRecordError(
            f"{path.name}: no usable records (skipped {len(skipped)} without ground truth)"
        )
    return DatasetWorld(
        source=path.name,
        statements=list(statements.values()),
        requests=requests,
        skipped=skipped,
        unchanged=unchanged,
    )


def _make_request(fields: dict[str, Any], source: str, index: int) -> EditRequest:
    case_id = fields.get("case_id")
    try:
        return EditRequest(
            **{k: v for k, v in fields.items() if v is not None and k != "case_id"},
            case_id=str(case_id if case_id is not None else index),
            metadata={"source": source, "record": index},
        )
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'record'}: {e['msg']}" for e in error.errors()
        )
        raise WorldRecordError(f"{source}: record {index}: {problems}") from None
