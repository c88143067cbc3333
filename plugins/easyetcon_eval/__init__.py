"""easyetcon built-in plugin: evaluation protocols, lifelong runs and reports.

.. code-block:: python

    from easyetcon_eval import compute_baseline, evaluate_edits, run_lifelong

    baseline = compute_baseline(model, requests)            # unedited outputs, for locality
    chain.apply(model, requests)
    result = evaluate_edits(model, requests, protocols=("teacher-forced", "generation"), baseline=baseline)
    result.summary()["generation@1"]["reliability"]
"""

from easyetcon_eval.answers import exact_match, extract_answer, normalize_answer
from easyetcon_eval.evaluate import (
    METRIC_NAMES,
    PROTOCOLS,
    Baseline,
    EvaluationError,
    EvaluationResult,
    compute_baseline,
    evaluate_edits,
)
from easyetcon_eval.generation import greedy_continuations
from easyetcon_eval.lifelong import LifelongResult, latest_edits, parse_schedule, run_lifelong
from easyetcon_eval.reports import compare_runs, write_report

__all__ = [
    "METRIC_NAMES",
    "PROTOCOLS",
    "Baseline",
    "EvaluationError",
    "EvaluationResult",
    "LifelongResult",
    "compare_runs",
    "compute_baseline",
    "evaluate_edits",
    "exact_match",
    "extract_answer",
    "greedy_continuations",
    "normalize_answer",
    "latest_edits",
    "parse_schedule",
    "run_lifelong",
    "write_report",
]
