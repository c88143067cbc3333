"""SERAC on the fact world: the scope classifier trained on the tune split, then single edits
and a sequential stream of test edits.

    python benchmarks/serac_fact_world.py --n 50 --train-n 165 --out benchmarks/results/serac_fact_world.json

* *training* (its own cost): :func:`easyetcon_memory.train_serac_classifier` on ``--train-n``
  tune requests; seconds, examples and training accuracy are reported apart from editing.
* *scope*: on the ``--n`` test requests all in memory, the share of rephrases routed to their
  own edit and of locality prompts left out of scope.
* ``single``: each test request edited alone, scored, undone; ``sequential``: all ``--n``
  edited one after another, scored at the end. Scores: reliability, generalization, locality
  (agreement with the unedited model) and portability, teacher-forced and generation. One thread.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

PROTOCOLS = ("teacher-forced", "generation")
METRICS = ("reliability", "generalization", "locality", "portability")


def mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def summarise(per_request: list[dict[str, Any]], keys: list[str]) -> dict[str, dict[str, Any]]:
    return {key: {**{m: mean([r[key].get(m) for r in per_request]) for m in METRICS}, "n": len(per_request)} for key in keys}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="shipped world model name or folder (default: default)")
    parser.add_argument("--n", type=int, default=50, help="test requests")
    parser.add_argument("--train-n", type=int, default=165, help="tune requests the classifier is trained on (the default world has 165)")
    parser.add_argument("--retriever", default="auto", help="classifier features: auto, sentence-transformers, tfidf")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)

    from easyetcon_eval import compute_baseline, evaluate_edits
    from easyetcon_memory import train_serac_classifier
    from easyetcon_world.edits import make_edit_requests
    from easyetcon_world.shipped import load_world, world_model_folder

    from easyetcon.chain import EditChain
    from easyetcon.model import load_model
    from easyetcon.plugins import get_host

    folder = str(world_model_folder(args.model))
    world = load_world(folder)
    tune = make_edit_requests(world, "tune", args.train_n, 0)
    test = make_edit_requests(world, "test", args.n, 0)

    classifier = train_serac_classifier(tune, retriever=args.retriever)
    print(f"classifier: {classifier.training}", flush=True)
    output: dict[str, Any] = {
        "meta": {"model": folder, "threads": 1, "machine": platform.machine(), "python": platform.python_version(),
                 "argv": sys.argv[1:]},
        "training": {**classifier.training, "encoder": classifier.encoder, "embedding_model": classifier.embedding_model_id},
    }
    with tempfile.TemporaryDirectory() as scratch:
        path = str(classifier.save(Path(scratch) / "classifier.safetensors"))
        options = {"classifier": path, "threshold": args.threshold}

        def fresh():
            return load_model(folder, registry=get_host().registry)

        model = fresh()
        baseline = compute_baseline(model, test, protocols=PROTOCOLS, max_new_tokens=args.max_new_tokens)

        # single: each edit alone on the unedited model
        chain = EditChain([("serac", options)])
        original = model.state_hash()
        per_request, keys, started = [], [], time.perf_counter()
        for request in test:
            result = chain.apply(model, [request])
            scored = evaluate_edits(model, [request], protocols=PROTOCOLS, baseline=baseline, max_new_tokens=args.max_new_tokens)
            keys = list(scored.protocols)
            per_request.append(scored.per_request[0])
            result.undo(model)
        if model.state_hash() != original:
            raise RuntimeError("serac changed the weights")
        output["single"] = {"scores": summarise(per_request, keys), "seconds": time.perf_counter() - started}

        # sequential: all edits in memory at once
        model = fresh()
        chain = EditChain([("serac", options)])
        started = time.perf_counter()
        for request in test:
            chain.apply(model, [request])
        scored = evaluate_edits(model, test, protocols=PROTOCOLS, baseline=baseline, max_new_tokens=args.max_new_tokens)
        output["sequential"] = {"scores": summarise(scored.per_request, list(scored.protocols)),
                                "seconds": time.perf_counter() - started}

        # the scope decision itself, with every test edit in memory
        editor = chain.steps[0].editor
        rephrases = [(p, r.request_id) for r in test for p in r.rephrase_prompts]
        probes = [p for r in test for p in r.locality]
        routed = editor.lookup(model, [p for p, _ in rephrases])
        left = editor.lookup(model, [p.prompt for p in probes])
        kinds = sorted({p.kind for p in probes})
        output["scope"] = {
            "rephrases_to_own_edit": mean([float(d.in_scope and d.request_id == owner) for d, (_, owner) in zip(routed, rephrases)]),
            "locality_out_of_scope": mean([float(not d.in_scope) for d in left]),
            "locality_out_of_scope_by_kind": {
                kind: mean([float(not d.in_scope) for d, p in zip(left, probes) if p.kind == kind]) for kind in kinds
            },
            "rephrases": len(rephrases), "locality_prompts": len(probes),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(output, indent=2), encoding="utf-8")

    print(f"scope: {output['scope']}")
    print("\n| setting | protocol | " + " | ".join(METRICS) + " |")
    print("|" + "---|" * (len(METRICS) + 2))
    for setting in ("single", "sequential"):
        for key, values in output[setting]["scores"].items():
            cells = " | ".join(f"{values[m]:.3f}" if values.get(m) is not None else "-" for m in METRICS)
            print(f"| {setting} | {key} | {cells} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
