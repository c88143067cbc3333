"""What a world model knows before any edit, against the floors its recipe is built to reach.

    python benchmarks/fact_world_knowledge.py              # every fact of the shipped default
    python benchmarks/fact_world_knowledge.py --sample 200 # a random 200 facts (faster)
    python benchmarks/fact_world_knowledge.py --model wide # the wider shipped model
    python benchmarks/fact_world_knowledge.py --model DIR  # another world model directory (a
                                                           # sibling seed, a dataset world)
    python benchmarks/fact_world_knowledge.py --model A --model B --json out.json  # several
    python benchmarks/fact_world_knowledge.py --threads 1  # on a busy machine

Prints one row per headline measure (protocol ``easyetcon-world-knowledge/2``, see
``easyetcon_world.knowledge``) with its floor, including the in-context floors (a stated fact is
used, a fact about another subject is ignored), and exits non-zero if any model misses a floor.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from easyetcon_world import load_pretrained, measure_knowledge
from easyetcon_world.knowledge import below_floors, floors_of, headline


def describe(world) -> str:
    if hasattr(world, "config"):
        return f"world: preset {world.config.preset} seed {world.config.seed}"
    return f"world: from {world.source} ({len(world.requests)} records)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Knowledge of world models before editing.")
    parser.add_argument(
        "--model", action="append", default=None,
        help="a shipped model's name (default, wide) or a world model directory; repeatable [default: default]",
    )
    parser.add_argument("--sample", type=int, default=None, help="score this many random facts only")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample")
    parser.add_argument("--json", default=None, help="also write every measurement to this file")
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch CPU threads; 1 is much faster on a machine other jobs are using",
    )
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    results, missed_any = {}, False
    for name in args.model or [None]:
        model, tokenizer, world = load_pretrained(name)
        started = time.perf_counter()
        numbers = measure_knowledge(model, tokenizer, world, sample=args.sample, seed=args.seed)
        seconds = time.perf_counter() - started
        floors, missed = floors_of(numbers), below_floors(numbers)
        missed_any |= bool(missed)
        print(f"\nmodel: {name or 'shipped default'}   {describe(world)}   protocol: {numbers['protocol']}   ({seconds:.0f} s)")
        print(f"{'measure':34s} {'accuracy':>8s} {'floor':>6s}")
        for measure, value in headline(numbers).items():
            floor = floors.get(measure)
            shown = "-" if value is None else f"{value:.3f}"
            flag = "  BELOW FLOOR" if measure in missed else ""
            print(f"{measure:34s} {shown:>8s} {'' if floor is None else f'{floor:.2f}':>6s}{flag}")
        results[name or "default"] = {"headline": headline(numbers), "below_floors": missed, "numbers": numbers}
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"command": "python benchmarks/fact_world_knowledge.py " + " ".join(argv or sys.argv[1:]), "models": results}, handle, indent=1)
    return 1 if missed_any else 0


if __name__ == "__main__":
    sys.exit(main())
