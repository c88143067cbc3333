"""Evaluation speed: batched, left-padded generation vs one prompt at a time.

    python benchmarks/eval_speed.py [--model DIR] [--requests 40] [--batch-size 32] [--out speed.json]

Uses the shipped fact-world model (``plugins/easyetcon_world/assets/default``) when it exists;
otherwise an *untrained* Llama of the same shape (hidden 192, 4 layers, vocabulary 2048) on the
same world's prompts, and says so. An untrained model never ends its answers early, so every row
decodes to the length cap: the ratio measured that way is an estimate of the trained model's.

It times (1) raw greedy decoding of every evaluation prompt (edit prompts, rephrases, locality
and portability probes) and (2) the whole ``generation`` protocol of ``evaluate_edits``, each
batched and with ``batch_size=1``, checks that batched and one-at-a-time decoding give the same
text, and reports the speed-up (target: at least 5x).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from easyetcon.model import EditableModel, load_model
from easyetcon_eval import evaluate_edits, greedy_continuations


def world_requests(n: int):
    from easyetcon_world.edits import make_edit_requests
    from easyetcon_world.world import build_world

    return make_edit_requests(build_world("default", 0), "test", n, 0)


def untrained_world_shaped_model() -> EditableModel:
    """A random Llama shaped like the shipped world model, with a tokenizer trained on the world."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from easyetcon_world.corpus import CorpusConfig, world_documents
    from easyetcon_world.tokenizer import train_tokenizer
    from easyetcon_world.world import build_world

    tokenizer = train_tokenizer(world_documents(build_world("default", 0), 0, CorpusConfig()), 2048)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=192, intermediate_size=512, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return EditableModel(LlamaForCausalLM(config).eval(), tokenizer, source="untrained world-shaped Llama")


def timed(function, *args, **kwargs):
    started = time.perf_counter()
    value = function(*args, **kwargs)
    return value, time.perf_counter() - started


def fastest_of(repeat: int, *calls):
    """Run the calls interleaved ``repeat`` times; per call, its last value and its fastest time
    (on a shared machine the minimum is the least disturbed measurement)."""
    values, best = [None] * len(calls), [float("inf")] * len(calls)
    for _ in range(repeat):
        for i, (function, args, kwargs) in enumerate(calls):
            values[i], seconds = timed(function, *args, **kwargs)
            best[i] = min(best[i], seconds)
    return values, best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (default: the shipped world model if present)")
    parser.add_argument("--requests", type=int, default=40, help="fact-world edit requests whose prompts are evaluated")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (use 1 on a busy machine)")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved repetitions; the fastest counts")
    parser.add_argument("--out", type=Path, help="write the numbers as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from easyetcon_world.shipped import default_model_path, has_default_model

    if args.model:
        model, which = load_model(args.model), args.model
    elif has_default_model():
        model, which = load_model(default_model_path()), f"fact-world model ({default_model_path()})"
    else:
        model = untrained_world_shaped_model()
        which = "UNTRAINED world-shaped Llama (the shipped world model is not built yet; ratio is an estimate)"
    requests = world_requests(args.requests)
    prompts = list(dict.fromkeys(
        p for r in requests for p in (r.prompt, *r.rephrase_prompts, *(x.prompt for x in (*r.locality, *r.portability)))
    ))
    print(f"model: {which}")
    print(f"{len(prompts)} distinct prompts from {len(requests)} fact-world requests; torch threads {torch.get_num_threads()}")

    options = {"max_new_tokens": args.max_new_tokens}
    greedy_continuations(model, prompts[:4], batch_size=4, **options)  # warm-up
    (batched, alone), (batched_s, alone_s) = fastest_of(
        args.repeat,
        (greedy_continuations, (model, prompts), {"batch_size": args.batch_size, **options}),
        (greedy_continuations, (model, prompts), {"batch_size": 1, **options}),
    )
    identical = sum(a == b for a, b in zip(batched, alone))

    protocol = {"protocols": ("generation",), "max_new_tokens": args.max_new_tokens}
    (scored_batched, scored_alone), (eval_batched_s, eval_alone_s) = fastest_of(
        args.repeat,
        (evaluate_edits, (model, requests), {"batch_size": args.batch_size, **protocol}),
        (evaluate_edits, (model, requests), {"batch_size": 1, **protocol}),
    )
    same_scores = scored_batched.summary() == scored_alone.summary()

    rows = [
        ("greedy decoding", batched_s, alone_s),
        ("evaluate_edits(generation)", eval_batched_s, eval_alone_s),
    ]
    print(f"\n| what | batched (bs={args.batch_size}) s | one at a time s | speed-up |")
    print("|---|---|---|---|")
    for name, fast, slow in rows:
        print(f"| {name} | {fast:.2f} | {slow:.2f} | {slow / fast:.1f}x |")
    print(f"\nbatched == one-at-a-time text for {identical}/{len(prompts)} prompts; same protocol scores: {same_scores}")
    print(f"(fastest of {args.repeat} interleaved runs each)")
    ratio = eval_alone_s / eval_batched_s
    print(f"speed-up of the generation protocol: {ratio:.1f}x (target >= 5x: {'met' if ratio >= 5 else 'NOT met'})")
    if args.out:
        args.out.write_text(json.dumps({
            "model": which, "prompts": len(prompts), "requests": len(requests), "batch_size": args.batch_size,
            "max_new_tokens": args.max_new_tokens, "torch_threads": torch.get_num_threads(),
            "machine": platform.platform(), "python": sys.version.split()[0], "torch": torch.__version__,
            "greedy_batched_s": batched_s, "greedy_one_at_a_time_s": alone_s,
            "evaluate_batched_s": eval_batched_s, "evaluate_one_at_a_time_s": eval_alone_s,
            "speedup_greedy": alone_s / batched_s, "speedup_evaluate": ratio,
            "identical_outputs": identical, "same_scores": same_scores, "repeat": args.repeat,
        }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
