"""KnowEdit (Zhang et al., 2024): ZsRE, wiki_recent, wiki_counterfact, WikiBio and Sanitation.

ZsRE, wiki_recent and wiki_counterfact share one schema::

    {"subject", "prompt", "target_new", "ground_truth"?, "rephrase_prompt"?,
     "locality": {"Relation_Specificity": [{"prompt", "ground_truth"}], "Forgetfulness": [...]},
     "portability": {"Reasoning": [...], "Subject_Aliasing": [...], "Logical_Generalization": [...]}}

``ground_truth`` is a list for ZsRE, a string for wiki_counterfact and absent for wiki_recent
(new facts). Probe answers may be nested alias lists (``[["USSR", "Soviet Union"], ...]``); every
string counts as correct. Each probe keeps its group name as ``kind``.

WikiBio edits a biography's continuation: ``text`` (prompt), ``labels`` (new continuation),
``concept`` (subject). Sanitation (``trivia_qa_test.json``) is one object with ``success`` —
questions to answer ``"I don't know."`` — and ``locality`` questions, given to the success
requests round-robin as locality probes.
"""

from __future__ import annotations

from typing import Any

from easyetcon.requests import EditRequest
from easyetcon_data.common import (
    ProbeCounter,
    RecordProblem,
    flatten_answers,
    need,
    split_ground_truth,
    text,
)
from easyetcon.dataset_files import DatasetFormatError

KNOWEDIT_KEYS = frozenset(
    {"subject", "prompt", "target_new", "ground_truth", "rephrase_prompt", "rephrase", "cond", "locality", "portability", "case_id"}
)
WIKIBIO_KEYS = frozenset({"text", "labels", "concept", "locality"})


# ---- detection -------------------------------------------------------------------------------
def _knowedit_shape(record: dict[str, Any]) -> bool:
    return (
        isinstance(record, dict)
        and all(isinstance(record.get(k), str) for k in ("subject", "prompt", "target_new"))
        and set(record) <= KNOWEDIT_KEYS
        and isinstance(record.get("locality", {}), dict)
        and isinstance(record.get("portability", {}), dict)
        and ("locality" in record or "portability" in record or "rephrase_prompt" in record)
    )


def detect_zsre(records: list[dict[str, Any]]) -> bool:
    return all(_knowedit_shape(r) and isinstance(r.get("ground_truth"), list) for r in records)


def detect_counterfact(records: list[dict[str, Any]]) -> bool:
    return all(_knowedit_shape(r) and isinstance(r.get("ground_truth"), str) for r in records)


def detect_recent(records: list[dict[str, Any]]) -> bool:
    return all(_knowedit_shape(r) and "ground_truth" not in r for r in records)


def detect_any(records: list[dict[str, Any]]) -> bool:
    return all(_knowedit_shape(r) for r in records)


def detect_wikibio(records: list[dict[str, Any]]) -> bool:
    return all(isinstance(r, dict) and {"text", "labels", "concept"} <= set(r) <= WIKIBIO_KEYS for r in records)


def _sanitation_question(record: Any) -> bool:
    return isinstance(record, dict) and {"question", "ground_truth", "target_new"} <= set(record) <= {"question", "ground_truth", "target_new"}


def detect_sanitation(records: list[dict[str, Any]]) -> bool:
    if len(records) == 1 and set(records[0]) <= {"success", "locality"} and isinstance(records[0].get("success"), list):
        return True
    return all(_sanitation_question(r) for r in records)


# ---- conversion ------------------------------------------------------------------------------
def make_convert(format_name: str):
    def convert(record: dict[str, Any], index: int, probes: ProbeCounter) -> EditRequest:
        target_answers = flatten_answers(need(record, "target_new"))
        if not target_answers:
            raise RecordProblem("'target_new' is blank")
        target = target_answers[0]
        ground_truth, metadata = split_ground_truth(target, record.get("ground_truth"))
        rephrases = record.get("rephrase_prompt", record.get("rephrase"))
        rephrases = [rephrases] if isinstance(rephrases, str) else list(rephrases or [])
        if "cond" in record:
            metadata["cond"] = record["cond"]
        return EditRequest(
            prompt=text(record, "prompt"),
            subject=text(record, "subject"),
            target_new=target,
            target_aliases=tuple(target_answers[1:]),
            ground_truth=ground_truth,
            rephrase_prompts=[r for r in rephrases if isinstance(r, str) and r.strip()],
            locality=probes.grouped(record.get("locality"), "locality"),
            portability=probes.grouped(record.get("portability"), "portability"),
            case_id=str(record.get("case_id", f"{format_name}-{index}")),
            metadata={"source": format_name, **metadata},
        )

    return convert


def convert_wikibio(record: dict[str, Any], index: int, probes: ProbeCounter) -> EditRequest:
    return EditRequest(
        prompt=text(record, "text"),
        subject=text(record, "concept"),
        target_new=text(record, "labels"),
        locality=probes.grouped(record.get("locality"), "locality"),
        case_id=f"knowedit-wikibio-{index}",
        metadata={"source": "knowedit-wikibio"},
    )


def unwrap_sanitation(records: list[dict[str, Any]], path: str) -> list[dict[str, Any]]:
    """``[{"success": [...], "locality": [...]}]`` -> the success questions, each carrying its
    round-robin share of the locality questions under ``_locality``."""
    if not (len(records) == 1 and "success" in records[0]):
        return records
    success = records[0].get("success") or []
    locality = records[0].get("locality") or []
    if not success:
        raise DatasetFormatError(f"dataset file {path!r}: the 'success' list is empty")
    shares: list[list[dict[str, Any]]] = [[] for _ in success]
    for j, question in enumerate(locality):
        shares[j % len(success)].append(question)
    return [{**question, "_locality": share} for question, share in zip(success, shares)]


def convert_sanitation(record: dict[str, Any], index: int, probes: ProbeCounter) -> EditRequest:
    question = text(record, "question")
    target = text(record, "target_new")
    ground_truth, metadata = split_ground_truth(target, record.get("ground_truth"))
    return EditRequest(
        prompt=question,
        subject=question,  # the data names no subject; the whole question is what is edited
        target_new=target,
        ground_truth=ground_truth,
        locality=probes.probes(record.get("_locality"), "sanitation-locality", prompt_key="question"),
        case_id=f"knowedit-sanitation-{index}",
        metadata={"source": "knowedit-sanitation", **metadata},
    )
