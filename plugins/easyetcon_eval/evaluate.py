"""Scoring edited models: reliability, generalization, locality, portability under named protocols.

For every request the evaluation gathers *items* — a prompt and its acceptable answers — per
metric:

* ``reliability``: the edit prompt, answered by ``target_new`` (or one of ``target_aliases``);
* ``generalization``: each of ``rephrase_prompts``, same answers;
* ``portability``: each portability probe, answered by its answer or aliases;
* ``locality_vs_truth``: each locality probe, answered by its (true) answer or aliases;
* ``locality``: each locality probe, scored by whether the edited model's output *agrees with the
  unedited model's* (needs a :class:`Baseline`).

A request's metric is the mean over its items; a summary is the mean over requests. A request
without the field a metric needs (no rephrases, no probes, no baseline) is *skipped* for that
metric and counted in ``skipped`` — never scored as zero.

Every prompt is asked in the model's prompt format (``model.prompt_format``, see
:mod:`easyetcon.prompting`): the settings of every result record it, and a format other than
``question`` is part of each protocol key (``"generation@1[chat]"``), so numbers asked in
different contexts are never mixed.

Protocols (every number is stored under ``"<protocol>@<version>"``):

* ``teacher-forced``: token accuracy of the canonical answer under teacher forcing (EasyEdit);
  locality = share of answer positions whose argmax is unchanged.
* ``teacher-forced-em``: the same forward passes, 1 only when every token matches.
* ``generation``: greedy decoding from the prompt alone until the answer ends naturally
  (``</answer>``, newline, end of sentence for cloze prompts, end of sequence, or
  ``max_new_tokens``); the answer (inside ``<answer>`` tags for question-answer prompts) is
  judged by the registered judge (default ``exact-match``: SQuAD-normalised exact match against
  every alias); locality = the normalised answer is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from easyetcon.errors import ConfigError, EasyEtconError
from easyetcon.requests import EditRequest, parse_requests
from easyetcon_eval.answers import extract_answer, normalize_answer
from easyetcon_eval.names import DEFAULT_JUDGE, METRIC_NAMES, PROTOCOLS
from easyetcon_eval.generation import greedy_continuations
from easyetcon_eval.scoring import (
    FLUENCY_TOKENS,
    all_tokens_match,
    ngram_entropy,
    teacher_forced_predictions,
    text_perplexity,
    token_accuracy,
)

#: protocol name -> version. A version changes whenever the meaning of its numbers changes.
BASELINE_VERSION = 1


class EvaluationError(EasyEtconError):
    """Evaluation was asked for something it cannot do (unknown protocol, mismatched baseline)."""


# ---------------------------------------------------------------------------------------------
# Settings and protocol keys
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalSettings:
    """Knobs that change numbers; they are stored with every result."""

    max_new_tokens: int = 48
    batch_size: int = 32
    judge: str = DEFAULT_JUDGE
    prompt_format: dict[str, Any] = field(default_factory=lambda: {"context": "question"})

    @classmethod
    def of(cls, model: Any, max_new_tokens: int, batch_size: int, judge: str) -> EvalSettings:
        """The settings of an evaluation of ``model``: these knobs and how the model is asked."""
        return cls(max_new_tokens, batch_size, judge, model.prompt_format.describe())

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_new_tokens": self.max_new_tokens, "batch_size": self.batch_size, "judge": self.judge,
            "prompt_format": dict(self.prompt_format),
        }


def check_protocols(protocols: Iterable[str] | str) -> tuple[str, ...]:
    names = (protocols,) if isinstance(protocols, str) else tuple(protocols)
    unknown = [p for p in names if p not in PROTOCOLS]
    if unknown or not names:
        raise ConfigError(
            f"unknown protocol(s) {unknown or '(none given)'}; choose from: {', '.join(PROTOCOLS)}"
        )
    return tuple(dict.fromkeys(names))


def protocol_key(protocol: str, judge: str = DEFAULT_JUDGE, judge_version: str = "1", context: str = "question") -> str:
    """``"generation@1"``; a non-default judge (``"generation@1[llm@2]"``) and a prompt context
    other than ``question`` (``"generation@1[chat]"``) are part of the key, so numbers judged or
    asked differently are never mixed."""
    key = f"{protocol}@{PROTOCOLS[protocol]}"
    if protocol == "generation" and judge != DEFAULT_JUDGE:
        key += f"[{judge}@{judge_version}]"
    if context != "question":
        key += f"[{context}]"
    return key


def _resolve_judge(name: str) -> Any:
    from easyetcon.plugins import get_host

    metric = get_host().registry.metric(name)
    if getattr(metric, "protocol", None) != "generation":
        raise ConfigError(
            f"metric {name!r} belongs to protocol {getattr(metric, 'protocol', None)!r}; the "
            f"generation protocol's judge must be a metric with protocol 'generation'"
        )
    return metric


# ---------------------------------------------------------------------------------------------
# Items
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    request: int
    metric: str  # reliability | generalization | portability | locality_vs_truth
    prompt: str
    answers: tuple[str, ...]


def build_items(requests: Sequence[EditRequest]) -> tuple[list[Item], dict[str, list[int]]]:
    """Items of every request, and per metric the requests that lack what it needs."""
    items: list[Item] = []
    missing: dict[str, list[int]] = {m: [] for m in METRIC_NAMES}
    for index, request in enumerate(requests):
        targets = (request.target_new, *request.target_aliases)
        items.append(Item(index, "reliability", request.prompt, targets))
        if not request.rephrase_prompts:
            missing["generalization"].append(index)
        items.extend(Item(index, "generalization", p, targets) for p in request.rephrase_prompts)
        if not request.portability:
            missing["portability"].append(index)
        items.extend(Item(index, "portability", p.prompt, p.answers) for p in request.portability)
        if not request.locality:
            missing["locality_vs_truth"].append(index)
            missing["locality"].append(index)
        items.extend(Item(index, "locality_vs_truth", p.prompt, p.answers) for p in request.locality)
    return items, missing


def _tf_key(prompt: str, answer: str) -> str:
    return json.dumps([prompt, answer], ensure_ascii=False)


# ---------------------------------------------------------------------------------------------
# Raw outputs of a model on items (shared by the evaluation and the baseline)
# ---------------------------------------------------------------------------------------------


@dataclass
class _Outputs:
    """What the model produced: teacher-forced ``(expected, predicted)`` ids per (prompt, answer),
    and generated text per prompt."""

    forced: dict[str, tuple[list[int], list[int]]] = field(default_factory=dict)
    generated: dict[str, str] = field(default_factory=dict)


def _collect_outputs(model: Any, items: Sequence[Item], protocols: Sequence[str], settings: EvalSettings, progress: Any) -> _Outputs:
    outputs = _Outputs()
    if any(p.startswith("teacher-forced") for p in protocols):
        pairs = list(dict.fromkeys((i.prompt, i.answers[0]) for i in items))
        progress.set_description("teacher-forced")
        predictions = teacher_forced_predictions(
            model, [p for p, _ in pairs], [a for _, a in pairs], batch_size=max(1, settings.batch_size // 2)
        )
        outputs.forced = {_tf_key(p, a): r for (p, a), r in zip(pairs, predictions)}
        progress.update(1)
    if "generation" in protocols:
        prompts = list(dict.fromkeys(i.prompt for i in items))
        progress.set_description("generation")
        texts = greedy_continuations(
            model, prompts, max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size
        )
        outputs.generated = dict(zip(prompts, texts))
        progress.update(1)
    return outputs


# ---------------------------------------------------------------------------------------------
# Baseline
# ---------------------------------------------------------------------------------------------


@dataclass
class Baseline:
    """The unedited model's outputs on every locality and portability probe (and its pre-edit
    summary), so locality can be scored as agreement of pre- and post-edit outputs.

    ``forced`` maps a (prompt, answer) pair to the argmax token ids; ``answers`` maps a prompt to
    the normalised generated answer. ``key`` identifies model, probes and settings.
    """

    key: str
    settings: dict[str, Any]
    forced: dict[str, list[int]]
    answers: dict[str, str]
    summary: dict[str, dict[str, Any]]
    protocols: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": BASELINE_VERSION, "key": self.key, "settings": self.settings,
            "protocols": list(self.protocols), "summary": self.summary,
            "forced": self.forced, "answers": self.answers,
        }

    def save(self, path: str | Path) -> None:
        from easyetcon.journal import write_json_atomic

        write_json_atomic(Path(path), self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Baseline:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            if data.get("version") != BASELINE_VERSION:
                raise EvaluationError(f"baseline {str(path)!r} has version {data.get('version')!r}; expected {BASELINE_VERSION}")
            return cls(
                data["key"], data["settings"], {k: list(v) for k, v in data["forced"].items()},
                dict(data["answers"]), data["summary"], tuple(data["protocols"]),
            )
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
            raise EvaluationError(f"baseline file {str(path)!r} is unreadable: {error}; delete it to recompute") from error

    def covers(self, protocol: str) -> bool:
        """Whether this baseline holds the outputs ``protocol`` compares against (both
        teacher-forced protocols share the same forward passes)."""
        if protocol.startswith("teacher-forced"):
            return any(p.startswith("teacher-forced") for p in self.protocols)
        return protocol in self.protocols


def _baseline_key(model: Any, requests: Sequence[EditRequest], protocols: Sequence[str], settings: EvalSettings) -> str:
    digest = hashlib.sha256()
    digest.update(model.state_hash().encode())
    digest.update(json.dumps(sorted(model.memories)).encode())
    for request in requests:
        probes = [(p.prompt, p.answer) for p in (*request.locality, *request.portability)]
        digest.update(json.dumps([request.request_id, request.prompt, probes], ensure_ascii=False).encode())
    settings_for_key = {"max_new_tokens": settings.max_new_tokens, "judge": settings.judge, "prompt_format": settings.prompt_format}
    digest.update(json.dumps([sorted(protocols), settings_for_key, PROTOCOLS]).encode())
    return digest.hexdigest()


def compute_baseline(
    model: Any,
    requests: Sequence[EditRequest] | Sequence[dict],
    *,
    protocols: Iterable[str] = ("teacher-forced", "generation"),
    cache_dir: str | Path | None = None,
    max_new_tokens: int = 48,
    batch_size: int = 32,
    judge: str = DEFAULT_JUDGE,
    progress: bool = False,
) -> Baseline:
    """Outputs of the *unedited* ``model`` on the requests' locality and portability probes, plus
    its pre-edit summary. With ``cache_dir`` the baseline is stored there under a key of the
    model's weights, the probes and the settings, and read back instead of recomputed."""
    requests = parse_requests(requests, source="baseline requests")
    protocols = check_protocols(protocols)
    settings = EvalSettings.of(model, max_new_tokens, batch_size, judge)
    key = _baseline_key(model, requests, protocols, settings)
    cache_path = Path(cache_dir) / f"baseline-{key[:16]}.json" if cache_dir is not None else None
    if cache_path is not None and cache_path.is_file():
        cached = Baseline.load(cache_path)
        if cached.key == key:
            return cached
    result, outputs = _evaluate(model, requests, protocols, None, settings, progress=progress)
    probes = [p for r in requests for p in (*r.locality, *r.portability)]
    forced_keys = {_tf_key(p.prompt, p.answer) for p in probes}
    probe_prompts = {p.prompt for p in probes}
    baseline = Baseline(
        key=key,
        settings=settings.as_dict(),
        forced={k: predicted for k, (_, predicted) in outputs.forced.items() if k in forced_keys},
        answers={
            p: normalize_answer(extract_answer(t)) for p, t in outputs.generated.items() if p in probe_prompts
        },
        summary=result.summary(),
        protocols=protocols,
    )
    if cache_path is not None:
        baseline.save(cache_path)
    return baseline


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


def _mean(values: Iterable[float]) -> float | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(values) / len(values) if values else None


@dataclass
class EvaluationResult:
    """Scores per request and protocol. ``per_request[i][key][metric]`` is a float, or ``None``
    where the metric was skipped for that request."""

    protocols: list[str]
    request_ids: list[str]
    per_request: list[dict[str, dict[str, float | None]]]
    settings: dict[str, Any]
    extras: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def skipped(self, key: str) -> dict[str, int]:
        """How many requests each metric was skipped for under protocol ``key``."""
        return {m: sum(1 for r in self.per_request if r[key].get(m) is None) for m in METRIC_NAMES}

    def summary(self) -> dict[str, dict[str, Any]]:
        """``{"<protocol>@<v>": {metric: mean over requests, ..., "n": requests, "skipped": {...}}}``;
        a metric skipped for every request is ``None``."""
        out: dict[str, dict[str, Any]] = {}
        for key in self.protocols:
            row: dict[str, Any] = {m: _mean(r[key].get(m) for r in self.per_request) for m in METRIC_NAMES}
            row["n"] = len(self.per_request)
            row["skipped"] = self.skipped(key)
            out[key] = row
        for key, row in self.extras.items():
            out[key] = dict(row)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "settings": self.settings,
            "notes": self.notes,
            "per_request": [
                {"request_id": rid, **scores} for rid, scores in zip(self.request_ids, self.per_request)
            ],
        }


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_description(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(total: int, enabled: bool, description: str) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="pass", leave=False)


def _evaluate(
    model: Any,
    requests: Sequence[EditRequest],
    protocols: Sequence[str],
    baseline: Baseline | None,
    settings: EvalSettings,
    *,
    progress: bool = False,
) -> tuple[EvaluationResult, _Outputs]:
    items, missing = build_items(requests)
    judge = _resolve_judge(settings.judge) if "generation" in protocols else None
    version, context = str(getattr(judge, "version", "1")), settings.prompt_format["context"]
    keys = {p: protocol_key(p, settings.judge, version, context) for p in protocols}
    notes: list[str] = []
    bar = _bar(2, progress, "evaluating")
    try:
        outputs = _collect_outputs(model, items, protocols, settings, bar)
    finally:
        bar.close()

    # item scores per protocol: {protocol: [score per item]}
    item_scores: dict[str, list[float]] = {}
    for protocol in protocols:
        if protocol.startswith("teacher-forced"):
            measure = token_accuracy if protocol == "teacher-forced" else all_tokens_match
            item_scores[protocol] = [measure(*outputs.forced[_tf_key(i.prompt, i.answers[0])]) for i in items]
        else:
            generations = [outputs.generated[i.prompt] for i in items]
            if hasattr(judge, "judge"):
                scores = judge.judge([i.prompt for i in items], generations, [i.answers for i in items])
            else:  # a metric without judge(): it generates by itself
                scores = judge.score(model, [i.prompt for i in items], [i.answers for i in items])
            item_scores[protocol] = [float(s) for s in scores]

    # locality as agreement with the unedited model
    agreement: dict[str, list[float | None]] = {}
    locality_items = [i for i in items if i.metric == "locality_vs_truth"]
    for protocol in protocols:
        if baseline is None or not baseline.covers(protocol):
            if locality_items:
                notes.append(f"{keys[protocol]}: no baseline, so 'locality' (agreement with the unedited model) is skipped")
            agreement[protocol] = [None] * len(locality_items)
            continue
        values: list[float | None] = []
        for item in locality_items:
            if protocol.startswith("teacher-forced"):
                before = baseline.forced.get(_tf_key(item.prompt, item.answers[0]))
                _, after = outputs.forced[_tf_key(item.prompt, item.answers[0])]
                if before is None:
                    values.append(None)
                elif protocol == "teacher-forced":
                    values.append(token_accuracy(before, after))
                else:
                    values.append(all_tokens_match(before, after))
            else:
                before = baseline.answers.get(item.prompt)
                after = normalize_answer(extract_answer(outputs.generated[item.prompt]))
                values.append(None if before is None else float(before == after))
        agreement[protocol] = values

    per_request: list[dict[str, dict[str, float | None]]] = []
    for index in range(len(requests)):
        per_request.append({keys[p]: {m: None for m in METRIC_NAMES} for p in protocols})
    for protocol in protocols:
        sums: dict[tuple[int, str], list[float]] = {}
        for item, score in zip(items, item_scores[protocol]):
            sums.setdefault((item.request, item.metric), []).append(score)
        for item, value in zip(locality_items, agreement[protocol]):
            if value is not None:
                sums.setdefault((item.request, "locality"), []).append(value)
        for (request_index, metric), values in sums.items():
            per_request[request_index][keys[protocol]][metric] = sum(values) / len(values)

    result = EvaluationResult(
        protocols=[keys[p] for p in protocols],
        request_ids=[r.request_id for r in requests],
        per_request=per_request,
        settings=settings.as_dict(),
        notes=notes,
    )
    return result, outputs


def evaluate_edits(
    model: Any,
    requests: Sequence[EditRequest] | Sequence[dict],
    *,
    protocols: Iterable[str] | str = ("teacher-forced", "generation"),
    baseline: Baseline | None = None,
    max_new_tokens: int = 48,
    batch_size: int = 32,
    judge: str = DEFAULT_JUDGE,
    fluency: bool = False,
    heldout_texts: Sequence[str] | None = None,
    progress: bool = False,
) -> EvaluationResult:
    """Score ``model`` (already edited) on ``requests`` under each protocol.

    ``baseline`` (from :func:`compute_baseline` on the unedited model) enables ``locality`` as
    agreement of pre- and post-edit outputs; without it that metric is skipped and said so.
    ``judge`` names the registered metric that judges generations (default ``exact-match``).
    ``fluency=True`` adds ``"free-generation@1": {"fluency": ...}`` (n-gram entropy of free
    generation from each edit prompt, or its ``metadata["generation_prompts"]`` when present);
    ``heldout_texts`` adds ``"perplexity@1": {"perplexity": ...}`` (general ability).
    """
    requests = parse_requests(requests, source="evaluation requests")
    protocols = check_protocols(protocols)
    settings = EvalSettings.of(model, max_new_tokens, batch_size, judge)
    if baseline is not None and baseline.settings.get("max_new_tokens") != max_new_tokens and "generation" in protocols:
        raise EvaluationError(
            f"the baseline was generated with max_new_tokens={baseline.settings.get('max_new_tokens')} "
            f"but this evaluation uses {max_new_tokens}; recompute the baseline with the same settings"
        )
    asked_before = baseline.settings.get("prompt_format", {"context": "question"}) if baseline is not None else None
    if asked_before is not None and asked_before != settings.prompt_format:
        raise EvaluationError(
            f"the baseline was asked with prompt format {asked_before} but this model is asked with "
            f"{settings.prompt_format}; recompute the baseline with the model's prompt_format"
        )
    result, _ = _evaluate(model, requests, protocols, baseline, settings, progress=progress)
    if fluency:
        prompts = [_fluency_prompt(r) for r in requests]
        texts = greedy_continuations(model, prompts, max_new_tokens=FLUENCY_TOKENS, batch_size=batch_size, free=True)
        result.extras["free-generation@1"] = {
            "fluency": _mean(ngram_entropy(p + t) for p, t in zip(prompts, texts)), "n": len(prompts),
        }
    if heldout_texts:
        result.extras["perplexity@1"] = {
            "perplexity": _mean(text_perplexity(model, list(heldout_texts))), "n": len(heldout_texts),
        }
    return result


def _fluency_prompt(request: EditRequest) -> str:
    generation_prompts = request.metadata.get("generation_prompts")
    if isinstance(generation_prompts, list) and generation_prompts and isinstance(generation_prompts[0], str):
        return generation_prompts[0]
    return request.prompt
