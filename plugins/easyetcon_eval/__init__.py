"""easyetcon built-in plugin: evaluation protocols, lifelong runs and reports.

.. code-block:: python

    from easyetcon_eval import compute_baseline, evaluate_edits, run_lifelong

    baseline = compute_baseline(model, requests)            # unedited outputs, for locality
    chain.apply(model, requests)
    result = evaluate_edits(model, requests, protocols=("teacher-forced", "generation"), baseline=baseline)
    result.summary()["generation@1"]["reliability"]
"""

# imported on first use (PEP 562): loading the plugin's command line does not import torch
from easyetcon.lazy import lazy_exports

_EXPORTS = {
    "exact_match": "easyetcon_eval.answers",
    "extract_answer": "easyetcon_eval.answers",
    "normalize_answer": "easyetcon_eval.answers",
    "METRIC_NAMES": "easyetcon_eval.names",
    "PROTOCOLS": "easyetcon_eval.names",
    "Baseline": "easyetcon_eval.evaluate",
    "EvaluationError": "easyetcon_eval.evaluate",
    "EvaluationResult": "easyetcon_eval.evaluate",
    "compute_baseline": "easyetcon_eval.evaluate",
    "evaluate_edits": "easyetcon_eval.evaluate",
    "EditReport": "easyetcon_eval.editing",
    "edit_and_evaluate": "easyetcon_eval.editing",
    "greedy_continuations": "easyetcon_eval.generation",
    "LifelongInterrupted": "easyetcon_eval.lifelong",
    "LifelongResult": "easyetcon_eval.lifelong",
    "latest_edits": "easyetcon_eval.lifelong",
    "parse_schedule": "easyetcon_eval.lifelong",
    "run_lifelong": "easyetcon_eval.lifelong",
    "compare_runs": "easyetcon_eval.reports",
    "write_report": "easyetcon_eval.reports",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
