"""Editing at real layer widths: seconds per edit and memory, easyetcon beside EasyEdit.

Random 2-layer Llama models (fp32, heads of 64 dimensions, the tiny test tokenizer, 128
positions) at hidden 1024, 2048 and 4096 with MLP 4 × hidden: the widths of Llama-3.2-1B's and
Llama-3-8B's layers. Per width, one process (``--width-child``, so memory is measured from a clean
start) builds the model and the key-statistics texts, then

* prepares each editor once (layer, prefixes, statistics, factorisation or projector: the
  one-time cost, reported apart), and EasyEdit's ROME / AlphaEdit too with ``--easyedit PATH``;
* times ``--edits`` edits per editor after ``--warmup`` untimed ones, one request each, the weights restored after every edit,
  EasyEdit's edits interleaved with ours (ours, EasyEdit, ours, ...) on the same model and requests;
* records the resident memory: what prepare added and the peak above the baseline during an edit
  (a sampling thread reads ``/proc/self/statm`` every 5 ms).

Matched settings (EasyEdit's names in brackets; :data:`easyedit_side.EASYEDIT_SETTINGS` lists them
all): layer 0 [``layers``], ``--steps`` Adam steps of the value [``v_num_grad_steps = steps + 1``,
the same passes], the same learning rate, clamp and KL factor, the same five fixed prefixes
[``context_templates``], key statistics over the same random-token texts (about 1.25 × d_ff tokens,
so ``C`` is full rank) [``mom2_n_samples``, fp32]; AlphaEdit with the absolute null-space rule at
EasyEdit's threshold. What cannot be matched: EasyEdit's weight decay is ``wd·‖δ‖/‖v‖²`` (ours
``(‖δ‖/‖v‖)²``) and it stops when its total loss is below 0.05 (ours: target NLL below
``stop_nll``); the number of value passes each side ran is recorded. AlphaEdit is left out at hidden
4096 by default: both sides' projector is a 16384 × 16384 eigen/singular value decomposition, tens of
minutes on one CPU thread. With ``--synthetic-null-space FRACTION`` both sides' AlphaEdit edit on the
same random orthonormal null space of ``FRACTION × d_ff`` dimensions instead (ours as the basis,
EasyEdit's as ``P = U Uᵀ``): an edit's cost depends on that dimension, not on the subspace, so this
times edits at 4096 without the one-time decomposition (no statistics on either side).

Also measured, ours only: MEMIT, FT-M, TPSFT (one round) and one GRPO step; the statistics
collection against a plain forward pass over the same texts (same batches); and ROME without
statistics (``use_covariance: false``), for the cost of the statistics within an edit.

Run (one thread, nothing else running)::

    OMP_NUM_THREADS=1 python benchmarks/width.py --out benchmarks/results/width.json
    OMP_NUM_THREADS=1 python benchmarks/width.py --easyedit /path/to/EasyEdit --out benchmarks/results/width.json
"""

from __future__ import annotations

import argparse
import warnings
import json
import os
import statistics as stats
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
ALL_EDITORS = ("rome", "rome-no-covariance", "memit", "alphaedit", "emmet", "ultraedit", "ft-m", "tpsft", "grpo")
#: Five fixed prefixes (ours "fixed"), given to EasyEdit as its context templates.
PREFIX_COUNT = 5


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """The largest resident size seen since :meth:`reset`, sampled every few milliseconds."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval, self.peak, self._stop = interval, resident_bytes(), False
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop:
            self.peak = max(self.peak, resident_bytes())
            time.sleep(self.interval)

    def reset(self) -> int:
        self.peak = now = resident_bytes()
        return now

    def close(self) -> None:
        self._stop = True
        self._thread.join()


def tensor_bytes(root: Any, depth: int = 6) -> int:
    """Bytes of the distinct tensor storages reachable from ``root`` through containers and object
    attributes (weak dictionaries: their values), not through modules: an editor's own state."""
    import weakref

    seen_storage: set[int] = set()
    seen_object: set[int] = set()
    total = 0

    def walk(value: Any, level: int) -> None:
        nonlocal total
        if level < 0 or id(value) in seen_object or isinstance(value, (torch.nn.Module, str, bytes, int, float, bool, type(None))):
            return
        seen_object.add(id(value))
        if isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            if storage.data_ptr() not in seen_storage:
                seen_storage.add(storage.data_ptr())
                total += storage.nbytes()
            return
        if isinstance(value, (dict, weakref.WeakKeyDictionary)):
            children = list(value.values())
        elif isinstance(value, (list, tuple, set)):
            children = list(value)
        elif hasattr(value, "__dict__") and not isinstance(value, type) and not callable(value):
            children = list(vars(value).values())
        else:
            return
        for child in children:
            walk(child, level - 1)

    walk(root, depth)
    return total


def requests_for(count: int) -> list[Any]:
    from easyetcon.requests import EditRequest

    subjects = ["The Eiffel Tower", "Mount Kilimanjaro", "The Danube", "Lake Baikal", "The Colosseum", "Table Mountain"]
    targets = ["Rome", "Oslo", "Lima", "Cairo", "Quito", "Hanoi"]
    return [
        EditRequest(prompt=f"{subjects[i % 6]} is located in", subject=subjects[i % 6], target_new=targets[i % 6], case_id=f"width-{i}")
        for i in range(count)
    ]


def our_options(name: str, steps: int, texts: int) -> dict[str, Any]:
    statistics = {"samples": texts, "max_length": 128, "batch_size": 16, "cache": False, "progress": False}
    key = {"prefixes": PREFIX_COUNT, "prefix_source": "fixed"}
    value = {"steps": steps, "kl_factor": 0.0625, "learning_rate": 0.5, "clamp_norm_factor": 4.0}
    if name == "rome":
        return {"key": key, "value": value, "layer": 0, "statistics": statistics}
    if name == "rome-no-covariance":
        return {"key": key, "value": value, "layer": 0, "use_covariance": False}
    if name == "memit":
        return {"key": key, "value": {**value, "clamp_norm_factor": 0.75}, "layers": [0], "statistics": statistics}
    if name == "alphaedit":
        return {"key": key, "value": {**value, "learning_rate": 0.1, "clamp_norm_factor": 0.75}, "layers": [0],
                "nullspace_rule": "absolute", "nullspace_threshold": 2e-2, "l2": 1e-3, "statistics": statistics}
    if name == "emmet":
        return {"key": key, "value": {**value, "clamp_norm_factor": 0.75}, "layers": [0], "statistics": statistics}
    if name == "ultraedit":  # no value steps: one forward and backward pass
        return {"layers": [0], "module": "mlp_in"}
    if name == "ft-m":
        return {"layers": [0], "steps": steps}
    if name == "tpsft":
        return {"rounds": 1, "steps_per_round": steps, "weights": {"layers": [0]}}
    if name == "grpo":
        return {"steps": 1, "group_size": 4, "prompts_per_step": 1, "max_completion_tokens": 8, "weights": {"layers": [0]},
                "question_template": "Question: {prompt}? Answer:"}
    raise ValueError(name)


def easyedit_settings(side: Any, name: str, steps: int, texts: list[str], prefixes: list[str]) -> Any:
    """EasyEdit's settings matched to :func:`our_options` for ``name`` (rome, rome-no-covariance, alphaedit)."""
    matched = (
        {"learning_rate": 0.5, "clamp_norm_factor": 4.0, "weight_decay": 1e-3} if name in ("rome", "rome-no-covariance")
        else {"learning_rate": 0.1, "clamp_norm_factor": 0.75, "weight_decay": 0.5, "nullspace_threshold": 2e-2, "l2": 1.0}
    )
    return side.EditSettings(layer=0, steps=steps, mom2_n_samples=len(texts), prefixes=prefixes, kl_factor=0.0625,
                             use_covariance=name != "rome-no-covariance", **matched)


def edit_then_restore(model: Any, editor: Any, request: Any) -> None:
    """One edit, then the weights it declared back as they were (every edit starts from the same model)."""
    saved = {n: model.parameter(n).detach().clone() for n in editor.weights_to_edit(model, [request])}
    editor.edit(model, [request])
    with torch.no_grad():
        for n, value in saved.items():
            model.parameter(n).copy_(value)


def texts_for(tokenizer: Any, intermediate: int) -> list[str]:
    from easyedit_side import random_texts

    length = 120
    return random_texts(tokenizer, -(-5 * intermediate // (4 * length)), length)


def plain_forward_seconds(model: Any, texts: list[str], batch_size: int) -> float:
    """A plain forward pass over ``texts``, batched as the statistics batch them (by length)."""
    from easyetcon.statistics import plan_batches

    tokenizer = model.tokenizer
    started = time.perf_counter()
    encoded = [tokenizer(text, truncation=True, max_length=128)["input_ids"] for text in texts]
    with torch.no_grad():
        for batch in plan_batches([len(ids) for ids in encoded], batch_size):
            rows = tokenizer.pad({"input_ids": [encoded[i] for i in batch]}, return_tensors="pt")
            model.torch_model(input_ids=rows["input_ids"], attention_mask=rows["attention_mask"], use_cache=False)
    return time.perf_counter() - started


def synthetic_null_space(d: int, fraction: float, seed: int = 0) -> tuple[torch.Tensor, bool]:
    """A random null space of ``r = fraction · d`` dimensions, as ``(vectors, null_given)``: the
    smaller orthonormal set that defines it (the null space's basis, or its complement's when
    ``r > d/2``), as :class:`~easyetcon.locate.solve.Projector` takes it. AlphaEdit's per-edit
    cost depends on the null space's dimension, not on which subspace it is, so edits can be timed
    at widths where the one-time eigen/singular value decomposition is out of reach on this CPU."""
    rank = round(fraction * d)
    null_given = 2 * rank <= d
    generator = torch.Generator().manual_seed(seed)
    vectors, _ = torch.linalg.qr(torch.randn(d, rank if null_given else d - rank, generator=generator, dtype=torch.float64))
    return vectors.contiguous(), null_given


def dense_projector(vectors: torch.Tensor, null_given: bool) -> torch.Tensor:
    """EasyEdit's form of the same null space: ``P = U Uᵀ`` (or ``I − V Vᵀ``), fp32 ``d × d``."""
    vectors = vectors.float()
    product = vectors @ vectors.T
    if null_given:
        return product
    product.neg_().diagonal().add_(1.0)
    return product


def install_null_space(editor: Any, model: Any, requests: list[Any], vectors: torch.Tensor, null_given: bool) -> None:
    """Our AlphaEdit's per-layer solver on a given null space, in place of the one ``prepare``
    derives from statistics (benchmark only: it sets the editor's private solver table)."""
    from easyetcon.locate.solve import NullSpaceSolver, Projector

    (layer,) = editor.layers(model, requests)
    editor.prefixes(model)
    alpha = editor.config.l2 * vectors.shape[0]  # l2 · tr C for keys of unit scale; the cost does not depend on it
    solver = NullSpaceSolver(Projector(vectors, null_given=null_given), alpha)
    editor._solvers[model.torch_model] = (editor.statistics.generation, {layer: solver})


def width_child(args: argparse.Namespace) -> dict[str, Any]:
    from easyedit_side import random_llama

    from easyetcon.chain import EditChain
    from easyetcon.model import EditableModel
    from easyetcon.plugins import get_host
    from easyetcon.testing.tiny import tiny_tokenizer

    torch.set_num_threads(args.threads)
    memory = PeakMemory()
    hidden = args.width_child
    intermediate = 4 * hidden
    tokenizer = tiny_tokenizer()
    torch_model = random_llama(hidden, intermediate, tokenizer)
    registry = get_host().registry
    model = EditableModel(torch_model, tokenizer, registry=registry)
    texts = texts_for(tokenizer, intermediate)
    requests = requests_for(args.warmup + args.edits)
    result: dict[str, Any] = {
        "hidden": hidden, "intermediate": intermediate, "threads": torch.get_num_threads(), "steps": args.steps,
        "statistics_texts": len(texts), "model_resident_bytes": resident_bytes(), "editors": {},
    }
    synthetic = args.synthetic_null_space is not None
    editors = [e for e in args.editors if not (e == "alphaedit" and hidden > args.alphaedit_max_hidden and not synthetic)]

    ee = None
    if args.easyedit:
        import easyedit_side as side

        ee = side.load_easyedit(args.easyedit)
        result["easyedit"] = {"path": str(args.easyedit), "commit": side.easyedit_commit(ee)}

    def measure(run: Any) -> tuple[float, int]:
        baseline = memory.reset()
        started = time.perf_counter()
        run()
        seconds = time.perf_counter() - started
        return seconds, memory.peak - baseline

    for name in editors:
        entry: dict[str, Any] = {"options": our_options(name, args.steps, len(texts))}
        editor_name = "rome" if name == "rome-no-covariance" else name
        chained = name in ("tpsft", "grpo")
        if chained:
            chain = EditChain([(editor_name, entry["options"])])
            editor = None
            prepare = lambda: None  # noqa: E731 (the chain prepares in apply; TPSFT and GRPO derive little)
        else:
            editor = registry.editor(editor_name).create(entry["options"])
            if hasattr(editor, "statistics"):
                editor.statistics.use_texts(texts)
            prepare = lambda editor=editor: editor.prepare(model, requests[:1]) if hasattr(editor, "prepare") else None  # noqa: E731
        if name == "alphaedit" and synthetic:
            vectors, null_given = synthetic_null_space(intermediate, args.synthetic_null_space)
            rank = vectors.shape[1] if null_given else intermediate - vectors.shape[1]
            entry["synthetic_null_space"] = {"fraction": args.synthetic_null_space, "rank": rank}
            prepare = lambda editor=editor: install_null_space(editor, model, requests[:1], vectors, null_given)  # noqa: E731
        before = resident_bytes()
        entry["prepare_seconds"], entry["prepare_peak_bytes"] = measure(prepare)
        entry["prepare_added_bytes"] = resident_bytes() - before

        side_name = {"rome": "rome", "rome-no-covariance": "rome", "alphaedit": "alphaedit"}.get(name) if ee is not None else None
        theirs: dict[str, Any] = {}
        if side_name:
            import easyedit_side as side

            settings = easyedit_settings(side, name, args.steps, texts, editor.prefixes(model))
            prepare_theirs = side.prepare_rome if side_name == "rome" else side.prepare_alphaedit
            given = {"projector": dense_projector(vectors, null_given).unsqueeze(0)} if "synthetic_null_space" in entry else {}
            before = resident_bytes()
            theirs["prepare_seconds"], theirs["prepare_peak_bytes"] = measure(lambda: prepare_theirs(ee, torch_model, tokenizer, settings, texts, **given))
            del given
            theirs["prepare_added_bytes"] = resident_bytes() - before
            theirs["settings"] = settings.__dict__
            theirs["seconds"], theirs["edit_peak_bytes"], theirs["value_passes"] = [], [], []
        entry["seconds"], entry["edit_peak_bytes"] = [], []
        for index, request in enumerate(requests):
            warmup = index < args.warmup  # first-use work (e.g. the once-per-model suffix-pass check) is not an edit's
            if chained:
                outcome: dict[str, Any] = {}

                def run(request=request, outcome=outcome) -> None:
                    outcome["result"] = chain.apply(model, [request])

                seconds, peak = measure(run)
                outcome["result"].undo(model)
            else:
                seconds, peak = measure(lambda request=request: edit_then_restore(model, editor, request))
            if not warmup:
                entry["seconds"].append(seconds)
                entry["edit_peak_bytes"].append(peak)
            if side_name:
                run_theirs = side.easyedit_rome if side_name == "rome" else side.easyedit_alphaedit
                info: dict[str, Any] = {}
                baseline = memory.reset()
                seconds = run_theirs(ee, torch_model, tokenizer, request, settings, texts=texts, info=info)
                if not warmup:
                    theirs["seconds"].append(seconds)
                    theirs["edit_peak_bytes"].append(memory.peak - baseline)
                    theirs["value_passes"].append(info.get("value_passes"))
        # what each side keeps between edits, counted after them: EasyEdit's AlphaEdit allocates
        # K_p K_pᵀ at its first edit
        entry["state_bytes"] = tensor_bytes(editor) if editor is not None else 0
        entry["seconds_per_edit"] = stats.median(entry["seconds"])
        if side_name:
            theirs["state_bytes"] = side.state_bytes(ee, torch_model, tensor_bytes)
            theirs["seconds_per_edit"] = stats.median(theirs["seconds"])
            entry["easyedit"] = theirs
            entry["ratio_to_easyedit"] = entry["seconds_per_edit"] / theirs["seconds_per_edit"]
            side.release(ee, torch_model)
        if (editor is not None and hasattr(editor, "statistics") and name != "rome-no-covariance" and hidden <= args.statistics_max_hidden
                and "synthetic_null_space" not in entry):
            entry["statistics_seconds"] = statistics_seconds(model, entry["options"], texts)
            if side_name == "rome":
                theirs["statistics_seconds"] = side.easyedit_statistics_seconds(ee, torch_model, tokenizer, settings, texts)
        result["editors"][name] = entry
        line = f"hidden {hidden}: {name} {entry['seconds_per_edit']:.2f} s per edit, prepare {entry['prepare_seconds']:.1f} s"
        if side_name:
            line += f"; EasyEdit {theirs['seconds_per_edit']:.2f} s (ratio {entry['ratio_to_easyedit']:.2f}), prepare {theirs['prepare_seconds']:.1f} s"
        print(line, flush=True)
        del editor
    if any(name in result["editors"] and "statistics_seconds" in result["editors"][name] for name in ("rome", "memit")):
        result["plain_forward_seconds"] = plain_forward_seconds(model, texts, 16)
    memory.close()
    return result


def peak_child(args: argparse.Namespace) -> dict[str, Any]:
    """One side's editor alone in a fresh process: the most the resident memory rose above the
    loaded model while it prepared and made ``--edits`` edits (in-process comparisons flatter the
    side that runs second, which reuses memory the allocator kept from the first)."""
    from easyedit_side import random_llama

    from easyetcon.model import EditableModel
    from easyetcon.plugins import get_host
    from easyetcon.testing.tiny import tiny_tokenizer

    name, side_name = args.peak_child.split(":")
    torch.set_num_threads(args.threads)
    hidden = args.hidden[0]
    tokenizer = tiny_tokenizer()
    torch_model = random_llama(hidden, 4 * hidden, tokenizer)
    model = EditableModel(torch_model, tokenizer, registry=get_host().registry)
    texts = texts_for(tokenizer, 4 * hidden)
    requests = requests_for(args.edits)
    options = our_options(name, args.steps, len(texts))
    editor = get_host().registry.editor(name).create(options)
    prefixes = editor.prefixes(model)  # fixed sentences: nothing is derived from the model
    if side_name == "easyedit":
        import easyedit_side as side

        ee = side.load_easyedit(args.easyedit)
        settings = easyedit_settings(side, name, args.steps, texts, prefixes)
    memory = PeakMemory()
    baseline = memory.reset()
    if side_name == "easyedit":
        (side.prepare_rome if name == "rome" else side.prepare_alphaedit)(ee, torch_model, tokenizer, settings, texts)
        run = side.easyedit_rome if name == "rome" else side.easyedit_alphaedit
        for request in requests:
            run(ee, torch_model, tokenizer, request, settings, texts=texts, info={})
    else:
        editor.statistics.use_texts(texts)
        editor.prepare(model, requests[:1])
        for request in requests:
            edit_then_restore(model, editor, request)
    peak = memory.peak - baseline
    memory.close()
    return {"hidden": hidden, "editor": name, "side": side_name, "edits": args.edits, "peak_above_model_bytes": peak}


def statistics_seconds(model: Any, options: dict[str, Any], texts: list[str]) -> float:
    """Collecting the editor's key statistics alone, afresh (no memo, no cache)."""
    from easyetcon.statistics import LayerStatistics, StatisticsConfig

    config = StatisticsConfig(**options["statistics"])
    statistics = LayerStatistics(config)
    statistics.use_texts(texts)
    started = time.perf_counter()
    statistics.get(model, [0])
    return time.perf_counter() - started


def merge_width(results: dict[str, Any], width: dict[str, Any]) -> None:
    for known in results["widths"]:
        if known["hidden"] == width["hidden"]:
            editors = {**known["editors"], **width["editors"]}
            known.update(width)
            known["editors"] = editors
            return
    results["widths"].append(width)
    results["widths"].sort(key=lambda entry: entry["hidden"])


def megabytes(value: float) -> str:
    return f"{value / 2**20:,.0f} MB"


def report(results: dict[str, Any]) -> str:
    """Markdown tables of a results file: per-edit seconds, one-time seconds, memory."""
    # (the in-process prepare peaks are in the JSON; the table of --peak runs, one process per
    # side, is the fair comparison of whole-process memory)
    lines = ["| hidden / MLP | editor | s per edit | EasyEdit | ratio | one-time s (EasyEdit) | state kept (EasyEdit) "
             "| edit peak (EasyEdit) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for width in results["widths"]:
        for name, entry in width["editors"].items():
            theirs = entry.get("easyedit")
            label = f"{name} (random null space, r = {entry['synthetic_null_space']['rank']})" if "synthetic_null_space" in entry else name
            lines.append(
                f"| {width['hidden']} / {width['intermediate']} | {label} | {entry['seconds_per_edit']:.2f} | "
                + (f"{theirs['seconds_per_edit']:.2f} | {entry['ratio_to_easyedit']:.2f} | " if theirs else "– | – | ")
                + ("– (–)" if "synthetic_null_space" in entry  # a given null space: no one-time work to compare
                   else f"{entry['prepare_seconds']:.1f}" + (f" ({theirs['prepare_seconds']:.1f})" if theirs else "")) + " | "
                + (f"{megabytes(entry['state_bytes'])}" if "state_bytes" in entry else "–")
                + (f" ({megabytes(theirs['state_bytes'])})" if theirs and "state_bytes" in theirs else "")
                + f" | {megabytes(max(entry['edit_peak_bytes']))}"
                + (f" ({megabytes(max(theirs['edit_peak_bytes']))})" if theirs else "") + " |"
            )
    if results.get("process_peaks"):
        lines += ["", "| hidden / MLP | editor | whole-process peak above the model: easyetcon | EasyEdit | ratio |", "|---|---|---:|---:|---:|"]
        by_key = {(p["hidden"], p["editor"], p["side"]): p["peak_above_model_bytes"] for p in results["process_peaks"]}
        for hidden, name in sorted({(p["hidden"], p["editor"]) for p in results["process_peaks"]}):
            ours_, theirs = by_key.get((hidden, name, "ours")), by_key.get((hidden, name, "easyedit"))
            lines.append(f"| {hidden} / {4 * hidden} | {name} | {megabytes(ours_) if ours_ else '–'} | {megabytes(theirs) if theirs else '–'} | "
                         + (f"{ours_ / theirs:.2f} |" if ours_ and theirs else "– |"))
    lines += ["", "| hidden / MLP | statistics s | EasyEdit's | ratio | plain forward s | ratio | ROME with / without statistics |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for width in results["widths"]:
        editors = width["editors"]
        rome = editors.get("rome", {})
        if "statistics_seconds" not in rome:
            continue
        theirs = rome.get("easyedit", {}).get("statistics_seconds")
        plain = width.get("plain_forward_seconds")
        without = editors.get("rome-no-covariance", {}).get("seconds_per_edit")
        lines.append(
            f"| {width['hidden']} / {width['intermediate']} | {rome['statistics_seconds']:.1f} | "
            + (f"{theirs:.1f} | {rome['statistics_seconds'] / theirs:.2f} | " if theirs else "– | – | ")
            + (f"{plain:.1f} | {rome['statistics_seconds'] / plain:.2f} | " if plain else "– | – | ")
            + (f"{rome['seconds_per_edit'] / without:.2f} |" if without else "– |")
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--editors", nargs="+", default=list(ALL_EDITORS), choices=ALL_EDITORS)
    parser.add_argument("--edits", type=int, default=3, help="timed edits per editor (the median is reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed edits per editor before the timed ones")
    parser.add_argument("--steps", type=int, default=5, help="value / training steps per edit")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--alphaedit-max-hidden", type=int, default=2048, help="AlphaEdit only up to this hidden width")
    parser.add_argument("--statistics-max-hidden", type=int, default=2048, help="time statistics collection alone up to this width")
    parser.add_argument("--synthetic-null-space", type=float, metavar="FRACTION",
                        help="AlphaEdit (both sides) on a random orthonormal null space of FRACTION × d_ff dimensions instead of one "
                        "from statistics: times its edits at any width, without the one-time decomposition")
    parser.add_argument("--easyedit", type=Path, help="a local EasyEdit checkout: also time its ROME and AlphaEdit")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--report", type=Path, help="print the tables of a results file and stop")
    parser.add_argument("--width-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--peak", action="store_true",
                        help="instead: each side's ROME and AlphaEdit alone in a fresh process, whole-process peak above the model")
    parser.add_argument("--peak-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.report:
        print(report(json.loads(args.report.read_text())))
        return
    sys.path.insert(0, str(HERE))
    if args.width_child:
        warnings.simplefilter("ignore")  # edits of random models rarely reach their targets; that is not measured here
        print("RESULT " + json.dumps(width_child(args)), flush=True)
        return
    if args.peak_child:
        warnings.simplefilter("ignore")
        print("RESULT " + json.dumps(peak_child(args)), flush=True)
        return
    if args.peak:
        peaks = []
        for hidden in args.hidden:
            for name in [e for e in ("rome", "alphaedit") if e in args.editors and not (e == "alphaedit" and hidden > args.alphaedit_max_hidden)]:
                for side_name in ("ours", "easyedit") if args.easyedit else ("ours",):
                    command = [sys.executable, str(Path(__file__).resolve()), "--peak-child", f"{name}:{side_name}", "--hidden", str(hidden),
                               "--edits", str(args.edits), "--steps", str(args.steps), "--threads", str(args.threads)]
                    if args.easyedit:
                        command += ["--easyedit", str(args.easyedit)]
                    output = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
                    peaks += [json.loads(line[len("RESULT "):]) for line in output.splitlines() if line.startswith("RESULT ")]
                    print(peaks[-1], flush=True)
        results = json.loads(args.out.read_text()) if args.out and args.out.is_file() else {"commands": [], "widths": []}
        results.setdefault("commands", []).append(" ".join(sys.argv[1:]))
        known = {(p["hidden"], p["editor"], p["side"]): p for p in results.get("process_peaks", [])}
        known.update({(p["hidden"], p["editor"], p["side"]): p for p in peaks})
        results["process_peaks"] = sorted(known.values(), key=lambda p: (p["hidden"], p["editor"], p["side"]))
        if args.out:
            args.out.write_text(json.dumps(results, indent=1))
        print(report(results))
        return
    # an existing --out file is extended: new widths are added, new editors merged into known widths
    results = json.loads(args.out.read_text()) if args.out and args.out.is_file() else {"commands": [], "widths": []}
    results.setdefault("commands", []).append(" ".join(sys.argv[1:]))
    for hidden in args.hidden:
        command = [sys.executable, str(Path(__file__).resolve()), "--width-child", str(hidden), "--edits", str(args.edits), "--warmup", str(args.warmup),
                   "--steps", str(args.steps), "--threads", str(args.threads), "--alphaedit-max-hidden",
                   str(args.alphaedit_max_hidden), "--statistics-max-hidden", str(args.statistics_max_hidden), "--editors", *args.editors]
        if args.synthetic_null_space is not None:
            command += ["--synthetic-null-space", str(args.synthetic_null_space)]
        if args.easyedit:
            command += ["--easyedit", str(args.easyedit)]
        output = subprocess.run(command, check=True, capture_output=False, stdout=subprocess.PIPE, text=True).stdout
        for line in output.splitlines():
            if line.startswith("RESULT "):
                merge_width(results, json.loads(line[len("RESULT "):]))
            else:
                print(line, flush=True)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1))
    print(report(results))


if __name__ == "__main__":
    main()
