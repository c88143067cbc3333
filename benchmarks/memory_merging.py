"""External memory and merging on the fact world: retrieval memory, GRACE, LoRA + merge strategies.

    python benchmarks/memory_merging.py --out benchmarks/results/memory_merging.json \\
        [--parts retrieval,retrieval-lifelong,grace,lora] [--n 100] [--lifelong-n 1000] \\
        [--lora-n 100] [--strategies linear,ties,dare_linear,dare_ties,magnitude_prune] \\
        [--merge-every 10] [--threads 2] [--model DIR]

Every part loads the unedited world model afresh and edits fact-world requests sequentially
(one request per chain application), then scores them with the evaluation plugin's protocols
(``teacher-forced@1`` and ``generation@1``: reliability, generalization, locality against the
unedited model's outputs, portability).

* ``retrieval``: the scope is calibrated on the **tune** split (threshold, and relation phrasings
  collected from tune requests); edits and scores come from the **test** split. Two
  configurations: ``relation-examples`` (the tuned scope) and ``plain`` (subject gate and
  embedding similarity only). Also reported: the scope's precision, recall and specificity on
  the test queries.
* ``retrieval-lifelong``: the tuned retrieval memory over ``--lifelong-n`` sequential edits of
  the test split, scored on a sample of ``--lifelong-sample`` requests every ``--lifelong-every``
  edits. Past the split's distinct facts (735 in ``default``; editing the tune split too would
  edit every fact of the world and leave no out-of-scope probe) the run edits facts *again*, to
  another new object: the newest edit must win, and only it is scored.
* ``grace``: the GRACE codebook on ``--n`` test requests; its initial radius is calibrated on the
  tune split (highest rephrase recall with locality specificity >= 0.95).
* ``lora``: ``lora-merge`` with each strategy on ``--lora-n`` sequential test edits.

Speed: seconds per edit (each chain application) and seconds per query (greedy generation of
``--query-tokens`` tokens for the edited model, per prompt, over rephrase and locality prompts;
the unedited model's time is reported beside it). Results go to ``--out`` (JSON) and a table is
printed.
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

from easyetcon.chain import EditChain
from easyetcon.model import load_model
from easyetcon.plugins import get_host
from easyetcon_eval import compute_baseline, latest_edits, run_lifelong

PROTOCOLS = ("teacher-forced", "generation")
METRICS = ("reliability", "generalization", "locality", "portability")
STRATEGY_DENSITY = {"linear": None, "ties": 0.7, "dare_linear": 0.7, "dare_ties": 0.7, "magnitude_prune": 0.7}


def world_setup(model_path: str | None):
    from easyetcon_world.edits import make_edit_requests
    from easyetcon_world.shipped import WorldCacheError, load_world, world_model_folder

    try:
        model_path = str(world_model_folder(model_path))
    except WorldCacheError as error:
        sys.exit(f"{error}; or pass --model DIR (a world model folder)")
    world = load_world(model_path)
    return model_path, world, make_edit_requests


def calibration_requests(world: Any, make_requests: Any) -> list:
    """Tune requests with one fact per subject, so each has same-subject locality probes (with
    the whole split every fact of a subject is edited and none is left to probe)."""
    subjects = {r.subject for r in make_requests(world, "tune", None, 0)}
    return make_requests(world, "tune", len(subjects), 0)


def fresh_model(path: str):
    return load_model(path, registry=get_host().registry)


def seconds_per_query(model: Any, prompts: list[str], tokens: int) -> float:
    started = time.perf_counter()
    model.generate(prompts, max_new_tokens=tokens)
    return (time.perf_counter() - started) / max(len(prompts), 1)


def query_prompts(requests: list, limit: int = 200) -> list[str]:
    prompts = [p for r in requests for p in r.rephrase_prompts] + [p.prompt for r in requests for p in r.locality]
    return prompts[:limit]


def scores(summary: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    return {key: {m: value.get(m) for m in (*METRICS, "n")} for key, value in summary.items() if "@" in key and key.split("@")[0] in PROTOCOLS}


def scope_on(editor: Any, model: Any, requests: list) -> dict[str, float]:
    """How the memory's scope decisions do on these requests' rephrase and locality prompts."""
    positives = [(p, r.request_id) for r in requests for p in r.rephrase_prompts]
    negatives = [p.prompt for r in requests for p in r.locality]
    matches = editor.lookup(model, [p for p, _ in positives] + negatives)
    right = sum(m.in_scope and m.request_id == owner for m, (_, owner) in zip(matches, positives))
    wrong = sum(m.in_scope and m.request_id != owner for m, (_, owner) in zip(matches, positives))
    false_hits = sum(m.in_scope for m in matches[len(positives):])
    return {
        "precision": right / max(right + wrong + false_hits, 1),
        "recall": right / max(len(positives), 1),
        "specificity": 1 - false_hits / max(len(negatives), 1),
        "positives": len(positives),
        "negatives": len(negatives),
    }


def run_edits(path: str, steps: list, requests: list, baseline: Any, args: Any, label: str) -> tuple[dict[str, Any], Any, Any]:
    """Apply ``steps`` to ``requests`` sequentially on a fresh model; score at the end."""
    model = fresh_model(path)
    base_query = seconds_per_query(model, query_prompts(requests), args.query_tokens)
    chain = EditChain(steps)
    print(f"== {label}: {chain!r} on {len(requests)} requests", flush=True)
    lifelong = run_lifelong(
        model, chain, requests, schedule="end", protocols=PROTOCOLS, mode="sequential", batch_size=1,
        baseline=baseline, max_new_tokens=args.max_new_tokens, progress=args.progress, report=False,
        retention_sample=args.retention_sample if len(requests) > args.retention_sample else None,
    )
    per_edit = lifelong.seconds_per_edit
    result = {
        "edits": len(requests),
        "steps": [{"editor": s.info.name, **s.config.model_dump(mode="json")} for s in chain.steps],
        "scores": scores(lifelong.final),
        "seconds_per_edit": sum(per_edit) / max(len(per_edit), 1),
        "seconds_per_query": seconds_per_query(model, query_prompts(requests), args.query_tokens),
        "seconds_per_query_unedited": base_query,
    }
    return result, model, chain


def part_retrieval(path: str, world: Any, make_requests: Any, args: Any) -> dict[str, Any]:
    from easyetcon_memory import calibrate_threshold, relation_examples_from

    tune = make_requests(world, "tune", None, 0)
    test = make_requests(world, "test", args.n, 0)
    baseline = compute_baseline(fresh_model(path), test, protocols=PROTOCOLS, max_new_tokens=args.max_new_tokens)
    examples = relation_examples_from(tune)
    calibration_set = calibration_requests(world, make_requests)
    out: dict[str, Any] = {}
    for name, options in {"relation-examples": {"relation_examples": examples}, "plain": {}}.items():
        started = time.perf_counter()
        calibration = calibrate_threshold(calibration_set, options)
        options = {**options, "threshold": calibration.threshold}
        result, model, chain = run_edits(path, [("retrieval-memory", options)], test, baseline, args, f"retrieval ({name})")
        editor = chain.steps[0].editor
        result["steps"][0]["relation_examples"] = {k: len(v) for k, v in examples.items()} if name != "plain" else {}
        result["calibration_on_tune"] = calibration.summary()
        result["calibration_seconds"] = time.perf_counter() - started
        result["scope_on_test"] = scope_on(editor, model, test)
        result["retriever"] = editor.describe()
        lookups = query_prompts(test)
        started = time.perf_counter()
        editor.lookup(model, lookups)
        result["seconds_per_lookup"] = (time.perf_counter() - started) / len(lookups)
        out[name] = result
        report(f"retrieval ({name})", result)
    return out


def part_retrieval_lifelong(path: str, world: Any, make_requests: Any, args: Any) -> dict[str, Any]:
    from easyetcon_memory import calibrate_threshold, relation_examples_from

    tune = make_requests(world, "tune", None, 0)
    # Only the test split: its locality probes are facts of tune subjects, which stay unedited.
    # (Adding the tune split would edit every fact of the world: no out-of-scope probe is left.)
    available = make_requests(world, "test", None, 0)
    requests = available[: args.lifelong_n] + re_edits(available, make_requests(world, "test", None, 1), args.lifelong_n)
    examples = relation_examples_from(tune)
    calibration = calibrate_threshold(calibration_requests(world, make_requests), {"relation_examples": examples})
    options = {"relation_examples": examples, "threshold": calibration.threshold}
    model = fresh_model(path)
    chain = EditChain([("retrieval-memory", options)])
    print(f"== retrieval lifelong: {len(requests)} sequential edits (of {len(available)} editable facts)", flush=True)
    lifelong = run_lifelong(
        model, chain, requests, schedule=f"every:{args.lifelong_every}", protocols=PROTOCOLS, mode="sequential",
        batch_size=1, baseline=True, max_new_tokens=args.max_new_tokens, progress=args.progress, report=False,
        retention_sample=args.lifelong_sample,
    )
    editor = chain.steps[0].editor
    per_edit = lifelong.seconds_per_edit
    result = {
        "edits": len(requests),
        "editable_facts_in_world": len(available),
        "re_edits": max(0, len(requests) - len(available)),
        "threshold": calibration.threshold,
        "retention_sample": args.lifelong_sample,
        "scores": scores(lifelong.final),
        "curve": [{"edits": p["edits"], **scores(p)} for p in lifelong.curve],
        "scope_on_all_edits": scope_on(editor, model, [requests[i] for i in latest_edits(requests)]),
        "seconds_per_edit": sum(per_edit) / max(len(per_edit), 1),
        "seconds_per_edit_last_100": sum(per_edit[-100:]) / max(len(per_edit[-100:]), 1),
        "seconds_per_query": seconds_per_query(model, query_prompts(requests), args.query_tokens),
    }
    report("retrieval lifelong", result)
    return result


def re_edits(first: list, second: list, total: int) -> list:
    """Requests editing facts of ``first`` again, to the other new object ``second`` gives them,
    until the stream holds ``total`` edits."""
    wanted = total - len(first)
    if wanted <= 0:
        return []
    earlier = {(r.subject, r.prompt): r.target_new for r in first}
    again = [
        r.model_copy(update={"case_id": f"{r.case_id}-again", "ground_truth": earlier[(r.subject, r.prompt)]})
        for r in second
        if earlier.get((r.subject, r.prompt)) not in (None, r.target_new)
    ]
    if len(again) < wanted:
        raise SystemExit(f"--lifelong-n {total}: only {len(first) + len(again)} edits available")
    return again[:wanted]


def part_grace(path: str, world: Any, make_requests: Any, args: Any) -> dict[str, Any]:
    from easyetcon_memory import calibrate_radius

    test = make_requests(world, "test", args.n, 0)
    baseline = compute_baseline(fresh_model(path), test, protocols=PROTOCOLS, max_new_tokens=args.max_new_tokens)
    options = json.loads(args.grace_options)
    calibration = None
    if "initial_radius" not in options:  # choose it on the tune split: locality first
        calibration = calibrate_radius(
            fresh_model(path), calibration_requests(world, make_requests), options, min_specificity=0.95
        )
        options["initial_radius"] = calibration.radius
    result, model, _ = run_edits(path, [("grace", options)], test, baseline, args, "grace")
    store = model.memory_store("grace")
    radii = [float(e.tensors["radius"]) for _, e in store.items()]
    result["radius_calibration_on_tune"] = calibration.summary() if calibration else None
    result["codebook"] = {"entries": len(store), "mean_radius": sum(radii) / max(len(radii), 1)}
    report("grace", result)
    return result


def part_lora(path: str, world: Any, make_requests: Any, args: Any) -> dict[str, Any]:
    test = make_requests(world, "test", args.lora_n, 0)
    baseline = compute_baseline(fresh_model(path), test, protocols=PROTOCOLS, max_new_tokens=args.max_new_tokens)
    base_options = json.loads(args.lora_options)
    out = {}
    for strategy in args.strategies.split(","):
        options = {**base_options, "strategy": strategy, "merge_every": args.merge_every}
        if STRATEGY_DENSITY[strategy] is not None:
            options.setdefault("density", STRATEGY_DENSITY[strategy])
        result, _, _ = run_edits(path, [("lora-merge", options)], test, baseline, args, f"lora-merge ({strategy})")
        out[strategy] = result
        report(f"lora-merge ({strategy})", result)
    return out


def report(name: str, result: dict[str, Any]) -> None:
    for key, values in result["scores"].items():
        cells = "  ".join(f"{m}={values[m]:.3f}" if isinstance(values.get(m), float) else f"{m}=-" for m in METRICS)
        print(f"   {name:32s} {key:18s} {cells}  n={values.get('n')}", flush=True)
    print(f"   {name:32s} s/edit={result['seconds_per_edit']:.4f}  s/query={result['seconds_per_query']:.4f}", flush=True)


def table(results: dict[str, Any]) -> str:
    rows = []

    def add(name: str, result: dict[str, Any]) -> None:
        for key, values in result["scores"].items():
            rows.append(
                f"| {name} | {result['edits']} | {key} | "
                + " | ".join(f"{values[m]:.3f}" if isinstance(values.get(m), float) else "-" for m in METRICS)
                + f" | {result['seconds_per_edit']:.3f} | {result['seconds_per_query']:.4f} |"
            )

    for part, value in results.items():
        if part in ("retrieval", "lora"):
            for name, result in value.items():
                add(f"{part} ({name})", result)
        elif isinstance(value, dict) and "scores" in value:
            add(part, value)
    header = "| method | edits | protocol | " + " | ".join(METRICS) + " | s/edit | s/query |"
    return "\n".join([header, "|" + "---|" * (len(METRICS) + 5), *rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a shipped world model's name (default, wide) or a world model folder (default: default)")
    parser.add_argument("--parts", default="retrieval,retrieval-lifelong,grace,lora")
    parser.add_argument("--n", type=int, default=100, help="test requests for retrieval and GRACE")
    parser.add_argument("--lifelong-n", type=int, default=1000, help="sequential edits of the lifelong retrieval run")
    parser.add_argument("--lifelong-every", type=int, default=250, help="retention points of the lifelong run")
    parser.add_argument("--lifelong-sample", type=int, default=200, help="requests scored at each lifelong point")
    parser.add_argument("--retention-sample", type=int, default=200, help="requests scored at the end of other runs")
    parser.add_argument("--lora-n", type=int, default=100, help="sequential edits per LoRA strategy")
    parser.add_argument("--strategies", default="linear,ties,dare_linear,dare_ties,magnitude_prune")
    parser.add_argument("--merge-every", type=int, default=10, help="lora-merge window")
    parser.add_argument(
        "--lora-options", default='{"rank": 4, "steps": 60, "learning_rate": 0.003, "stop_loss": 0.5, "layers": [-1]}',
        help="lora-merge options besides strategy, density and merge_every (chosen on the small preset world)",
    )
    parser.add_argument("--grace-options", default='{"layer": -1}', help="grace options; without initial_radius it is calibrated on tune")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--query-tokens", type=int, default=8, help="tokens generated per query when timing")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    path, world, make_requests = world_setup(args.model)
    parts = {
        "retrieval": part_retrieval, "retrieval-lifelong": part_retrieval_lifelong,
        "grace": part_grace, "lora": part_lora,
    }
    unknown = sorted(set(args.parts.split(",")) - parts.keys())
    if unknown:
        sys.exit(f"unknown parts {unknown}; choose from {', '.join(parts)}")
    results: dict[str, Any] = {}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"model": path, "torch_threads": args.threads, "machine": platform.machine(), "python": platform.python_version(),
            "settings": {k: v for k, v in vars(args).items() if k != "out"} | {"out": str(args.out)}}
    for name in args.parts.split(","):
        started = time.perf_counter()
        results[name] = parts[name](path, world, make_requests, args)
        results[name + "_seconds"] = time.perf_counter() - started
        args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2), encoding="utf-8")
    print()
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
