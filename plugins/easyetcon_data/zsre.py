"""ZsRE in the MEND schema (used by MEND, ROME and EasyEdit)::

    {"subject", "src": question, "alt": new answer, "answers": [old answers], "rephrase",
     "loc": "nq question: ...", "loc_ans", "pred"?, "cond"?,
     "portability"?: {"New Question", "New Answer", "Recalled Relation"}}
"""

from __future__ import annotations

from typing import Any

from easyetcon.requests import EditRequest
from easyetcon_data.common import ProbeCounter, RecordProblem, flatten_answers, need, split_ground_truth, text

MEND_KEYS = frozenset({"subject", "src", "alt", "answers", "rephrase", "loc", "loc_ans", "pred", "cond", "portability", "case_id"})


def detect_mend(records: list[dict[str, Any]]) -> bool:
    return all(isinstance(r, dict) and {"src", "alt"} <= set(r) <= MEND_KEYS for r in records)


def convert_mend(record: dict[str, Any], index: int, probes: ProbeCounter) -> EditRequest:
    targets = flatten_answers(need(record, "alt"))
    if not targets:
        raise RecordProblem("'alt' is blank")
    ground_truth, metadata = split_ground_truth(targets[0], record.get("answers"))
    rephrase = record.get("rephrase")
    rephrases = [rephrase] if isinstance(rephrase, str) else list(rephrase or [])
    locality = probes.probe(record.get("loc"), record.get("loc_ans"), "nq") if "loc" in record else None
    portability = []
    if isinstance(record.get("portability"), dict):
        portability = probes.probes(record["portability"], "portability", prompt_key="New Question", answer_key="New Answer")
        if record["portability"].get("Recalled Relation"):
            metadata["recalled_relation"] = record["portability"]["Recalled Relation"]
    for key in ("pred", "cond"):
        if key in record:
            metadata[key] = record[key]
    return EditRequest(
        prompt=text(record, "src"),
        subject=text(record, "subject"),
        target_new=targets[0],
        target_aliases=tuple(targets[1:]),
        ground_truth=ground_truth,
        rephrase_prompts=[r for r in rephrases if isinstance(r, str) and r.strip()],
        locality=[locality] if locality else [],
        portability=portability,
        case_id=str(record.get("case_id", f"zsre-mend-{index}")),
        metadata={"source": "zsre-mend", **metadata},
    )
