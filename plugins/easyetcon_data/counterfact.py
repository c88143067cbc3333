"""CounterFact (Meng et al., 2022) in the original ROME schema and EasyEdit's flattened form.

ROME schema::

    {"case_id", "requested_rewrite": {"prompt": "{} originates from", "subject", "relation_id",
     "target_new": {"str"}, "target_true": {"str"}}, "paraphrase_prompts", "neighborhood_prompts",
     "attribute_prompts", "generation_prompts", "portability"?: {"New Question", "New Answer"}}

Paraphrases become rephrase prompts; neighbourhood prompts become locality probes answered by
the *true* object (they must not change); generation prompts are kept in metadata (fluency uses
them); attribute prompts are kept in metadata.

EasyEdit's flattened form: ``{"case_id", "prompt", "subject", "target_new", "ground_truth",
"rephrase_prompt", "locality_prompt", "locality_ground_truth"}`` (optionally
``portability_prompt`` / ``portability_ground_truth``).
"""

from __future__ import annotations

from typing import Any

from easyetcon.requests import EditRequest
from easyetcon_data.common import ProbeCounter, RecordProblem, need, split_ground_truth, text

FLAT_KEYS = frozenset(
    {"case_id", "prompt", "subject", "target_new", "ground_truth", "rephrase_prompt", "locality_prompt",
     "locality_ground_truth", "portability_prompt", "portability_ground_truth", "cond"}
)


def detect_rome(records: list[dict[str, Any]]) -> bool:
    return all(isinstance(r, dict) and isinstance(r.get("requested_rewrite"), dict) for r in records)


def detect_flat(records: list[dict[str, Any]]) -> bool:
    return all(
        isinstance(r, dict) and "locality_prompt" in r and {"prompt", "subject", "target_new"} <= set(r) <= FLAT_KEYS
        for r in records
    )


def _object(rewrite: dict[str, Any], key: str) -> str:
    value = need(rewrite, key)
    if isinstance(value, dict):
        value = value.get("str")
    if not isinstance(value, str) or not value.strip():
        raise RecordProblem(f"requested_rewrite.{key} must be a string or {{'str': ...}}, got {value!r}")
    return value


def _string_list(record: dict[str, Any], key: str) -> list[str]:
    value = record.get(key) or []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise RecordProblem(f"{key!r} must be a list of strings, got {type(value).__name__}")
    return [v for v in value if isinstance(v, str) and v.strip()]


def _portability(record: dict[str, Any], probes: ProbeCounter) -> list:
    value = record.get("portability")
    if value is None:
        return []
    entries = value if isinstance(value, list) else [value]
    return probes.probes(entries, "portability", prompt_key="New Question", answer_key="New Answer")


def convert_rome(record: dict[str, Any], index: int, probes: ProbeCounter) -> EditRequest:
    rewrite = need(record, "requested_rewrite")
    if not isinstance(rewrite, dict):
        raise RecordProblem("'requested_rewrite' must be an object")
    subject = text(rewrite, "subject")
    template = text(rewrite, "prompt")
    if "{}" not in template:
        raise RecordProblem(f"requested_rewrite.prompt {template!r} has no '{{}}' for the subject")
    target = _object(rewrite, "target_new")
    true = _object(rewrite, "target_true")
    ground_truth, metadata = split_ground_truth(target, true)
    neighbours = [probes.probe(p, true, "neighborhood") for p in _string_list(record, "neighborhood_prompts")]
    recalled = record.get("portability", {}).get("Recalled Relation") if isinstance(record.get("portability"), dict) else None
    extra = {
        "generation_prompts": _string_list(record, "generation_prompts"),
        "attribute_prompts": _string_list(record, "attribute_prompts"),
    }
    if recalled:
        extra["recalled_relation"] = recalled
    if "pararel_idx" in record:
        extra["pararel_idx"] = record["pararel_idx"]
    return EditRequest(
        prompt=template.replace("{}", subject),
        subject=subject,
        target_new=target,
        ground_truth=ground_truth,
        rephrase_prompts=_string_list(record, "paraphrase_prompts"),
        locality=[p for p in neighbours if p is not None],
        portability=_portability(record, probes),
        relation=rewrite.get("relation_id"),
        case_id=str(record.get("case_id", f"counterfact-{index}")),
        metadata={"source": "counterfact", **metadata, **extra},
    )


def convert_flat(record: dict[str, Any], index: int, probes: ProbeCounter) -> EditRequest:
    target = text(record, "target_new")
    ground_truth, metadata = split_ground_truth(target, record.get("ground_truth"))
    locality = probes.probe(record.get("locality_prompt"), record.get("locality_ground_truth"), "neighborhood")
    portability = None
    if "portability_prompt" in record:
        portability = probes.probe(record.get("portability_prompt"), record.get("portability_ground_truth"), "portability")
    return EditRequest(
        prompt=text(record, "prompt"),
        subject=text(record, "subject"),
        target_new=target,
        ground_truth=ground_truth,
        rephrase_prompts=_string_list(record, "rephrase_prompt"),
        locality=[locality] if locality else [],
        portability=[portability] if portability else [],
        case_id=str(record.get("case_id", f"counterfact-easyedit-{index}")),
        metadata={"source": "counterfact-easyedit", **metadata},
    )
