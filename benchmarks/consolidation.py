"""Consolidation benchmark (issue 7): EtCon and its hybrids against plain editors on the fact world.

Every chain is applied to the same sequence of counterfactual edits from the default fact
world's test split, one edit at a time, and evaluated at the end with the generation protocol
(and teacher forcing, for contrast). Seconds per stage come from the ``easyetcon_after_step``
lifecycle hook.

    python benchmarks/consolidation.py --edits 200 --out benchmarks/results/consolidation.json
    python benchmarks/consolidation.py --edits 20 --chains ft-m,ft-m+grpo     # a quick look
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path

from easyetcon import EditChain, EditableModel, get_host, hookimpl

# Intrinsic editors use the options tuned for the shipped world model (benchmarks/intrinsic_tune.py).
TUNED = {k: v for k, v in json.loads((Path(__file__).parent / "intrinsic_configs.json").read_text()).items()
         if not k.startswith("_")}
FFN = {"layers": [1, 2], "modules": "mlp_out"}
GRPO = {"editor": "grpo", "group_size": 4, "prompts_per_step": 2, "steps": 8, "learning_rate": 1e-3,
        "beta": 0.04, "max_completion_tokens": 16, "weights": FFN}
TPSFT = {"editor": "tpsft", "rounds": 20, "steps_per_round": 2, "learning_rate": 5e-3, "epsilon": 0.2, "weights": FFN}


def editor(name: str) -> dict:
    return {"editor": name, **TUNED.get(name, {})}


CHAINS: dict[str, list[dict]] = {
    "ft-m": [editor("ft-m")],
    "ft-m+grpo": [editor("ft-m"), GRPO],
    "rome": [editor("rome")],
    "rome+grpo": [editor("rome"), GRPO],
    "alphaedit": [editor("alphaedit")],
    "alphaedit+grpo": [editor("alphaedit"), GRPO],
    "tpsft": [TPSFT],
    "etcon": [TPSFT, GRPO],
}


class StageTimer:
    """A lifecycle-hook plugin: wall-clock seconds of every chain step, by step name."""

    def __init__(self) -> None:
        self.seconds: dict[str, list[float]] = defaultdict(list)

    @hookimpl
    def easyetcon_after_step(self, step, record, seconds):
        self.seconds[step.name].append(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edits", type=int, default=200)
    parser.add_argument("--chains", default=",".join(CHAINS), help=f"comma-separated, from: {', '.join(CHAINS)}")
    parser.add_argument("--split", default="test", choices=["tune", "test"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/consolidation.json"))
    args = parser.parse_args()

    from easyetcon_eval import run_lifelong
    from easyetcon_world import load_pretrained, make_edit_requests

    host = get_host()
    timer = StageTimer()
    host.register(timer, name="stage-timer")
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    for name in args.chains.split(","):
        if name not in CHAINS:
            parser.error(f"unknown chain {name!r}; choose from {', '.join(CHAINS)}")
        torch_model, tokenizer, world = load_pretrained()
        model = EditableModel(torch_model, tokenizer, registry=host.registry)
        requests = make_edit_requests(world, args.split, n=args.edits, seed=args.seed)
        timer.seconds.clear()
        started = time.perf_counter()
        run = run_lifelong(
            model, EditChain(CHAINS[name], host=host), requests, schedule="end",
            protocols=("generation", "teacher-forced"), progress=True, report=False,
        )
        results[name] = {
            "chain": CHAINS[name],
            "edits": len(requests),
            "final": run.final,
            "seconds_per_edit": {step: statistics.mean(s) for step, s in timer.seconds.items()},
            "wall_seconds": time.perf_counter() - started,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
        print(table(results))


def table(results: dict) -> str:
    lines = [
        "| chain | edits | reliability | generalization | locality | portability | TF reliability | s/edit by stage |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in results.items():
        generation = next(v for k, v in entry["final"].items() if k.startswith("generation@"))
        forced = next(v for k, v in entry["final"].items() if k.startswith("teacher-forced@"))
        stages = ", ".join(f"{step} {s:.2f}" for step, s in entry["seconds_per_edit"].items())
        cells = [generation.get(k) for k in ("reliability", "generalization", "locality", "portability")]
        lines.append(
            f"| {name} | {entry['edits']} | " + " | ".join("–" if c is None else f"{c:.3f}" for c in cells)
            + f" | {forced.get('reliability', float('nan')):.3f} | {stages} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
