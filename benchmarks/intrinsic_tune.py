"""Choose the intrinsic editors' hyperparameters on the fact world's ``tune`` split.

    python benchmarks/intrinsic_tune.py --editors rome --edits 30 --out benchmarks/results/intrinsic_tune_rome.json
    python benchmarks/intrinsic_tune.py --editors alphaedit --sequential --edits 100 \\
        --grid '{"energy_fraction": [0.95, 0.99]}' --out benchmarks/results/intrinsic_tune_alphaedit_seq.json

Every point of a grid (the product of the listed option values, on top of the editor's entry in
``--configs``; an option inside a section is named with a dot: ``value.stop_nll``) is scored with single edits (default) or one sequential run (``--sequential``),
under the generation protocol. The best point has the highest reliability + generalization +
locality among the points whose reliability reaches ``--min-reliability`` and whose locality
reaches ``--min-locality`` (all points when none does).
``--write-configs`` stores each editor's best options back into ``--configs``.

The default world's ``test`` split is never used here. Its ``tune`` split has only 165 person
facts, too few for options meant for hundreds of sequential edits; those are chosen on a
*sibling* world (same preset, another seed: other people, so none of its facts is a test fact of
the default world), whose ``test`` split may be used::

    easyetcon world build --seed 1
    python benchmarks/intrinsic_tune.py --editors alphaedit --sequential --edits 500 --split test \
        --model ~/.cache/easyetcon/worlds/<seed-1 key> --min-reliability 0.8 --min-locality 0.9 \
        --grid '{"covariance_weight": [10, 100]}' --out benchmarks/results/tuning/sibling.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from intrinsic_common import (  # noqa: E402
    editor_name,
    environment,
    fmt,
    load_configs,
    merge_options,
    options_changed,
    load_world_model,
    parse_editors,
    parse_run_arguments,
    run_arguments,
    world_requests,
    write_json,
)
from intrinsic_single import single_edits  # noqa: E402

#: The grids searched by default, per editor (option -> values).
GRIDS = {
    "ft-l": {"layers": [[1], [2], [3]], "learning_rate": [1e-3, 5e-3]},
    "ft-m": {"layers": [[1], [2], [3]], "learning_rate": [1e-3, 5e-3]},
    "rome": {"layer": [0, 1, 2], "value.clamp_norm_factor": [4.0, 10.0]},
    "memit": {"layers": [[0, 1], [1, 2], [0, 1, 2]], "covariance_weight": [100.0, 1000.0, 10000.0]},
    "alphaedit": {"layers": [[0, 1], [1, 2], [0, 1, 2]], "energy_fraction": [0.9, 0.99]},
}
OBJECTIVE = ("reliability", "generalization", "locality")


def grid_points(grid: dict[str, list]) -> list[dict]:
    names = sorted(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]


def objective(summary: dict) -> float:
    row = next((v for k, v in summary.items() if k.startswith("generation@")), {})
    return sum(row.get(m) or 0.0 for m in OBJECTIVE)


def is_default_world(world) -> bool:
    """Whether ``world`` is the shipped default world (same preset and seed), whatever model knows it."""
    from easyetcon_world.shipped import DEFAULT_PRESET, DEFAULT_SEED

    config = getattr(world, "config", None)
    return getattr(config, "preset", None) == DEFAULT_PRESET and getattr(config, "seed", None) == DEFAULT_SEED


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--editors", default="ft-m,rome,memit,alphaedit")
    parser.add_argument("--edits", type=int, default=30)
    parser.add_argument("--edit-seed", type=int, default=0)
    parser.add_argument("--sequential", action="store_true", help="score one sequential run per point instead of single edits")
    parser.add_argument("--batch-size", type=int, default=1, help="with --sequential: requests per editor call (batch mode)")
    parser.add_argument("--min-reliability", type=float, default=0.0, help="prefer points whose generation reliability reaches this")
    parser.add_argument("--min-locality", type=float, default=0.0, help="prefer points whose generation locality reaches this")
    parser.add_argument("--split", default="tune", choices=("tune", "test"),
                        help="'test' only on a world other than the default one (a sibling seed)")
    parser.add_argument("--grid", default=None, help="JSON object option -> values, replacing the default grid")
    parser.add_argument("--configs", type=Path, default=None,
                        help="JSON: editor -> options (default: the file tuned for --model)")
    parser.add_argument("--write-configs", action="store_true", help="store the best options into --configs")
    run_arguments(parser)
    args = parse_run_arguments(parser, argv)
    editors = parse_editors(args.editors)
    configs = load_configs(args.configs, sequential=args.sequential)

    from easyetcon_eval import compute_baseline, run_lifelong

    from easyetcon.chain import EditChain
    from easyetcon.model import load_model

    model, world, folder = load_world_model(args.model)
    if args.split == "test" and is_default_world(world):
        raise SystemExit("--split test: this is the default world, whose test split is for reporting only; "
                         "tune on its 'tune' split or on a sibling world (easyetcon world build --seed 1)")
    requests = world_requests(world, args.split, args.edits, args.edit_seed)
    protocols = ("generation",)
    baseline = compute_baseline(model, requests, protocols=protocols)
    output = {"environment": environment(args), "model": folder, "split": args.split, "trials": {}, "best": {}}
    for editor in editors:
        grid = json.loads(args.grid) if args.grid else GRIDS[editor_name(editor)]
        trials = []
        for point in grid_points(grid):
            options = merge_options(configs.get(editor, {}), point)
            started = time.perf_counter()
            try:
                if args.sequential:
                    result = run_lifelong(model, EditChain([(editor_name(editor), options)]), requests, schedule="end",
                                          mode="batch" if args.batch_size > 1 else "sequential", batch_size=args.batch_size,
                                          protocols=protocols, baseline=baseline, progress=False)
                    summary = result.final
                    model = load_model(folder)  # the next point starts from the unedited model
                    model.torch_model.eval()
                else:
                    summary, _, _ = single_edits(model, requests, editor, options, baseline, protocols=protocols, log=lambda _: None)
                error = None
            except Exception as exc:  # a diverging setting is a result, not a crash
                summary, error = {}, f"{type(exc).__name__}: {exc}"
            trial = {"point": point, "options": options, "summary": summary, "objective": objective(summary),
                     "seconds": time.perf_counter() - started, "error": error}
            trials.append(trial)
            row = next((v for k, v in summary.items() if k.startswith("generation@")), {})
            print(f"{editor} {json.dumps(point)}: " + ", ".join(f"{m} {fmt(row.get(m))}" for m in OBJECTIVE)
                  + f" -> {trial['objective']:.3f} ({trial['seconds']:.0f}s){' ' + error if error else ''}", flush=True)
            output["trials"][editor] = trials
            write_json(args.out, output)
        def meets_floors(trial: dict) -> bool:
            row = next((v for k, v in trial["summary"].items() if k.startswith("generation@")), {})
            return (row.get("reliability") or 0.0) >= args.min_reliability and (
                row.get("locality") or 0.0) >= args.min_locality

        candidates = [t for t in trials if meets_floors(t)] or trials
        best = max(candidates, key=lambda t: (t["objective"], -t["seconds"]))
        output["best"][editor] = best
        configs[editor] = best["options"]
        write_json(args.out, output)
        print(f"best {editor}: {json.dumps(best['point'])} objective {best['objective']:.3f}\n", flush=True)
    if args.write_configs:
        stored = json.loads(args.configs.read_text(encoding="utf-8")) if args.configs.is_file() else {}
        for editor in editors:
            if args.sequential:  # only what differs from the single-edit options
                single = load_configs(args.configs)[editor]
                stored.setdefault("sequential_overrides", {})[editor] = options_changed(single, configs[editor])
            else:
                stored[editor] = configs[editor]
        stored["_tuned_with"] = stored.get("_tuned_with", {}) | {e: " ".join(sys.argv) for e in editors}
        args.configs.write_text(json.dumps(stored, indent=1) + "\n", encoding="utf-8")
        print(f"stored the best options in {args.configs}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
