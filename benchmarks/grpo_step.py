"""GRPO consolidation per step: easyetcon's ``grpo`` beside TRL's GRPOTrainer used directly.

Both sides run the same TRL ``GRPOConfig`` (:func:`easyetcon_consolidation.grpo.trainer_arguments`),
the same reward function, prompts and seed, train the same FFN weights (the MLP output
projections of every layer) of the same random 2-layer Llama (fp32, heads of 64 dimensions, the
tiny test tokenizer) at each ``--hidden`` width with MLP 4 × hidden. They differ only in where
the KL reference comes from:

* **easyetcon**: :func:`~easyetcon_consolidation.grpo.pre_step_reference`, a copy of the module
  tree in memory that shares the frozen weights and snapshots the trained ones;
* **TRL directly**: TRL's own mechanism, the reference loaded with ``from_pretrained`` from the
  policy's checkpoint. Because the policy changes with every edit, a consolidation stage using it
  must first save the edited model (``save_pretrained``, safetensors, to a temporary folder), then
  let TRL load it again: the save is timed apart.

Each application is timed at two step counts (``--steps``, default 1 and 3), interleaved (ours,
TRL, ours, ...), ``--repeat`` times, the FFN weights restored after each. The cost per step is the
slope between the two counts (medians), the fixed cost of an application the intercept.

Run (one thread, nothing else running)::

    OMP_NUM_THREADS=1 python benchmarks/grpo_step.py --out benchmarks/results/grpo_step.json
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics as stats
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent

#: Options of the ``grpo`` consolidator on both sides (steps set per run).
OPTIONS = {
    "group_size": 4, "prompts_per_step": 1, "max_completion_tokens": 8, "beta": 0.04,
    "question_template": "Question: {prompt}? Answer:", "weights": {"layers": [0, 1]},
}


def request() -> Any:
    from easyetcon.requests import EditRequest

    return EditRequest(prompt="The Eiffel Tower is located in", subject="The Eiffel Tower", target_new="Rome", case_id="grpo-step")


def ours(model: Any, steps: int) -> dict[str, float]:
    from easyetcon.plugins import get_host

    consolidator = get_host().registry.editor("grpo").create({**OPTIONS, "steps": steps})
    started = time.perf_counter()
    consolidator.edit(model, [request()])
    return {"seconds": time.perf_counter() - started}


def trl_directly(model: Any, steps: int) -> dict[str, float]:
    """What a consolidation stage on TRL alone does per application: save, then train."""
    from datasets import Dataset
    from easyetcon_consolidation.common import ffn_weight_names
    from easyetcon_consolidation.grpo import GRPOConsolidationConfig, trainer_arguments
    from transformers import PrinterCallback
    from trl import GRPOTrainer

    from easyetcon.plugins import get_host

    config = GRPOConsolidationConfig(**{**OPTIONS, "steps": steps})
    consolidator = get_host().registry.editor("grpo").create(config.model_dump())
    rows = consolidator._rows([request()])
    edit = request()

    def reward(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
        return consolidator.reward(completions, [edit] * len(completions))

    net, tokenizer = model.torch_model, model.tokenizer
    trained = set(ffn_weight_names(model, config.weights))
    saved_forward = net.__dict__.get("forward")
    saved_name, saved_generation = net.config._name_or_path, net.generation_config.to_dict()
    flags = {name: p.requires_grad for name, p in net.named_parameters()}
    with tempfile.TemporaryDirectory(prefix="grpo-step-") as folder:
        started = time.perf_counter()
        net.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        saved = time.perf_counter() - started
        net.config._name_or_path = folder  # TRL loads its KL reference from here
        for name, parameter in net.named_parameters():
            parameter.requires_grad_(name in trained)
        try:
            trainer = GRPOTrainer(
                model=net, reward_funcs=[reward], args=trainer_arguments(config, folder + "/out", use_cpu=True),
                train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
            )
            trainer.remove_callback(PrinterCallback)
            trainer.train()
        finally:
            for name, parameter in net.named_parameters():
                parameter.requires_grad_(flags[name])
            net.config._name_or_path = saved_name
            net.generation_config = type(net.generation_config).from_dict(saved_generation)
            if saved_forward is None:  # TRL wraps the policy's forward; undo it as easyetcon does
                net.__dict__.pop("forward", None)
            else:
                net.forward = saved_forward
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "save_seconds": saved}


def width(hidden: int, steps: list[int], repeat: int) -> dict[str, Any]:
    from easyedit_side import random_llama

    from easyetcon.model import EditableModel
    from easyetcon.plugins import get_host
    from easyetcon.testing.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    model = EditableModel(random_llama(hidden, 4 * hidden, tokenizer), tokenizer, registry=get_host().registry)
    from easyetcon_consolidation.common import ffn_weight_names
    from easyetcon_consolidation.grpo import GRPOConsolidationConfig

    names = ffn_weight_names(model, GRPOConsolidationConfig(**OPTIONS).weights)
    original = {name: model.parameter(name).detach().clone() for name in names}
    runs: dict[str, dict[int, list[dict[str, float]]]] = {"easyetcon": {}, "trl": {}}

    def apply(side: str, count: int) -> dict[str, float]:
        outcome = (ours if side == "easyetcon" else trl_directly)(model, count)
        with torch.no_grad():
            for name, value in original.items():
                model.parameter(name).copy_(value)
        return outcome

    for side in runs:  # warm-up: first-use costs (imports, TRL's setup) are not an application's
        apply(side, steps[0])
    for _ in range(repeat):
        for count in steps:
            for side in runs:
                runs[side].setdefault(count, []).append(apply(side, count))
    result: dict[str, Any] = {"hidden": hidden, "intermediate": 4 * hidden, "steps": steps,
                              "parameters": sum(p.numel() for p in model.torch_model.parameters()), "sides": {}}
    low, high = steps
    for side, by_count in runs.items():
        medians = {count: stats.median(r["seconds"] for r in rows) for count, rows in by_count.items()}
        per_step = (medians[high] - medians[low]) / (high - low)
        entry = {"seconds": {str(c): [r["seconds"] for r in rows] for c, rows in by_count.items()},
                 "per_step": per_step, "fixed": medians[low] - low * per_step}
        if side == "trl":
            entry["save_seconds"] = stats.median(r["save_seconds"] for rows in by_count.values() for r in rows)
        result["sides"][side] = entry
    return result


def report(results: dict[str, Any]) -> str:
    lines = ["| hidden / MLP | parameters | s per step: easyetcon | TRL directly | ratio | fixed s per application: easyetcon | TRL directly (of which saving) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for row in results["widths"]:
        ours_, theirs = row["sides"]["easyetcon"], row["sides"]["trl"]
        lines.append(
            f"| {row['hidden']} / {row['intermediate']} | {row['parameters'] / 1e6:.0f} M | {ours_['per_step']:.2f} | "
            f"{theirs['per_step']:.2f} | {ours_['per_step'] / theirs['per_step']:.2f} | {ours_['fixed']:.2f} | "
            f"{theirs['fixed']:.2f} ({theirs['save_seconds']:.2f}) |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--steps", type=int, nargs=2, default=[1, 3], metavar=("LOW", "HIGH"))
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--report", type=Path, help="print the table of a results file and stop")
    args = parser.parse_args()
    if args.report:
        print(report(json.loads(args.report.read_text())))
        return
    if args.steps[0] >= args.steps[1]:
        parser.error("--steps LOW HIGH needs LOW < HIGH")
    sys.path.insert(0, str(HERE))
    warnings.simplefilter("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    results = {"command": " ".join(sys.argv[1:]), "threads": torch.get_num_threads(), "options": OPTIONS, "widths": []}
    for hidden in args.hidden:
        results["widths"].append(width(hidden, args.steps, args.repeat))
        print(report(results), flush=True)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
