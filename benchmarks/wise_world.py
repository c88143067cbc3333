"""WISE on the fact world: single edits (each alone, undone) and one sequential run.

    python benchmarks/wise_world.py --split tune --single 20 --sequential 50 --irrelevant 16 --options '{"learning_rate": 1.0}'

Scores reliability, generalization and locality (agreement with the unedited model) under the
generation protocol with ``easyetcon_eval.evaluate_edits``. Choose options on ``--split tune``;
report ``--split test``. Prints one table row per run and writes JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from intrinsic_common import fmt, load_world_model, mean, world_requests, write_json  # noqa: E402

PROTOCOLS = ("generation",)
METRICS = ("reliability", "generalization", "locality")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="test", choices=("tune", "test"))
    parser.add_argument("--single", type=int, default=20, help="single edits (0: none)")
    parser.add_argument("--sequential", type=int, default=50, help="edits of the sequential run (0: none)")
    parser.add_argument("--options", default="{}", help="JSON options of wise")
    parser.add_argument("--irrelevant", type=int, default=0,
                        help="use the prompts of the last N tune-split facts as irrelevant_prompts (never edited here)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    import torch
    from easyetcon_eval import compute_baseline, evaluate_edits

    from easyetcon.chain import EditChain

    torch.set_num_threads(args.threads)
    options = json.loads(args.options)
    model, world, folder = load_world_model(None)
    requests = world_requests(world, args.split, max(args.single, args.sequential), 0)
    if args.irrelevant:
        tune = world_requests(world, "tune", 165, 0)  # the whole tune split of the default world
        options["irrelevant_prompts"] = [r.prompt for r in tune[-args.irrelevant:]]
    baseline = compute_baseline(model, requests, protocols=PROTOCOLS)
    original = model.state_hash()
    rows = {}
    if args.single:
        scores, started = [], time.perf_counter()
        for request in requests[: args.single]:
            result = EditChain([("wise", options)]).apply(model, [request])
            scores.append(evaluate_edits(model, [request], protocols=PROTOCOLS, baseline=baseline).per_request[0])
            result.undo(model)
        key = next(iter(scores[0]))
        rows[f"single x{args.single}"] = {m: mean([s[key][m] for s in scores]) for m in METRICS}
        rows[f"single x{args.single}"]["seconds"] = time.perf_counter() - started
    if args.sequential:
        started = time.perf_counter()
        chosen = requests[: args.sequential]
        result = EditChain([("wise", options)]).apply(model, chosen, mode="sequential")
        summary = evaluate_edits(model, chosen, protocols=PROTOCOLS, baseline=baseline).summary()
        key = next(iter(summary))
        rows[f"sequential x{args.sequential}"] = {m: summary[key][m] for m in METRICS}
        rows[f"sequential x{args.sequential}"]["seconds"] = time.perf_counter() - started
        result.undo(model)
    if model.state_hash() != original:
        raise RuntimeError("undo did not restore the model")
    shown = {k: v for k, v in options.items() if k != "irrelevant_prompts"}
    print(f"wise on {folder} ({args.split} split), options {shown}, {args.irrelevant} tune prompts as irrelevant\n")
    print("| run | reliability | generalization | locality | seconds |\n|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(fmt(row[m]) for m in METRICS) + f" | {row['seconds']:.0f} |")
    if args.out:
        write_json(args.out, {"model": folder, "split": args.split, "options": options, "runs": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
