"""Throughput of key-statistics collection against a plain forward pass over the same text.

    python benchmarks/intrinsic_stats_speed.py --texts 2000 --out benchmarks/results/intrinsic_stats_speed.json

Both tokenise and run the same batches of the fact world's corpus: the plain pass runs the
whole model (logits included) under ``torch.no_grad``; the statistics
pass is :func:`easyetcon.statistics.collect_second_moments`, which accumulates
``k kᵀ`` at the requested layers and stops the forward pass after the deepest one. Reported:
tokens per second of each and their ratio (target: statistics at most 1.3× slower), for the
editors' layers and for the last layer (the worst case: the whole network runs).
Repeats are interleaved and the best of each is kept, to damp a shared machine's noise.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from intrinsic_common import (  # noqa: E402
    environment,
    fmt,
    load_world_model,
    parse_run_arguments,
    run_arguments,
    write_json,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=2000, help="corpus documents")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layers", default=None, help="comma-separated layer sets separated by ';' (default: editors' and last)")
    run_arguments(parser)
    args = parse_run_arguments(parser, argv)

    from easyetcon.statistics import StatisticsConfig, collect_second_moments, resolve_texts

    model, _, folder = load_world_model(args.model)
    texts, corpus = resolve_texts(model, StatisticsConfig(source="world"))
    texts = [t for _, t in zip(range(args.texts), texts)]
    tokenizer, torch_model = model.tokenizer, model.torch_model

    def encode(chunk: list[str]) -> dict:
        return tokenizer(chunk, truncation=True, max_length=args.max_length, padding=True, return_tensors="pt")

    chunks = [texts[i : i + args.batch_size] for i in range(0, len(texts), args.batch_size)]
    tokens = sum(int(encode(chunk)["attention_mask"].sum()) for chunk in chunks)
    depth = model.adapter.num_layers(torch_model)
    layer_sets = (
        [[int(x) for x in part.split(",")] for part in args.layers.split(";")]
        if args.layers else [[1], [0, 1], [depth - 1]]
    )

    def plain() -> float:
        started = time.perf_counter()
        with torch.no_grad():
            for chunk in chunks:
                batch = encode(chunk)
                torch_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        return time.perf_counter() - started

    def statistics_pass(layers: list[int]) -> float:
        started = time.perf_counter()
        collect_second_moments(model, layers, texts, samples=len(texts), max_length=args.max_length,
                               batch_size=args.batch_size, progress=False)
        return time.perf_counter() - started

    plain_times, stat_times = [], {str(s): [] for s in layer_sets}
    for _ in range(args.repeats):
        plain_times.append(plain())
        for layers in layer_sets:
            stat_times[str(layers)].append(statistics_pass(layers))
    plain_seconds = min(plain_times)
    rows = []
    for layers in layer_sets:
        seconds = min(stat_times[str(layers)])
        rows.append({
            "layers": layers, "seconds": seconds, "tokens_per_second": tokens / seconds,
            "slowdown_vs_plain": seconds / plain_seconds, "all_seconds": stat_times[str(layers)],
        })
    output = {
        "environment": environment(args), "model": folder, "corpus": corpus, "texts": len(texts), "tokens": tokens,
        "plain_forward": {"seconds": plain_seconds, "tokens_per_second": tokens / plain_seconds, "all_seconds": plain_times},
        "statistics": rows,
    }
    write_json(args.out, output)
    print(f"\nKey statistics vs plain forward ({len(texts)} texts, {tokens} tokens, best of {args.repeats})\n")
    print("| pass | layers | tokens/s | × plain time |\n|---|---|---|---|")
    print(f"| plain forward | all + logits | {tokens / plain_seconds:,.0f} | 1.00 |")
    for row in rows:
        print(f"| statistics | {row['layers']} | {row['tokens_per_second']:,.0f} | {fmt(row['slowdown_vs_plain'], 2)} |")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
