"""What the shipped fact-world model knows before any edit.

    python benchmarks/fact_world_knowledge.py              # every fact of the shipped default
    python benchmarks/fact_world_knowledge.py --sample 200 # a random 200 facts (faster)
    python benchmarks/fact_world_knowledge.py --model wide # the wider shipped model
    python benchmarks/fact_world_knowledge.py --model DIR  # another world model directory
    python benchmarks/fact_world_knowledge.py --threads 1  # on a busy machine

Prints one row per measure (protocol ``easyetcon-world-knowledge/1``, see
``easyetcon_world.knowledge``) with the floor the shipped model is built to reach, and exits
non-zero if a floor is missed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from easyetcon_world import load_pretrained, measure_knowledge
from easyetcon_world.knowledge import FLOORS, measure_in_context


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Knowledge of a fact-world model before editing.")
    parser.add_argument(
        "--model", default=None, help="a shipped model's name (default, wide) or a world model directory [default: default]"
    )
    parser.add_argument(
        "--sample", type=int, default=None, help="score this many random facts only"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads; 1 is much faster on a machine other jobs are using",
    )
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    model, tokenizer, world = load_pretrained(args.model)
    started = time.perf_counter()
    numbers = measure_knowledge(model, tokenizer, world, sample=args.sample, seed=args.seed)
    in_context = measure_in_context(model, tokenizer, world, sample=args.sample, seed=args.seed)
    seconds = time.perf_counter() - started

    rows = [
        (
            "pretraining phrasings, greedy",
            numbers["train_phrasings"]["greedy"],
            numbers["train_phrasings"]["n"],
            "train_phrasings_greedy",
        ),
        (
            "pretraining phrasings, teacher-forced",
            numbers["train_phrasings"]["teacher_forced"],
            numbers["train_phrasings"]["n"],
            None,
        ),
        (
            "held-out phrasings, greedy",
            numbers["heldout_phrasings"]["greedy"],
            numbers["heldout_phrasings"]["n"],
            "heldout_phrasings_greedy",
        ),
        (
            "held-out phrasings, teacher-forced",
            numbers["heldout_phrasings"]["teacher_forced"],
            numbers["heldout_phrasings"]["n"],
            None,
        ),
        ("question-answer form, greedy", numbers["qa"]["exact_match"], numbers["qa"]["n"], "qa"),
        (
            "question-answer, held-out questions",
            numbers["qa_heldout"]["exact_match"],
            numbers["qa_heldout"]["n"],
            None,
        ),
        (
            "multi-hop reasoning form (unseen)",
            numbers["multi_hop_reasoning"]["exact_match"],
            numbers["multi_hop_reasoning"]["n"],
            "multi_hop_reasoning",
        ),
        (
            "multi-hop reasoning form (seen)",
            numbers["multi_hop_reasoning_seen"]["exact_match"],
            numbers["multi_hop_reasoning_seen"]["n"],
            None,
        ),
        (
            "multi-hop plain prompt (unseen), greedy",
            numbers["multi_hop_plain"]["greedy"],
            numbers["multi_hop_plain"]["n"],
            None,
        ),
        ("fact stated in front, same phrasing", in_context["override"], in_context["n"], None),
        ("fact stated in front, held-out phrasing", in_context["override_heldout"], in_context["n"], None),
        ("fact about another subject stated, ignored", in_context["ignored"], in_context["n"], None),
    ]
    print(
        f"model: {args.model or 'shipped default'}   world: {world.config.preset} seed {world.config.seed}   "
        f"protocol: {numbers['protocol']}   ({seconds:.0f} s)"
    )
    print(f"{'measure':42s} {'accuracy':>8s} {'floor':>6s} {'n':>6s}")
    missed = []
    for label, value, n, floor_key in rows:
        floor = FLOORS.get(floor_key) if floor_key else None
        flag = ""
        if floor is not None and value < floor:
            flag = "  BELOW FLOOR"
            missed.append(label)
        print(
            f"{label:42s} {value:8.3f} {'' if floor is None else f'{floor:.2f}':>6s} {n:6d}{flag}"
        )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
