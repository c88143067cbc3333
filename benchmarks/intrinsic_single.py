"""Single edits on the fact world: each request is edited alone, scored, and undone.

    python benchmarks/intrinsic_single.py --edits 100 --out benchmarks/results/intrinsic_single.json

For every editor and request: a fresh editor (no state carried over) edits the unedited model,
``easyetcon_eval.evaluate_edits`` scores reliability, generalization, locality (agreement with
the unedited model) and portability under the teacher-forced and generation protocols, and the
edit is undone bit-exactly. Prints a table and writes JSON (summary per editor and protocol,
per-request scores, seconds per edit).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from intrinsic_common import (  # noqa: E402
    METRICS,
    common_arguments,
    editor_name,
    environment,
    fmt,
    load_configs,
    load_world_model,
    mean,
    median,
    metric_table,
    parse_editors,
    parse_run_arguments,
    world_requests,
    write_json,
)

PROTOCOLS = ("teacher-forced", "generation")


def single_edits(model, requests, editor, options, baseline, protocols=PROTOCOLS, log=print):
    """Edit, score and undo each request alone; returns summary, per-request scores and seconds."""
    from easyetcon_eval import evaluate_edits

    from easyetcon.chain import EditChain

    original = model.state_hash()
    per_request, seconds, keys = [], [], []
    for index, request in enumerate(requests):
        chain = EditChain([(editor_name(editor), options)])
        result = chain.apply(model, [request])
        seconds.append(sum(r.seconds for r in result.records))
        scored = evaluate_edits(model, [request], protocols=protocols, baseline=baseline)
        keys = scored.protocols
        per_request.append({"request_id": request.request_id, **scored.per_request[0]})
        result.undo(model)
        if (index + 1) % 10 == 0:
            running = mean([r[keys[-1]]["reliability"] for r in per_request])
            log(f"  {editor}: {index + 1}/{len(requests)} edits, {keys[-1]} reliability so far {fmt(running)}")
    if model.state_hash() != original:
        raise RuntimeError(f"{editor}: undo did not restore the model")
    summary = {
        key: {**{m: mean([r[key][m] for r in per_request]) for m in (*METRICS, "locality_vs_truth")}, "n": len(per_request)}
        for key in keys
    }
    return summary, per_request, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_arguments(parser, edits=100)
    args = parse_run_arguments(parser, argv)
    editors = parse_editors(args.editors)
    configs = load_configs(args.configs)

    from easyetcon_eval import compute_baseline

    model, world, folder = load_world_model(args.model, args.dtype)
    requests = world_requests(world, args.split, args.edits, args.edit_seed)
    started = time.perf_counter()
    baseline = compute_baseline(model, requests, protocols=PROTOCOLS)
    print(f"baseline of {len(requests)} requests in {time.perf_counter() - started:.0f}s")
    output = {"environment": environment(args), "model": folder, "configs": {}, "baseline": baseline.summary, "editors": {}}
    summaries = {}
    for editor in editors:
        options = configs.get(editor, {})
        started = time.perf_counter()
        summary, per_request, seconds = single_edits(model, requests, editor, options, baseline)
        summaries[editor] = summary
        output["configs"][editor] = options
        output["editors"][editor] = {
            "summary": summary, "median_seconds_per_edit": median(seconds), "seconds_per_edit": seconds,
            "wall_seconds": time.perf_counter() - started, "per_request": per_request,
        }
        write_json(args.out, output)
        print(f"{editor}: done in {time.perf_counter() - started:.0f}s, median {fmt(median(seconds))} s/edit")

    protocols = list(next(iter(summaries.values())).keys()) if summaries else []
    print(f"\nSingle edits on the fact world ({args.split} split, {len(requests)} requests, model {folder})\n")
    print(metric_table(summaries, protocols))
    print("\n| editor | median s/edit |\n|---|---|")
    for editor in editors:
        print(f"| {editor} | {fmt(output['editors'][editor]['median_seconds_per_edit'])} |")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
