"""AnyEdit against its base editor on long-form targets of the fact world: single edits.

    python benchmarks/anyedit_fact_world.py --threads 1 --out benchmarks/results/anyedit_fact_world.json

Each request's target is the new object and two sentences the world states about it
(``make_edit_requests(..., long_form=2)``: ``"Lakriwick. Lakriwick is a city in Trunand. The
official language of Trunand is Pusian."``, 17 to 21 tokens). For each editor and request, the
unedited model is edited, scored, and the edit undone:

* ``exact``: the greedy continuation of the prompt reproduces the whole target;
* ``token_share``: the share of the target's tokens the greedy continuation has at their place;
* ``rouge_l``: the longest common word subsequence of continuation and target over the target's words (ROUGE-L recall);
* ``object``: the continuation starts with the new object (the short edit's reliability);
* ``locality``: the share of the request's locality probes whose greedy continuation (4 tokens)
  is the unedited model's.

The base editor (``--base``, MEMIT by default) edits the whole target at once, as one value at
the prompt's last token; AnyEdit edits it chunk by chunk with the same base. Both start from the
base's options in ``intrinsic_configs.json`` (tuned for one-word targets) and are tuned on the
tune split (``--tune`` requests; by mean exact match, then token share): the base over its
layer (3, the shipped one, or 2) and its key prefixes (5, the shipped ones, or 0); AnyEdit over
its chunking (one word per chunk, or one sentence) and the same layers, its keys read in the bare
context (its default, ``key.prefixes: 0``). The chosen options then run on ``--edits`` test requests.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from intrinsic_common import (  # noqa: E402
    DEFAULT_CONFIGS, environment, fmt, load_configs, load_world_model, mean, merge_options, run_arguments, write_json,
)

#: Changes of the base editor's shipped options tried on the tune split (for the base alone and under AnyEdit).
LAYERS = ({}, {"layers": [2]})
BASE_GRID = tuple({**layers, **prefixes} for layers in LAYERS for prefixes in ({}, {"key": {"prefixes": 0}}))
#: AnyEdit's chunkings tried on the tune split ("tokens" windows of one token: one word per chunk).
CHUNKINGS = ({"unit": "tokens", "size": 1}, {"unit": "sentence"})
METRICS = ("exact", "token_share", "rouge_l", "object", "locality")
LOCALITY_TOKENS = 4


def lcs_length(first: list[str], second: list[str]) -> int:
    row = [0] * (len(second) + 1)
    for a in first:
        previous = 0
        for j, b in enumerate(second):
            previous, row[j + 1] = row[j + 1], previous + 1 if a == b else max(row[j + 1], row[j])
    return row[-1]


def object_said(continuation: str, obj: str) -> float:
    """Whether the continuation starts with the object as whole words (a company's name has two)."""
    said = " ".join(continuation.split())
    return float(said.startswith(obj) and not said[len(obj) : len(obj) + 1].isalnum())


def score(model: Any, request: Any, unedited_locality: list[str]) -> dict[str, float]:
    """The long-form scores of ``request`` on the model as it is now (see the module docstring)."""
    target = " ".join(request.target_new.split())
    target_ids = model.encode_answer(target)
    continuation = model.generate([request.prompt], max_new_tokens=len(target_ids) + 2, stop=("\n",))[0]
    said_ids = model.encode_answer(continuation.strip()) if continuation.strip() else []
    said_words, target_words = continuation.split(), target.split()
    locality = model.generate([p.prompt for p in request.locality], max_new_tokens=LOCALITY_TOKENS, stop=("\n",)) if request.locality else []
    return {
        "exact": float(" ".join(said_words[: len(target_words)]) == target),
        "token_share": sum(a == b for a, b in zip(said_ids, target_ids)) / len(target_ids),
        "rouge_l": lcs_length(said_words[: len(target_words) + 2], target_words) / len(target_words),
        "object": object_said(continuation, request.metadata["target_object"]),
        "locality": mean([float(a == b) for a, b in zip(locality, unedited_locality)]),
        "continuation": continuation,
    }


def run_editor(model: Any, requests: list[Any], editor: str, options: dict[str, Any], unedited: dict[str, list[str]], log=print) -> dict[str, Any]:
    """Edit, score and undo each request alone; the summary, per-request scores and seconds per edit."""
    from easyetcon.chain import EditChain
    from easyetcon.locate.values import EditNotReachedWarning

    original = model.state_hash()
    per_request, seconds = [], []
    for index, request in enumerate(requests):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", EditNotReachedWarning)
            result = EditChain([(editor, options)]).apply(model, [request])
        seconds.append(sum(r.seconds for r in result.records))
        scores = score(model, request, unedited[request.request_id])
        not_reached = sum(issubclass(w.category, EditNotReachedWarning) for w in caught)
        per_request.append({"request_id": request.request_id, "target": request.target_new, "values_not_reached": not_reached, **scores})
        result.undo(model)
        if (index + 1) % 10 == 0:
            log(f"  {editor}: {index + 1}/{len(requests)}, exact so far {fmt(mean([r['exact'] for r in per_request]))}")
    if model.state_hash() != original:
        raise RuntimeError(f"{editor}: undo did not restore the model")
    summary = {metric: mean([r[metric] for r in per_request]) for metric in METRICS}
    summary["n"] = len(per_request)
    summary["median_seconds_per_edit"] = sorted(seconds)[len(seconds) // 2]
    return {"summary": summary, "per_request": per_request, "seconds_per_edit": seconds}


def unedited_locality(model: Any, requests: list[Any]) -> dict[str, list[str]]:
    return {
        r.request_id: model.generate([p.prompt for p in r.locality], max_new_tokens=LOCALITY_TOKENS, stop=("\n",)) if r.locality else []
        for r in requests
    }


def options_label(options: dict[str, Any]) -> str:
    """The tuned choices of an options dict, short."""
    base = options.get("base", options)
    parts = [f"layers {base.get('layers')}", f"prefixes {base.get('key', {}).get('prefixes', 0 if 'base' in options else 10)}"]
    if "chunks" in options:
        parts.insert(0, f"chunks {options['chunks']}")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=50, help="test requests")
    parser.add_argument("--tune", type=int, default=12, help="tune requests the options are chosen on")
    parser.add_argument("--sentences", type=int, default=2, help="sentences after the new object in each target")
    parser.add_argument("--base", default="memit", choices=("memit", "alphaedit", "emmet"), help="the base editor")
    parser.add_argument("--edit-seed", type=int, default=0)
    parser.add_argument("--configs", type=Path, default=DEFAULT_CONFIGS, help="JSON: editor -> options (the base's entry is used)")
    run_arguments(parser)
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from easyetcon_world import make_edit_requests

    model, world, folder = load_world_model(args.model, args.dtype)
    base_options = load_configs(args.configs)[args.base]
    output: dict[str, Any] = {"environment": environment(args), "model": folder, "base": args.base, "base_options": base_options}

    def anyedit_options(chunks: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
        # the base's own options; the key section is AnyEdit's (keys at the context's last token, no prefixes)
        own = {name: value for name, value in merge_options(base_options, change).items() if name != "key"}
        return {"chunks": chunks, "base": {"editor": args.base, **own}}

    # 1. the options of each, on the tune split
    tune = make_edit_requests(world, "tune", args.tune, args.edit_seed, long_form=args.sentences)
    tune_unedited = unedited_locality(model, tune)
    candidates = {
        args.base: [merge_options(base_options, change) for change in BASE_GRID],
        "anyedit": [anyedit_options(chunks, change) for chunks in CHUNKINGS for change in LAYERS],
    }
    output["tuning"] = {"split": "tune", "n": len(tune)}
    chosen = {}
    for editor, grid in candidates.items():
        tried = []
        for options in grid:
            started = time.perf_counter()
            summary = run_editor(model, tune, editor, options, tune_unedited)["summary"]
            tried.append({"options": options, "summary": summary})
            print(f"tune {editor} {options_label(options)}: exact {fmt(summary['exact'])}, token share "
                  f"{fmt(summary['token_share'])} ({time.perf_counter() - started:.0f}s)")
        best = max(tried, key=lambda entry: (entry["summary"]["exact"], entry["summary"]["token_share"]))
        chosen[editor] = best["options"]
        output["tuning"][editor] = {"tried": tried, "chosen": best["options"]}
        print(f"chosen for {editor} on the tune split: {options_label(best['options'])}")

    # 2. AnyEdit and its base on the test split
    test = make_edit_requests(world, "test", args.edits, args.edit_seed, long_form=args.sentences)
    unedited = unedited_locality(model, test)
    before = [score(model, r, unedited[r.request_id]) for r in test]
    output["unedited"] = {"summary": {m: mean([scores[m] for scores in before]) for m in METRICS}}
    output["editors"] = {}
    for label, editor, options in ((args.base, args.base, chosen[args.base]), ("anyedit", "anyedit", chosen["anyedit"])):
        started = time.perf_counter()
        output["editors"][label] = {"options": options, **run_editor(model, test, editor, options, unedited)}
        output["editors"][label]["wall_seconds"] = time.perf_counter() - started
        write_json(args.out, output)
        print(f"{label}: done in {time.perf_counter() - started:.0f}s")

    print(f"\nLong-form single edits on the fact world (test split, {len(test)} requests, {args.sentences} sentences after the object)\n")
    print("| editor | " + " | ".join(METRICS) + " | median s/edit |\n|---|" + "---|" * (len(METRICS) + 1))
    rows = {"unedited": output["unedited"]["summary"], **{k: v["summary"] for k, v in output["editors"].items()}}
    for label, summary in rows.items():
        print(f"| {label} | " + " | ".join(fmt(summary.get(m)) for m in METRICS) + f" | {fmt(summary.get('median_seconds_per_edit'))} |")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
