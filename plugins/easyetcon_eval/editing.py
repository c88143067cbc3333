"""One call that edits and measures, as EasyEdit's ``BaseEditor.edit`` does: the unedited
model's scores, the edit, the edited model's scores, per request and in summary.

``mode="single"`` is EasyEdit's default (``sequential_edit=False``): each request is edited
alone by a fresh chain, scored, and undone, so the model is unchanged afterwards.
``mode="sequential"`` (EasyEdit's ``sequential_edit=True``) applies the chain to ``batch_size``
requests at a time, one application after another, and scores every request once all are
edited; ``mode="batch"`` applies it once to all requests (``batch_edit``). In both the model
stays edited, and ``report.result.undo(model)`` restores it bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from easyetcon.errors import ConfigError
from easyetcon.requests import EditRequest, parse_requests, require_unique_ids
from easyetcon_eval.evaluate import compute_baseline, evaluate_edits
from easyetcon_eval.lifelong import _as_chain, describe_chain
from easyetcon_eval.names import DEFAULT_JUDGE

EditMode = Literal["single", "sequential", "batch"]


@dataclass
class EditReport:
    """What :func:`edit_and_evaluate` measured.

    ``pre`` and ``post`` are summaries (``{"<protocol>@<v>": {metric: mean, ...}}``) of the
    unedited and the edited model; ``per_request[i]`` is ``{"request_id", "pre", "post"}`` with
    each request's scores per protocol, as EasyEdit's ``metrics`` list holds them. ``result``
    undoes the edits (``None`` in ``single`` mode, where each edit was undone already).
    """

    mode: str
    pre: dict[str, dict[str, Any]]
    post: dict[str, dict[str, Any]]
    per_request: list[dict[str, Any]]
    settings: dict[str, Any]
    result: Any = None


def edit_and_evaluate(
    model: Any,
    chain: Any,
    requests: Sequence[EditRequest] | Sequence[dict],
    *,
    mode: EditMode = "single",
    batch_size: int = 1,
    protocols: Iterable[str] | str = ("teacher-forced", "generation"),
    max_new_tokens: int = 48,
    judge: str = DEFAULT_JUDGE,
    journal: str | Path | None = None,
    progress: bool = False,
) -> EditReport:
    """Score the unedited ``model`` on ``requests``, edit it with ``chain`` (an
    :class:`~easyetcon.EditChain`, a list of steps or a chain spec file) in ``mode``, and score
    it again; locality is agreement with the unedited model's outputs. See the module docstring
    for the modes; ``journal`` (sequential and batch) records the edits on disk."""
    if mode not in ("single", "sequential", "batch"):
        raise ConfigError(f"mode {mode!r}: choose single, sequential or batch")
    if mode == "single" and journal is not None:
        raise ConfigError("mode 'single' undoes every edit, so there is nothing to journal; use sequential or batch")
    requests = parse_requests(requests, source="edit_and_evaluate requests")
    require_unique_ids(requests, source="edit_and_evaluate")
    chain = _as_chain(chain)
    scoring = dict(protocols=protocols, max_new_tokens=max_new_tokens, judge=judge)
    baseline = compute_baseline(model, requests, progress=progress, **scoring)
    pre = evaluate_edits(model, requests, baseline=baseline, **scoring)
    result = None
    if mode == "single":
        steps = [{"editor": s["editor"], "label": s["step"], **s["config"]} for s in describe_chain(chain)]
        scores = []
        for request in requests:
            edit = type(chain)(steps, host=chain.host).apply(model, [request])  # a fresh editor state per edit
            try:
                scores.append(evaluate_edits(model, [request], baseline=baseline, **scoring))
            finally:
                edit.undo(model)
        post_rows = [row for scored in scores for row in scored.per_request]
        post = _summary_of(scores, post_rows) if scores else {}
    else:
        result = chain.apply(model, requests, mode=mode, batch_size=batch_size, journal=journal, progress=progress)
        scored = evaluate_edits(model, requests, baseline=baseline, **scoring)
        post_rows, post = scored.per_request, scored.summary()
    per_request = [
        {"request_id": request.request_id, "pre": before, "post": after}
        for request, before, after in zip(requests, pre.per_request, post_rows)
    ]
    settings = {**pre.settings, "mode": mode, "batch_size": batch_size}
    return EditReport(mode=mode, pre=pre.summary(), post=post, per_request=per_request, settings=settings, result=result)


def _summary_of(parts: Sequence[Any], rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The summary of single-request evaluations, as if they were one: per protocol, the mean of
    each metric over the requests that have it."""
    from easyetcon_eval.evaluate import EvaluationResult

    first = parts[0]
    joined = EvaluationResult(
        protocols=first.protocols, request_ids=[rid for p in parts for rid in p.request_ids],
        per_request=rows, settings=first.settings,
    )
    return joined.summary()
