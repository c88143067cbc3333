"""Choosing a scope cut-off from examples that should hit and examples that should miss.

Both memories decide scope by comparing one number with a cut-off: the retrieval memory's
similarity with its ``threshold`` (hit when ``similarity >= threshold``), GRACE's distance with
its radius (hit when ``distance <= radius``, i.e. ``-distance >= -radius``). :func:`sweep_cutoff`
takes scores where *higher is a hit* and returns the cut-off with the best trade-off.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from easyetcon.errors import ConfigError


@dataclass(kw_only=True)
class ScopeQuality:
    """How a scope decision does at a chosen cut-off.

    ``precision``: of the queries put in scope, the share that are positives matched to their
    own edit. ``recall``: of the positives, the share matched to their own edit.
    ``specificity``: of the negatives, the share left out of scope. ``curve``: the same at
    every candidate cut-off.
    """

    precision: float
    recall: float
    specificity: float
    positives: int
    negatives: int
    objective: str
    curve: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("curve")
        return data


@dataclass(kw_only=True)
class CutoffChoice(ScopeQuality):
    """The cut-off :func:`sweep_cutoff` chose (a query hits when its score ``>= cutoff``)."""

    cutoff: float

    def quality_as(self, name: str, convert: Any = float) -> dict[str, Any]:
        """Fields for a memory's own calibration record: the cut-off (and each curve point's)
        renamed to ``name`` and passed through ``convert`` (e.g. negated for a radius)."""
        fields = {key: getattr(self, key) for key in ("precision", "recall", "specificity", "positives", "negatives", "objective")}
        curve = [{name: convert(r["cutoff"]), **{k: r[k] for k in ("precision", "recall", "specificity")}} for r in self.curve]
        return {name: convert(self.cutoff), **fields, "curve": curve}


def sweep_cutoff(
    positive_scores: torch.Tensor,
    positive_correct: torch.Tensor,
    negative_scores: torch.Tensor,
    *,
    lower: float,
    upper: float,
    objective: str = "balanced",
    min_precision: float | None = None,
    min_specificity: float | None = None,
) -> CutoffChoice:
    """The cut-off ``t`` in ``[lower, upper]`` (a query hits when its score ``>= t``) that scores
    best by ``objective`` ("balanced": mean of recall and specificity; "f1"), or, with
    ``min_precision`` and/or ``min_specificity``, the one with the highest recall that reaches
    them.

    A positive counts as found only when ``positive_correct`` (it matched its own edit); a
    positive matched to another edit is a false hit. Scores of ``-inf`` never hit. Cut-offs in
    ``(u[i-1], u[i]]`` (``u``: the distinct scores) decide the same, so one representative per
    interval is scored and the middle of the best run of intervals is returned, for margin.
    """
    if objective not in ("balanced", "f1"):
        raise ConfigError(f"unknown objective {objective!r}; choose 'balanced' or 'f1'")
    for name, value in (("min_precision", min_precision), ("min_specificity", min_specificity)):
        if value is not None and not 0.0 <= value <= 1.0:
            raise ConfigError(f"{name} must be in [0, 1], got {value}")
    positives, negatives = len(positive_scores), len(negative_scores)
    if not positives or not negatives:
        raise ConfigError(f"calibration needs examples that should hit and that should miss; got {positives} and {negatives}")

    def metrics(t: float) -> dict[str, float]:
        hit = positive_scores >= t
        found = int((hit & positive_correct).sum())
        false_hits = int((negative_scores >= t).sum())
        wrong = int((hit & ~positive_correct).sum()) + false_hits
        precision = found / (found + wrong) if found + wrong else 1.0
        recall = found / positives
        specificity = 1.0 - false_hits / negatives
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {"cutoff": t, "precision": precision, "recall": recall, "specificity": specificity,
                "balanced": (recall + specificity) / 2, "f1": f1}

    scores = torch.cat([positive_scores, negative_scores])
    distinct = torch.unique(scores[torch.isfinite(scores)].clamp(lower, upper)).tolist()
    uppers = [u for u in distinct if u > lower] or [upper]
    if uppers[-1] < upper:
        uppers.append(upper)
    lowers = [lower, *uppers[:-1]]
    rows = [{"low": low, **metrics(high)} for low, high in zip(lowers, uppers)]
    floors = {"precision": min_precision, "specificity": min_specificity}
    floors = {k: v for k, v in floors.items() if v is not None}
    if floors:
        allowed = [i for i, r in enumerate(rows) if all(r[k] >= v for k, v in floors.items())]
        if not allowed:
            best = ", ".join(f"{k} {max(r[k] for r in rows):.3f}" for k in floors)
            wanted = ", ".join(f"{k} >= {v}" for k, v in floors.items())
            raise ConfigError(f"no cut-off reaches {wanted}; the best alone: {best}")
        key = "recall"
    else:
        allowed, key = list(range(len(rows))), objective
    top = max(rows[i][key] for i in allowed)
    best = [i for i in allowed if rows[i][key] >= top - 1e-12]
    runs: list[list[int]] = []
    for i in best:
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    run = max(runs, key=lambda r: rows[r[-1]]["cutoff"] - rows[r[0]]["low"])
    cutoff = (rows[run[0]]["low"] + rows[run[-1]]["cutoff"]) / 2
    chosen = metrics(cutoff)
    return CutoffChoice(
        cutoff=cutoff, precision=chosen["precision"], recall=chosen["recall"], specificity=chosen["specificity"],
        positives=positives, negatives=negatives,
        objective=("max recall at " + ", ".join(f"{k} >= {v}" for k, v in floors.items())) if floors else objective,
        curve=[{k: r[k] for k in ("cutoff", "precision", "recall", "specificity")} for r in rows],
    )


NEVER = -math.inf  # the score of a query no entry can match
