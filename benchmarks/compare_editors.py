"""The comparison table: every registered editor (and any extra chains) on fact-world edits.

    python benchmarks/compare_editors.py --n 50 --out runs/compare [--editor rome --editor ft-m]
                                         [--chain my-etcon.yaml ...] [--batch-size 1]

For each registered editor except consolidators (which need an edit before them; pass chains
such as ``ft-m -> tpsft`` with ``--chain``), a one-step chain with the editor's **default
options** is applied to ``--n`` fact-world test requests on a freshly loaded world model, in
sequential mode. The edits are scored with both protocols: reliability, generalization,
locality (agreement with the unedited model and vs. truth), portability, and fluency. Each run
goes to ``OUT/<name>/`` (results.json, results.md, retention.png), and the table goes to
``OUT/comparison.md``, ``OUT/comparison.png`` and ``OUT/comparison.json``. An editor that fails
is reported with its error and the others go on.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

from easyetcon.chain import EditChain
from easyetcon.model import load_model
from easyetcon.plugins import get_host
from easyetcon.registry import Family
from easyetcon.spec import load_chain_spec
from easyetcon_eval import compare_runs, compute_baseline, run_lifelong

COLUMNS = ("reliability", "generalization", "locality", "locality_vs_truth", "portability")


def fact_world(n: int, model_path: str | None):
    from easyetcon_world.edits import make_edit_requests
    from easyetcon_world.shipped import WorldCacheError, load_world, world_model_folder

    try:
        model_path = str(world_model_folder(model_path))
    except WorldCacheError as error:
        sys.exit(f"{error}; or pass --model DIR (a world model folder)")
    world = load_world(model_path)
    return model_path, make_edit_requests(world, "test", n, 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a shipped world model's name (default, wide) or a world model folder (default: default)")
    parser.add_argument("--n", type=int, default=50, help="fact-world test requests")
    parser.add_argument("--editor", action="append", default=[], help="only these editors (repeatable)")
    parser.add_argument("--chain", action="append", default=[], type=Path, help="extra chain spec to compare (repeatable)")
    parser.add_argument("--batch-size", type=int, default=1, help="requests per chain application")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--out", type=Path, required=True, help="folder for the runs and the table")
    args = parser.parse_args(argv)

    model_path, requests = fact_world(args.n, args.model)
    registry = get_host().registry
    chains: list[tuple[str, EditChain]] = []
    for info in registry.editors():
        if info.family is Family.CONSOLIDATION or (args.editor and info.name not in args.editor):
            continue
        chains.append((info.name, EditChain([info.name])))
    for spec_path in args.chain:
        chains.append((spec_path.stem, load_chain_spec(spec_path)[1]))
    if not chains:
        sys.exit("no editors to compare: none registered (or none matched --editor)")

    args.out.mkdir(parents=True, exist_ok=True)
    protocols = ("teacher-forced", "generation")
    baseline = compute_baseline(load_model(model_path), requests, protocols=protocols, cache_dir=args.out,
                                max_new_tokens=args.max_new_tokens, progress=True)
    rows, failures, run_dirs = [], {}, []
    for name, chain in chains:
        print(f"== {name}: {chain!r}", flush=True)
        started = time.perf_counter()
        try:
            result = run_lifelong(
                load_model(model_path), chain, requests, schedule="end", protocols=protocols, mode="sequential",
                batch_size=args.batch_size, out_dir=args.out / name, baseline=baseline, fluency=True,
                max_new_tokens=args.max_new_tokens, progress=True,
            )
        except Exception as error:  # one broken editor must not hide the others
            failures[name] = f"{type(error).__name__}: {error}"
            traceback.print_exc()
            continue
        run_dirs.append(args.out / name)
        seconds = sum(result.seconds_per_edit) / len(requests)
        for key, row in result.final.items():
            if isinstance(row, dict) and "reliability" in row:
                rows.append({"chain": name, "protocol": key, **{c: row.get(c) for c in COLUMNS},
                             "fluency": (result.final.get("free-generation@1") or {}).get("fluency"),
                             "seconds_per_request": seconds, "wall_seconds": time.perf_counter() - started})

    def cell(value):
        return "–" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)

    header = ["chain", "protocol", *COLUMNS, "fluency", "seconds_per_request"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(r[h]) for h in header) + " |" for r in rows]
    print(f"\nfact world, {len(requests)} test edits, model {model_path}; unedited: {json.dumps(baseline.summary)[:200]}...")
    print("\n".join(lines))
    for name, error in failures.items():
        print(f"FAILED {name}: {error}")
    (args.out / "comparison.json").write_text(json.dumps(
        {"model": model_path, "requests": len(requests), "baseline": baseline.summary, "rows": rows, "failures": failures},
        indent=2))
    if run_dirs:
        png, md = compare_runs(run_dirs, args.out)
        print(f"wrote {md}, {png} and {args.out / 'comparison.json'}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
