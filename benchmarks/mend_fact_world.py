"""MEND on the fact world: the hypernetwork trained on the tune split, then single edits and a
sequential stream of test edits.

    python benchmarks/mend_fact_world.py --threads 1 --n 50 --out benchmarks/results/mend_fact_world.json

* *selection* (tune only): each ``--trials`` option set is trained on the tune split less its
  last ``--select-n`` requests and scored by single edits of those held-out tune requests (mean
  of reliability, generalization and locality under ``generation@1``); the best is kept.
* *training* (its own cost): :func:`easyetcon_intrinsic.mend.train_mend` with the chosen options
  on the whole tune split; seconds and the post-edit NLL before and after training are reported
  apart from editing. The hypernetwork is saved and read back, verified, as a user would.
* ``single``: each of ``--n`` test requests edited alone, scored, undone; ``sequential``: all
  ``--n`` edited one after another, scored at the end. Scores: reliability, generalization,
  locality (agreement with the unedited model) and portability, teacher-forced and generation;
  seconds per edit (the edit alone, not the scoring).
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
SELECT_ON = "generation@1"

#: Option sets tried on the tune split (the rest are MendOptions' defaults). The untrained step
#: (a plain gradient step) edits the world model reliably from 0.05 up and ruins locality above 0.1.
TRIALS = {
    "step-0.05": {"initial_step": 0.05},
    "step-0.05-edit-1": {"initial_step": 0.05, "edit_weight": 1.0},
    "step-0.1-edit-1": {"initial_step": 0.1, "edit_weight": 1.0},
}


def mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def summarise(per_request: list[dict[str, Any]], keys: list[str]) -> dict[str, dict[str, Any]]:
    return {key: {**{m: mean([r[key].get(m) for r in per_request]) for m in METRICS}, "n": len(per_request)} for key in keys}


def selection_score(scores: dict[str, dict[str, Any]]) -> float:
    values = scores[SELECT_ON]
    return mean([values.get("reliability"), values.get("generalization"), values.get("locality")]) or 0.0


def run_single(model: Any, requests: list, options: dict[str, Any], baseline: Any, max_new_tokens: int) -> dict[str, Any]:
    from easyetcon_eval import evaluate_edits

    from easyetcon.chain import EditChain

    chain = EditChain([("mend", options)])
    original = model.state_hash()
    per_request, keys, seconds = [], [], []
    for request in requests:
        started = time.perf_counter()
        result = chain.apply(model, [request])
        seconds.append(time.perf_counter() - started)
        scored = evaluate_edits(model, [request], protocols=PROTOCOLS, baseline=baseline, max_new_tokens=max_new_tokens)
        keys = list(scored.protocols)
        per_request.append(scored.per_request[0])
        result.undo(model)
    if model.state_hash() != original:
        raise RuntimeError("undoing every mend edit did not restore the model")
    return {"scores": summarise(per_request, keys), "seconds_per_edit": mean(seconds)}


def run_sequential(model: Any, requests: list, options: dict[str, Any], baseline: Any, max_new_tokens: int) -> dict[str, Any]:
    from easyetcon_eval import evaluate_edits

    from easyetcon.chain import EditChain

    chain = EditChain([("mend", options)])
    seconds = []
    for request in requests:
        started = time.perf_counter()
        chain.apply(model, [request])
        seconds.append(time.perf_counter() - started)
    scored = evaluate_edits(model, requests, protocols=PROTOCOLS, baseline=baseline, max_new_tokens=max_new_tokens)
    return {"scores": summarise(scored.per_request, list(scored.protocols)), "seconds_per_edit": mean(seconds)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="shipped world model name or folder (default: default)")
    parser.add_argument("--n", type=int, default=50, help="test requests per setting")
    parser.add_argument("--select-n", type=int, default=40, help="tune requests held out to choose the options")
    parser.add_argument("--trials", default=",".join(TRIALS), help=f"option sets tried on tune: {', '.join(TRIALS)}")
    parser.add_argument("--steps", type=int, default=1000, help="training steps (MendOptions.steps)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from easyetcon_eval import compute_baseline
    from easyetcon_intrinsic.mend import read_mend, train_mend
    from easyetcon_world.edits import make_edit_requests
    from easyetcon_world.shipped import load_world, world_model_folder

    from easyetcon.model import load_model
    from easyetcon.plugins import get_host

    folder = str(world_model_folder(args.model))
    world = load_world(folder)
    tune = make_edit_requests(world, "tune", None, 0)
    test = make_edit_requests(world, "test", args.n, 0)
    fit, held = tune[: -args.select_n], tune[-args.select_n :]

    def fresh():
        return load_model(folder, registry=get_host().registry)

    model = fresh()
    baselines = {name: compute_baseline(model, requests, protocols=PROTOCOLS, max_new_tokens=args.max_new_tokens)
                 for name, requests in (("held", held), ("test", test))}
    output: dict[str, Any] = {
        "meta": {"model": folder, "threads": args.threads, "machine": platform.machine(), "python": platform.python_version(),
                 "argv": sys.argv[1:], "tune_requests": len(tune), "select_on":
                 f"mean of reliability, generalization, locality under {SELECT_ON} on the last {len(held)} tune requests"},
        "selection": [],
    }

    def save():
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(output, indent=2), encoding="utf-8")

    with tempfile.TemporaryDirectory() as scratch:
        # 1. options chosen on tune: trained on `fit`, scored on the held-out tune requests
        for name in args.trials.split(","):
            options = {"steps": args.steps, **TRIALS[name]}
            hypernetwork = train_mend(model, fit, options)
            path = str(hypernetwork.save(Path(scratch) / f"{name}.safetensors"))
            result = run_single(model, held, {"hypernetwork": path}, baselines["held"], args.max_new_tokens)
            output["selection"].append({"trial": name, "options": options, "training": hypernetwork.training, **result})
            print(f"tune {name:12s} score={selection_score(result['scores']):.3f} {result['scores'][SELECT_ON]} "
                  f"(training {hypernetwork.training['seconds']:.0f}s)", flush=True)
            save()
        best = max(output["selection"], key=lambda trial: selection_score(trial["scores"]))

        # 2. training on the whole tune split, its cost reported apart
        hypernetwork = train_mend(model, tune, best["options"])
        path = str(hypernetwork.save(Path(scratch) / "mend.safetensors"))
        read_mend(path)  # the editor reads it so; verified
        output["training"] = {"trial": best["trial"], "options": hypernetwork.options.model_dump(mode="json"),
                              **hypernetwork.training}
        print(f"training: {hypernetwork.training}", flush=True)

        # 3. test edits
        output["single"] = run_single(model, test, {"hypernetwork": path}, baselines["test"], args.max_new_tokens)
        save()
        output["sequential"] = run_sequential(fresh(), test, {"hypernetwork": path}, baselines["test"], args.max_new_tokens)
        save()

    print("\n| setting | protocol | " + " | ".join(METRICS) + " | s/edit |")
    print("|" + "---|" * (len(METRICS) + 3))
    for setting in ("single", "sequential"):
        for key, values in output[setting]["scores"].items():
            cells = " | ".join(f"{values[m]:.3f}" if values.get(m) is not None else "-" for m in METRICS)
            print(f"| {setting} | {key} | {cells} | {output[setting]['seconds_per_edit']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
