"""A plain question-answer edit format, for writing edits by hand::

    {"question": "Who is the CEO of Acme?", "new_answer": "Ada" | ["Ada", "Ada Smith"],
     "old_answer": "Bob"?, "subject": "Acme"?, "paraphrases": ["..."]?,
     "unrelated": [{"question": "...", "answer": "..." | [...]}]?,
     "portability": [{"question": "...", "answer": "..."}]?, "id": "..."?}

Every field but ``question`` and ``new_answer`` is optional; a list of answers gives aliases;
``subject`` defaults to the whole question.
"""

from __future__ import annotations

from typing import Any

from easyetcon.requests import EditRequest
from easyetcon_data.common import ProbeCounter, RecordProblem, flatten_answers, need, split_ground_truth, text

QA_KEYS = frozenset({"question", "new_answer", "old_answer", "subject", "paraphrases", "unrelated", "portability", "id"})


def detect_qa(records: list[dict[str, Any]]) -> bool:
    return all(isinstance(r, dict) and {"question", "new_answer"} <= set(r) <= QA_KEYS for r in records)


def convert_qa(record: dict[str, Any], index: int, probes: ProbeCounter) -> EditRequest:
    question = text(record, "question")
    answers = flatten_answers(need(record, "new_answer"))
    if not answers:
        raise RecordProblem("'new_answer' is blank")
    ground_truth, metadata = split_ground_truth(answers[0], record.get("old_answer"))
    paraphrases = record.get("paraphrases") or []
    if not isinstance(paraphrases, list):
        raise RecordProblem(f"'paraphrases' must be a list of strings, got {type(paraphrases).__name__}")
    return EditRequest(
        prompt=question,
        subject=record.get("subject") or question,
        target_new=answers[0],
        target_aliases=tuple(answers[1:]),
        ground_truth=ground_truth,
        rephrase_prompts=[p for p in paraphrases if isinstance(p, str) and p.strip()],
        locality=probes.probes(record.get("unrelated"), "unrelated", prompt_key="question", answer_key="answer"),
        portability=probes.probes(record.get("portability"), "portability", prompt_key="question", answer_key="answer"),
        case_id=str(record.get("id", f"qa-{index}")),
        metadata={"source": "qa", **metadata},
    )
