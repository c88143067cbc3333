"""Editing a model split over devices by an explicit device map, on real devices (issue #16).

A random-weight Llama (``--hidden``, ``--layers``, MLP ``--intermediate``; heads of 64 dimensions,
fp32, the tiny test tokenizer: nothing is downloaded) is placed by accelerate's ``dispatch_model``
with an explicit device map:

* **two or more GPUs**: embeddings on ``cuda:0``, the blocks in contiguous runs over the GPUs, the
  final norm and LM head on the last one;
* **one GPU**: embeddings, final norm and LM head on ``cuda:0``, the blocks alternating between
  ``cuda:0`` and the CPU, with ``main_device="cpu"`` so the CPU blocks compute on the CPU (not
  offloaded): hidden states cross between the GPU and the CPU at every block;
* **no GPU**: every entry ``"cpu"`` with accelerate's hooks forced (``"note"`` in the summary says
  so). Only for checking the script itself: every device is the CPU, so nothing crosses.

Single-layer editors edit the first block that is not on the embeddings' device; span editors the
two blocks around that device boundary. For each editor (one edit of two requests) the script checks

1. ``declared``: only the weights the editor declares changed (every parameter compared);
2. ``placement``: every matrix of at least ``hidden × hidden`` that easyetcon's code (core and
   plugins) made during the edit lies on the execution device of an edited module (recorded with a
   ``TorchFunctionMode``; the chain's and journal's CPU copies for undo and saving are exempt, and
   ``lora-merge``, which merges its adapters on the CPU by design, is not held to it);
3. ``undo``: undoing restores the model bit for bit (``state_hash``);
4. ``agreement``: the same edit on an undispatched copy (all on ``cuda:0``, or the CPU) changes the
   weights (or the memory's values) alike: ``relative_difference`` is ‖Δ_split − Δ_one‖ / ‖Δ_one‖,
   at most ``--tolerance`` (devices round differently; 0 on the CPU-only map);

and once, for ROME, that a journal replays the edit onto a fresh dispatched copy bit for bit and
rolls it back. A JSON summary is printed (and written with ``--out``); the exit status is 1 when a
check fails.

Run (a few minutes at the defaults)::

    python benchmarks/device_map_gpu.py --out benchmarks/results/device_map_gpu.json

Check the script itself on a CPU-only machine (a minute)::

    python benchmarks/device_map_gpu.py --hidden 64 --intermediate 128 --layers 4 --samples 16
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_EDITORS = ("rome", "memit", "alphaedit", "emmet", "ultraedit", "ft-l", "ft-m", "locft-bf", "grace", "lora-merge", "tpsft")
#: Files that copy weights to the CPU on purpose (undo copies, journal records, offloaded values).
BOOKKEEPING = ("easyetcon/chain.py", "easyetcon/records.py", "easyetcon/journal.py", "easyetcon/devices.py")
#: Editors whose large temporaries sit on the CPU by design, with the reason.
CPU_BY_DESIGN = {"lora-merge": "merges its adapters' full weight changes on the CPU, where its merge window keeps the base weights"}


def random_llama(hidden: int, intermediate: int, layers: int, tokenizer: Any, seed: int = 0) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    heads = max(1, hidden // 64)
    config = LlamaConfig(
        hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=heads, vocab_size=len(tokenizer), max_position_embeddings=128,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def placement(layers: int) -> dict[str, Any]:
    """The device map, dispatch_model's main device and a note, for the visible GPUs."""
    gpus = torch.cuda.device_count()
    entries: dict[str, Any] = {"model.rotary_emb": "cpu"}
    if gpus >= 2:
        blocks = {i: f"cuda:{min(gpus - 1, i * gpus // layers)}" for i in range(layers)}
        first, last, main, note = "cuda:0", f"cuda:{gpus - 1}", None, f"{gpus} GPUs: blocks in contiguous runs"
        entries["model.rotary_emb"] = first
    elif gpus == 1:
        blocks = {i: "cuda:0" if i % 2 == 0 else "cpu" for i in range(layers)}
        first, last, main, note = "cuda:0", "cuda:0", "cpu", "one GPU: blocks alternate between cuda:0 and the CPU (computed there)"
    else:
        blocks = {i: "cpu" for i in range(layers)}
        first, last, main, note = "cpu", "cpu", None, "no GPU: every entry 'cpu' with accelerate's hooks forced; nothing crosses devices"
    entries.update({"model.embed_tokens": first, **{f"model.layers.{i}": d for i, d in blocks.items()}})
    entries.update({"model.norm": last, "lm_head": last})
    return {"device_map": entries, "main_device": main, "note": note, "gpus": gpus}


def build(args: argparse.Namespace, tokenizer: Any, *, split: bool, where: dict[str, Any]) -> Any:
    from accelerate import dispatch_model

    from easyetcon.model import EditableModel

    torch_model = random_llama(args.hidden, args.intermediate, args.layers, tokenizer)
    if split:
        dispatch_model(torch_model, device_map=where["device_map"], main_device=where["main_device"], force_hooks=True)
    else:
        torch_model.to("cuda:0" if where["gpus"] else "cpu")
    return EditableModel(torch_model, tokenizer)


class LargeTensorsMade(TorchFunctionMode):
    """Every 2-D tensor of at least ``side × side`` that easyetcon's own code makes, with where."""

    def __init__(self, side: int) -> None:
        super().__init__()
        self.side, self.made = side, []
        import easyetcon
        import easyetcon_intrinsic

        self.torch_dir = str(Path(torch.__file__).parent)
        self.roots = (str(Path(easyetcon.__file__).parent), str(Path(easyetcon_intrinsic.__file__).parents[1]))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        given = {id(a) for a in (*args, *kwargs.values())}
        for tensor in result if isinstance(result, (tuple, list)) else (result,):
            if (isinstance(tensor, torch.Tensor) and tensor.dim() == 2 and min(tensor.shape) >= self.side
                    and id(tensor) not in given):
                frame = sys._getframe(1)
                while frame is not None and frame.f_code.co_filename.startswith(self.torch_dir):
                    frame = frame.f_back
                where = frame.f_code.co_filename if frame is not None else ""
                if where.startswith(self.roots) and not where.endswith(BOOKKEEPING):
                    short = "/".join(Path(where).parts[-2:])
                    self.made.append((str(tensor.device), tuple(tensor.shape), f"{short}:{frame.f_lineno}"))
        return result


def editor_options(editor: str, far: int, samples: int) -> tuple[dict[str, Any], list[int]]:
    """Options for one quick edit, and the layers it writes (single-layer editors: ``far``; span
    editors: ``far - 1`` and ``far``, across the device boundary)."""
    statistics = {"source": "model-samples", "samples": samples, "max_length": 32, "batch_size": 16, "cache": False, "progress": False}
    key = {"prefixes": 2, "prefix_source": "fixed"}
    value = {"steps": 10, "kl_factor": 0.0625}
    pair = [far - 1, far] if far > 0 else [far, far + 1]
    table = {
        "rome": ({"layer": far, "key": key, "value": value, "statistics": statistics}, [far]),
        "memit": ({"layers": pair, "key": key, "value": value, "statistics": statistics}, pair),
        "alphaedit": ({"layers": pair, "key": key, "value": value, "statistics": statistics}, pair),
        "emmet": ({"layers": pair, "key": key, "value": value, "statistics": statistics}, pair),
        "ultraedit": ({"layers": pair, "module": "mlp_out", "learning_rate": 0.01}, pair),
        "ft-l": ({"layers": [far], "steps": 5, "learning_rate": 1e-3}, [far]),
        "ft-m": ({"layers": [far], "steps": 5, "learning_rate": 1e-3, "modules": ["mlp_in", "mlp_out"]}, [far]),
        "locft-bf": ({"layers": [far], "steps": 2, "batch_size": 1}, [far]),
        "grace": ({"layer": far, "steps": 20, "learning_rate": 0.5}, [far]),
        "lora-merge": ({"layers": [far], "steps": 10, "rank": 4, "learning_rate": 1e-3}, [far]),
        "tpsft": ({"rounds": 2, "learning_rate": 1e-3, "weights": {"layers": pair}}, pair),
        "grpo": ({"steps": 1, "group_size": 2, "prompts_per_step": 1, "max_completion_tokens": 6,
                  "weights": {"layers": [far]}, "question_template": "Question: {prompt}? Answer:"}, [far]),
    }
    return table[editor]


def requests() -> list[Any]:
    from easyetcon.testing import tiny_requests

    return [r.model_copy(update={"metadata": {"qa_prompts": [f"Question: {r.prompt}? Answer:"]}}) for r in tiny_requests()[:2]]


def all_weights(model: Any) -> dict[str, torch.Tensor]:
    return {name: p.detach().to("cpu", copy=True) for name, p in model.torch_model.named_parameters()}


def memory_values(model: Any) -> torch.Tensor | None:
    rows = [entry.tensors["value"].float().reshape(-1) for store in model.memories.values() for _, entry in store.items()
            if "value" in entry.tensors]
    return torch.cat(rows) if rows else None


def run_editor(args: argparse.Namespace, editor: str, split: Any, single: Any, far: int) -> dict[str, Any]:
    from easyetcon.chain import EditChain
    from easyetcon.devices import execution_device

    options, layers = editor_options(editor, far, args.samples)
    original, before = split.state_hash(), all_weights(split)
    modules = [split.adapter.module(split.torch_model, kind, layer) for layer in layers for kind in ("mlp_in", "mlp_out")]
    allowed = sorted({str(execution_device(m)) for m in modules})
    recorder = LargeTensorsMade(args.hidden)
    started = time.perf_counter()
    chain = EditChain([(editor, options)])
    with recorder:
        result = chain.apply(split, requests(), mode="batch")
    seconds = time.perf_counter() - started
    after = all_weights(split)
    changed = sorted(n for n in before if not torch.equal(before[n], after[n]))
    declared = sorted({n for record in result.records if record.weights is not None for n in record.weights.names})
    misplaced = [m for m in recorder.made if m[0] not in allowed]
    split_memory = memory_values(split)
    result.undo(split)
    undone = split.state_hash() == original

    reference_before = all_weights(single)
    reference_chain = EditChain([(editor, options)])
    reference = reference_chain.apply(single, requests(), mode="batch")
    reference_after = all_weights(single)
    if declared:
        ours = torch.cat([(after[n] - before[n]).double().reshape(-1) for n in declared])
        theirs = torch.cat([(reference_after[n] - reference_before[n]).double().reshape(-1) for n in declared])
    else:
        ours, theirs = split_memory, memory_values(single)
        ours, theirs = (ours.double(), theirs.double()) if ours is not None and theirs is not None else (torch.zeros(1), torch.zeros(1))
    difference = float((ours - theirs).norm() / theirs.norm().clamp(min=1e-30)) if ours.shape == theirs.shape else float("inf")
    reference.undo(single)

    extra = {}
    if editor == "alphaedit":  # its null space's rank can differ where an eigenvalue sits at the threshold
        extra["null_space_ranks"] = {
            "split": [chain.steps[0].editor.projector(split, layer).rank for layer in layers],
            "one_device": [reference_chain.steps[0].editor.projector(single, layer).rank for layer in layers],
        }
    held = editor not in CPU_BY_DESIGN
    checks = {
        "declared": set(changed) <= set(declared),
        "placement": not misplaced or not held,
        "undo": undone,
        "agreement": difference <= args.tolerance,
    }
    return {
        "layers": layers, "edited_module_devices": allowed, "seconds": round(seconds, 2), "changed": changed,
        "declared": declared, "relative_difference": difference, "large_tensors_made": len(recorder.made),
        "large_tensor_devices": sorted({m[0] for m in recorder.made}), "misplaced": [list(m) for m in misplaced[:10]],
        "placement_exempt": CPU_BY_DESIGN.get(editor), **extra, "checks": checks, "ok": all(checks.values()),
    }


def journal_round_trip(args: argparse.Namespace, tokenizer: Any, split: Any, where: dict[str, Any], far: int) -> dict[str, Any]:
    from easyetcon.chain import EditChain
    from easyetcon.journal import Journal

    options, _ = editor_options("rome", far, args.samples)
    original = split.state_hash()
    with tempfile.TemporaryDirectory(prefix="easyetcon-device-map-") as folder:
        EditChain([("rome", options)]).apply(split, requests(), mode="sequential", journal=Path(folder) / "journal")
        edited = split.state_hash()
        journal = Journal.open(Path(folder) / "journal")
        fresh = build(args, tokenizer, split=True, where=where)
        journal.replay(fresh)
        replayed = fresh.state_hash() == edited
        del fresh
        journal.rollback(split)
    rolled_back = split.state_hash() == original
    return {"replayed_bit_for_bit": replayed, "rolled_back_bit_for_bit": rolled_back, "ok": replayed and rolled_back}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--intermediate", type=int, default=2816)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--samples", type=int, default=128, help="key-statistics texts of 32 tokens, sampled from the model")
    parser.add_argument("--editors", nargs="+", default=list(DEFAULT_EDITORS), help="add grpo to train through TRL too")
    parser.add_argument("--tolerance", type=float, default=5e-2, help="largest relative difference to the one-device edit")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    logging.getLogger("accelerate").setLevel(logging.ERROR)

    from easyetcon.devices import execution_device
    from easyetcon.testing.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    where = placement(args.layers)
    split = build(args, tokenizer, split=True, where=where)
    single = build(args, tokenizer, split=False, where=where)
    embeddings = execution_device(split.adapter.embed_module(split.torch_model))
    blocks = split.adapter.blocks(split.torch_model)
    far = next((i for i, block in enumerate(blocks) if execution_device(block) != embeddings), len(blocks) // 2)
    summary: dict[str, Any] = {
        "hidden": args.hidden, "intermediate": args.intermediate, "layers": args.layers, "gpus": where["gpus"],
        "device_map": where["device_map"], "main_device": where["main_device"], "note": where["note"],
        "embeddings_device": str(embeddings), "first_block_elsewhere": far, "editors": {},
        "torch": torch.__version__,
    }
    for editor in args.editors:
        try:
            summary["editors"][editor] = run_editor(args, editor, split, single, far)
        except Exception as error:  # reported, and the run goes on with the next editor
            summary["editors"][editor] = {"ok": False, "error": f"{type(error).__name__}: {error}"[:2000]}
        print(f"{editor}: {'ok' if summary['editors'][editor]['ok'] else 'FAILED'}", file=sys.stderr, flush=True)
    try:
        summary["journal"] = journal_round_trip(args, tokenizer, split, where, far)
    except Exception as error:
        summary["journal"] = {"ok": False, "error": f"{type(error).__name__}: {error}"[:2000]}
    summary["ok"] = all(entry["ok"] for entry in summary["editors"].values()) and summary["journal"]["ok"]
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "plugins"))
    sys.exit(main())
