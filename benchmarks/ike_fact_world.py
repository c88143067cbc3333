"""IKE (in-context knowledge editing) on the fact world: single edits and a sequential stream.

    python benchmarks/ike_fact_world.py --n 50 --out benchmarks/results/ike_fact_world.json

* ``single``: each request is edited alone on the unedited model, scored, and undone; the
  demonstration pool is the fact world's **tune** split (``demonstrations_from: fact-world``,
  the paper's training facts), at most ``--pool-limit`` of its requests.
* ``sequential``: ``--n`` requests edited one after another, scored at the end; the pool is the
  edits so far (the default), so later edits see the earlier ones' demonstrations.

``k`` and the templates are chosen on the tune split (``--n`` tune requests; in single mode the
tune pool leaves out each request's own demonstrations, as always) by the mean of reliability,
generalization and locality under ``generation@1``; the chosen options are then run on ``--n``
test requests. Scores: reliability, generalization, locality (agreement with the unedited
model) and portability, teacher-forced and generation protocols. One thread.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

PROTOCOLS = ("teacher-forced", "generation")
METRICS = ("reliability", "generalization", "locality", "portability")
SELECT_ON = "generation@1"

#: The paper's / EasyEdit's form, and the fact world corpus's form (a stated fact, then the question).
TEMPLATES = {
    "paper": {},
    "corpus": {"fact_template": "{prompt} {target}.", "demonstration_template": "{prompt} {answer}. ",
               "query_template": "{fact} {prompt}"},
}


def load(model_name: str | None):
    from easyetcon_world.edits import make_edit_requests
    from easyetcon_world.shipped import load_world, world_model_folder

    from easyetcon.model import load_model
    from easyetcon.plugins import get_host

    folder = str(world_model_folder(model_name))
    world = load_world(folder)
    return (lambda: load_model(folder, registry=get_host().registry)), world, make_edit_requests, folder


def mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def summarise(per_request: list[dict[str, Any]], keys: list[str]) -> dict[str, dict[str, Any]]:
    return {key: {**{m: mean([r[key].get(m) for r in per_request]) for m in METRICS}, "n": len(per_request)} for key in keys}


def run_single(model: Any, requests: list, options: dict[str, Any], baseline: Any, max_new_tokens: int) -> dict[str, Any]:
    from easyetcon_eval import evaluate_edits

    from easyetcon.chain import EditChain

    chain = EditChain([("ike", options)])  # one editor: the tune pool is loaded and embedded once
    per_request, keys, dropped = [], [], []
    original = model.state_hash()
    for request in requests:
        result = chain.apply(model, [request])
        scored = evaluate_edits(model, [request], protocols=PROTOCOLS, baseline=baseline, max_new_tokens=max_new_tokens)
        dropped += [a.dropped for a in chain.steps[0].editor.explain(model, [request.prompt, *request.rephrase_prompts])]
        keys = list(scored.protocols)
        per_request.append(scored.per_request[0])
        result.undo(model)
    if model.state_hash() != original:
        raise RuntimeError("ike changed the weights")
    return {"scores": summarise(per_request, keys), "mean_dropped_demonstrations": mean(dropped)}


def run_sequential(model: Any, requests: list, options: dict[str, Any], baseline: Any, max_new_tokens: int) -> dict[str, Any]:
    from easyetcon_eval import evaluate_edits

    from easyetcon.chain import EditChain

    chain = EditChain([("ike", options)])
    original = model.state_hash()
    for request in requests:
        chain.apply(model, [request])
    scored = evaluate_edits(model, requests, protocols=PROTOCOLS, baseline=baseline, max_new_tokens=max_new_tokens)
    if model.state_hash() != original:
        raise RuntimeError("ike changed the weights")
    asked = chain.steps[0].editor.explain(model, [p for r in requests for p in (r.prompt, *r.rephrase_prompts)])
    return {"scores": summarise(scored.per_request, list(scored.protocols)),
            "mean_dropped_demonstrations": mean([a.dropped for a in asked])}


def selection_score(result: dict[str, Any]) -> float:
    values = result["scores"][SELECT_ON]
    return mean([values.get("reliability"), values.get("generalization"), values.get("locality")]) or 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="shipped world model name or folder (default: default)")
    parser.add_argument("--n", type=int, default=50, help="requests per setting and split")
    parser.add_argument("--ks", default="0,1,2,4,8", help="k values tried on the tune split")
    parser.add_argument("--templates", default="paper,corpus", help=f"template sets tried on tune: {', '.join(TEMPLATES)}")
    parser.add_argument("--pool-limit", type=int, default=200, help="tune requests in the single-edit pool")
    parser.add_argument("--max-context-tokens", type=int, default=256,
                        help="the shipped model's trained block size (its max_position_embeddings is 512)")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--retriever", default="auto")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)

    from easyetcon_eval import compute_baseline

    fresh, world, make_requests, folder = load(args.model)
    splits = {split: make_requests(world, split, args.n, 0) for split in ("tune", "test")}
    model = fresh()
    baselines = {
        split: compute_baseline(model, requests, protocols=PROTOCOLS, max_new_tokens=args.max_new_tokens)
        for split, requests in splits.items()
    }
    common = {"retriever": args.retriever, "max_context_tokens": args.max_context_tokens,
              "answer_tokens": args.max_new_tokens}
    pools = {
        "single": {"demonstrations_from": "fact-world", "demonstrations_options": {"split": "tune"},
                   "demonstrations_limit": args.pool_limit},
        "sequential": {},
    }
    runners = {"single": run_single, "sequential": run_sequential}
    output: dict[str, Any] = {
        "meta": {"model": folder, "threads": 1, "machine": platform.machine(), "python": platform.python_version(),
                 "argv": sys.argv[1:], "select_on": f"mean of reliability, generalization, locality under {SELECT_ON}"},
        "tune": {}, "test": {},
    }
    for setting, runner in runners.items():
        trials = []
        for template in args.templates.split(","):
            for k in (int(k) for k in args.ks.split(",")):
                options = {**common, **pools[setting], **TEMPLATES[template], "k": k}
                started = time.perf_counter()
                # a fresh model per trial: a model keeps the first editor attached under a step name
                result = runner(fresh(), splits["tune"], options, baselines["tune"], args.max_new_tokens)
                result.update(template=template, k=k, seconds=time.perf_counter() - started)
                trials.append(result)
                print(f"tune {setting:10s} {template:6s} k={k:<2d} score={selection_score(result):.3f} "
                      f"dropped={result['mean_dropped_demonstrations']:.2f} ({result['seconds']:.0f}s)", flush=True)
        best = max(trials, key=selection_score)
        output["tune"][setting] = trials
        options = {**common, **pools[setting], **TEMPLATES[best["template"]], "k": best["k"]}
        started = time.perf_counter()
        result = runner(fresh(), splits["test"], options, baselines["test"], args.max_new_tokens)
        result.update(template=best["template"], k=best["k"], options=options, seconds=time.perf_counter() - started)
        output["test"][setting] = result
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(output, indent=2), encoding="utf-8")

    print("\n| setting | template | k | protocol | " + " | ".join(METRICS) + " |")
    print("|" + "---|" * (len(METRICS) + 4))
    for setting, result in output["test"].items():
        for key, values in result["scores"].items():
            cells = " | ".join(f"{values[m]:.3f}" if values.get(m) is not None else "-" for m in METRICS)
            print(f"| {setting} | {result['template']} | {result['k']} | {key} | {cells} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
