"""Does an edit made on a float16 or bfloat16 model hold up as it does in float32?

    python benchmarks/half_precision.py --model wide --edits 50 --out benchmarks/results/half_precision_wide.json
    python benchmarks/half_precision.py --model default --configs benchmarks/half_precision_configs_default.json \
        --editors grace,lora-merge,tpsft --edits 50 --out benchmarks/results/half_precision_default.json

For each dtype the shipped world model is loaded in that dtype, its unedited outputs are the
baseline (locality is agreement with the same model, unedited, in the same dtype), and every
editor edits the same test requests one at a time (edited, scored, undone), with the options
tuned for that model in fp32 (``intrinsic_configs*.json``; nothing is tuned per dtype). Reports
each editor's generation-protocol reliability, generalization and locality per dtype, and the
paired difference to fp32 over the same requests with its standard error.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from intrinsic_common import (  # noqa: E402
    common_arguments,
    editor_name,
    environment,
    fmt,
    load_configs,
    load_world_model,
    parse_editors,
    parse_run_arguments,
    world_requests,
    write_json,
)
from intrinsic_single import single_edits  # noqa: E402

DTYPES = ("float32", "bfloat16", "float16")
PROTOCOL = "generation"
SCORED = ("reliability", "generalization", "locality")


def paired_difference(half: list[dict], full: list[dict], key: str, metric: str) -> tuple[float | None, float | None]:
    """Mean and standard error of ``half - full`` over the requests both scored."""
    pairs = [(h[key][metric], f[key][metric]) for h, f in zip(half, full)
             if h[key].get(metric) is not None and f[key].get(metric) is not None]
    if len(pairs) < 2:
        return None, None
    differences = [h - f for h, f in pairs]
    average = sum(differences) / len(differences)
    spread = sum((d - average) ** 2 for d in differences) / (len(differences) - 1)
    return average, math.sqrt(spread / len(differences))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_arguments(parser, edits=50)
    parser.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated dtypes; the first is the reference")
    args = parse_run_arguments(parser, argv)
    if args.dtype != "float32":
        parser.error("--dtype: this benchmark loads the model in each of --dtypes")
    from easyetcon_eval import compute_baseline

    editors = parse_editors(args.editors, family=None)
    configs = load_configs(args.configs)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    output = {"environment": environment(args), "dtypes": dtypes, "configs": {e: configs.get(e, {}) for e in editors}, "runs": {}}
    per_request: dict[str, dict[str, list[dict]]] = {}
    for dtype in dtypes:
        model, world, folder = load_world_model(args.model, dtype)
        requests = world_requests(world, args.split, args.edits, args.edit_seed)
        baseline = compute_baseline(model, requests, protocols=(PROTOCOL,))
        output["model"] = folder
        for editor in editors:
            started = time.perf_counter()
            summary, scores, seconds = single_edits(
                model, requests, editor, configs.get(editor, {}), baseline, protocols=(PROTOCOL,), log=lambda *_: None,
            )
            per_request.setdefault(editor, {})[dtype] = scores
            output["runs"].setdefault(editor, {})[dtype] = {
                "summary": summary, "seconds_per_edit": sum(seconds) / len(seconds), "per_request": scores,
            }
            key = next(iter(summary))
            print(f"{editor} {dtype}: " + ", ".join(f"{m} {fmt(summary[key][m])}" for m in SCORED)
                  + f" ({time.perf_counter() - started:.0f}s)", flush=True)
            write_json(args.out, output)

    reference = dtypes[0]
    print(f"\nSingle edits, {args.edits} {args.split} requests of {output['model']}, generation protocol; "
          f"difference to {reference}: mean ± standard error over the same requests\n")
    print("| editor | dtype | " + " | ".join(SCORED) + " |")
    print("|---|---|" + "---|" * len(SCORED))
    for editor in editors:
        for dtype in dtypes:
            run = output["runs"][editor][dtype]
            key = next(iter(run["summary"]))
            cells = []
            for metric in SCORED:
                cell = fmt(run["summary"][key][metric])
                if dtype != reference:
                    average, error = paired_difference(per_request[editor][dtype], per_request[editor][reference], key, metric)
                    run.setdefault("difference", {})[metric] = {"mean": average, "standard_error": error}
                    if average is not None:
                        cell += f" ({average:+.3f} ± {error:.3f})"
                cells.append(cell)
            print(f"| {editor_name(editor)} | {dtype} | " + " | ".join(cells) + " |")
    write_json(args.out, output)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
