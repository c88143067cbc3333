"""Sequential (lifelong) editing on the fact world: retention curves and the cost of each edit.

    nohup python benchmarks/intrinsic_sequential.py --editors alphaedit --edits 500 --every 50 \\
        --out benchmarks/results/intrinsic_sequential_alphaedit.json &

One editor instance edits the requests one at a time (``easyetcon_eval.run_lifelong``; with
``--batch-size N``, N at a time in one call, e.g. all of them for LocFT-BF's breadth-first pass); every
``--every`` edits, all requests edited so far are scored (teacher-forced and generation), so the
curve shows how much earlier edits and unrelated knowledge survive. Timing: median seconds per
edit, and edit 500 against edit 10 of the same run (single edits and the mean of the 20 edits
around each, since one edit is noisy on a shared machine). The JSON is rewritten after each
editor; heavy runs belong in the background.
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
    median,
    parse_editors,
    parse_run_arguments,
    world_requests,
    write_json,
)


def timing(seconds: list[float], early: int = 10, late: int | None = None) -> dict[str, float | None]:
    """Edit ``early`` against edit ``late`` (1-based; default the last), single and windowed."""
    late = late or len(seconds)

    def window(position: int) -> float | None:
        lo, hi = max(0, position - 10), min(len(seconds), position + 10)
        part = seconds[lo:hi]
        return sum(part) / len(part) if part else None

    single = lambda position: seconds[position - 1] if 0 < position <= len(seconds) else None  # noqa: E731
    early_window, late_window = window(early), window(late)
    return {
        "median": median(seconds),
        f"edit_{early}": single(early),
        f"edit_{late}": single(late),
        f"window_{early}": early_window,
        f"window_{late}": late_window,
        "late_over_early": late_window / early_window if early_window and late_window else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_arguments(parser, edits=500)
    parser.add_argument("--every", type=int, default=50, help="score all edits so far every N edits")
    parser.add_argument("--protocols", default="teacher-forced,generation")
    parser.add_argument("--retention-sample", type=int, default=None, help="score at most this many edited requests per point")
    parser.add_argument("--batch-size", type=int, default=1,
                        help="requests per editor call (batch mode); e.g. all of them at once for breadth-first fine-tuning")
    args = parse_run_arguments(parser, argv)
    editors = parse_editors(args.editors)
    configs = load_configs(args.configs, sequential=True)
    protocols = tuple(p.strip() for p in args.protocols.split(","))

    from easyetcon_eval import compute_baseline, run_lifelong

    from easyetcon.chain import EditChain

    model, world, folder = load_world_model(args.model, args.dtype)
    requests = world_requests(world, args.split, args.edits, args.edit_seed)
    baseline = compute_baseline(model, requests, protocols=protocols)
    output = {"environment": environment(args), "model": folder, "configs": {}, "baseline": baseline.summary, "editors": {}}
    original = model.state_hash()
    for editor in editors:
        options = configs.get(editor, {})
        chain = EditChain([(editor_name(editor), options)])
        started = time.perf_counter()
        result = run_lifelong(
            model, chain, requests, schedule=f"every:{args.every}", protocols=protocols, baseline=baseline,
            retention_sample=args.retention_sample, progress=True,
            mode="batch" if args.batch_size > 1 else "sequential", batch_size=args.batch_size,
        )
        output["configs"][editor] = options
        output["editors"][editor] = {
            "final": result.final, "curve": result.curve, "seconds_per_edit": result.seconds_per_edit,
            "timing": timing(result.seconds_per_edit), "wall_seconds": time.perf_counter() - started,
        }
        if editor_name(editor) == "alphaedit":
            state = chain.steps[0].editor
            layers = state.layers(model, requests)
            solvers = [state.solver(model, layer) for layer in layers]
            output["editors"][editor]["state"] = {
                "layers": layers,
                "per_layer_state": "the null space's Householder reflectors and the inverse of the r × r system, fp64",
                "state_bytes": sum(s.inverse.numel() * 8 + s.projector.reflectors.numel() * 8 for s in solvers),
                "nullspace_dims": [s.projector.rank for s in solvers],
                "key_dims": [s.projector.dimension for s in solvers],
                "edited_keys": [s.edited_keys for s in solvers],
            }
        write_json(args.out, output)
        print(f"{editor}: {len(requests)} sequential edits in {time.perf_counter() - started:.0f}s")
        # back to the unedited model for the next editor
        model = load_world_model(args.model, args.dtype)[0]
        if model.state_hash() != original:
            raise RuntimeError("reloading the model did not give the unedited weights")

    print(f"\nSequential edits on the fact world ({args.split} split, {len(requests)} edits)\n")
    for editor, data in output["editors"].items():
        print(f"### {editor}\n")
        keys = [k for k in data["curve"][0] if k != "edits"] if data["curve"] else []
        print("| edits | " + " | ".join(f"{k} {m}" for k in keys for m in METRICS) + " |")
        print("|---|" + "---|" * (len(keys) * len(METRICS)))
        for point in data["curve"]:
            print(f"| {point['edits']} | " + " | ".join(fmt(point[k].get(m)) for k in keys for m in METRICS) + " |")
        t = data["timing"]
        print(f"\nmedian {fmt(t['median'])} s/edit; edit 10: {fmt(t.get('edit_10'))} s, edit {len(requests)}: "
              f"{fmt(t.get(f'edit_{len(requests)}'))} s; mean of 20 around each: {fmt(t.get('window_10'))} vs "
              f"{fmt(t.get(f'window_{len(requests)}'))} s (ratio {fmt(t['late_over_early'], 2)})\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
