"""What the journal costs: time per step as a run grows, and bytes per step per editor.

Three parts (``--parts``):

* ``grace``: a GRACE run of ``--edits`` sequential edits on the shipped world model with a
  journal; the journal's own time per step (``Journal.append`` + ``add_requests``, measured
  around each call) averaged over steps 41–60 and over the last 20 steps, and their ratio.
  Requests cycle through the world's test split with fresh ids (a cost measurement, not a
  quality one).
* ``editors``: bytes the journal stores per step for ROME, MEMIT, AlphaEdit, FT-M and TPSFT on
  the wide world model (``--editor-edits`` sequential test edits each; the first step also
  stores each touched weight's base value once, reported apart).
* ``llama8b``: a random 2-layer Llama at Llama-3-8B widths (hidden 4096, MLP 14336, bfloat16):
  bytes and journal seconds per step for a rank-one update written through
  ``EditableModel.add_low_rank`` (what ROME, MEMIT and AlphaEdit write, rank = requests per
  step) and for a dense update of the same projection (what FT-M and TPSFT write).
* ``llama8b-editors``: the same model edited by ROME, MEMIT, AlphaEdit, FT-M and TPSFT themselves
  (``--llama-editor-steps`` edits each, few optimisation steps: the journal's bytes, not quality).

    python benchmarks/journal_cost.py --threads 1 --out benchmarks/results/journal_cost.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict

from easyetcon.chain import EditChain
from easyetcon.hookspecs import hookimpl
from easyetcon.journal import Journal
from easyetcon.model import EditableModel, load_model
from easyetcon.plugins import PluginHost, get_host


class TimedJournal(Journal):
    """A journal that records how long each step's writes take."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seconds: list[float] = []
        self._pending = 0.0

    def add_requests(self, requests: Any) -> None:
        started = time.perf_counter()
        super().add_requests(requests)
        self._pending += time.perf_counter() - started

    def append(self, record: Any, **kwargs: Any) -> int:
        started = time.perf_counter()
        position = super().append(record, **kwargs)
        self.seconds.append(self._pending + time.perf_counter() - started)
        self._pending = 0.0
        return position


def world(model_name: str):
    from easyetcon_world.edits import make_edit_requests
    from easyetcon_world.shipped import load_world, world_model_folder

    folder = str(world_model_folder(model_name))
    return folder, load_world(folder), make_edit_requests


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def step_bytes(journal_folder: Path, position: int) -> tuple[int, int]:
    """Bytes a step's record stores, less its base values; and the base values' bytes."""
    folder = journal_folder / "records" / f"{position:05d}"
    base = folder / "base.safetensors"
    base_bytes = base.stat().st_size if base.exists() else 0
    return folder_bytes(folder) - base_bytes, base_bytes


def journal_storage(journal: Journal) -> tuple[list[int], int, list[str]]:
    """Bytes each step stores (less base values), the base values' bytes, and the forms used."""
    sizes, base = [], 0
    for position in range(len(journal)):
        stored, base_bytes = step_bytes(journal.directory, position)
        sizes.append(stored)
        base += base_bytes
    forms = sorted({info["form"] for e in journal.entries() for info in (e["weights"] or {}).values()})
    return sizes, base, forms


def grace_part(args: Any) -> dict[str, Any]:
    folder, fact_world, make_requests = world("default")
    pool = make_requests(fact_world, "test", None, 0)
    requests = [
        pool[i % len(pool)].model_copy(update={"case_id": f"cost-{i}"}) for i in range(args.edits)
    ]
    model = load_model(folder, registry=get_host().registry)
    chain = EditChain(["grace"])
    with tempfile.TemporaryDirectory() as scratch:
        journal = TimedJournal(Path(scratch) / "journal")
        started = time.perf_counter()
        for index, request in enumerate(requests):
            chain.apply(model, [request], journal=journal)
            if (index + 1) % 500 == 0:
                print(f"grace: {index + 1} edits, {time.perf_counter() - started:.0f} s", flush=True)
        wall = time.perf_counter() - started
        size = folder_bytes(Path(scratch) / "journal")
    early = statistics.mean(journal.seconds[40:60])
    late = statistics.mean(journal.seconds[-20:])
    return {
        "edits": args.edits, "journal_seconds_steps_41_60": early, "journal_seconds_last_20": late,
        "ratio_late_over_early": late / early, "wall_seconds": wall, "journal_bytes": size,
        "journal_bytes_per_step": size / args.edits,
    }


EDITORS = {
    "rome": {}, "memit": {}, "alphaedit": {}, "ft-m": {},
    "tpsft": {"rounds": 5},
}


def editors_part(args: Any) -> dict[str, Any]:
    folder, fact_world, make_requests = world("wide")
    requests = make_requests(fact_world, "test", args.editor_edits, 0)
    results: dict[str, Any] = {}
    for name, options in EDITORS.items():
        model = load_model(folder, registry=get_host().registry)
        with tempfile.TemporaryDirectory() as scratch:
            journal = Journal(Path(scratch) / "journal")
            EditChain([(name, options)]).apply(model, requests, journal=journal)
            per_step, base, forms = journal_storage(journal)
        results[name] = {
            "options": options, "steps": len(per_step), "bytes_per_step_median": statistics.median(per_step),
            "base_bytes_once": base, "forms": forms,
        }
        print(f"{name}: {results[name]}", flush=True)
    return results


class SyntheticUpdateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    parameter: str
    form: Literal["rank-one", "dense"]


class SyntheticUpdate:
    """Writes one update of a fixed shape to one weight: rank-one through add_low_rank (as ROME,
    MEMIT and AlphaEdit do) or dense in place (as FT-M and TPSFT do)."""

    def __init__(self, config: SyntheticUpdateConfig) -> None:
        self.config = config

    def weights_to_edit(self, model: Any, requests: Any) -> list[str]:
        return [self.config.parameter]

    def edit(self, model: Any, requests: Any) -> None:
        weight = model.parameter(self.config.parameter)
        rows, cols = weight.shape
        generator = torch.Generator().manual_seed(len(requests[0].request_id))
        if self.config.form == "rank-one":
            left = torch.randn(rows, 1, dtype=torch.float64, generator=generator) * 1e-3
            right = torch.randn(1, cols, dtype=torch.float64, generator=generator)
            model.add_low_rank(self.config.parameter, left, right)
        else:
            with torch.no_grad():
                weight.add_((torch.randn(rows, cols, generator=generator) * 1e-3).to(weight.dtype))


class SyntheticPlugin:
    @hookimpl
    def easyetcon_register_intrinsic_editors(self, register: Any) -> None:
        register("synthetic-update", SyntheticUpdate, config=SyntheticUpdateConfig, subfamily="benchmark",
                 summary="A fixed-shape update, to measure the journal.")


def llama8b_model(registry: Any) -> EditableModel:
    """A random 2-layer Llama at Llama-3-8B widths in bfloat16, with the tiny test tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from easyetcon.testing.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    config = LlamaConfig(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=2, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=len(tokenizer), max_position_embeddings=256,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )
    torch.manual_seed(0)
    return EditableModel(LlamaForCausalLM(config).to(torch.bfloat16).eval(), tokenizer, registry=registry)


def llama8b_request(label: str, step: int) -> Any:
    from easyetcon.requests import EditRequest

    subject = f"Freedonia {step}"
    return EditRequest(prompt=f"The capital of {subject} is", subject=subject, target_new=f"City{step}", case_id=f"{label}-{step:03d}")


def llama8b_part(args: Any) -> dict[str, Any]:
    host = PluginHost(plugins=[SyntheticPlugin()])
    model = llama8b_model(host.registry)
    name = model.adapter.weight_name("mlp_out", 1)  # down_proj, 4096 x 14336
    rows, cols = model.parameter(name).shape
    results: dict[str, Any] = {"parameter": name, "shape": [rows, cols], "dtype": "bfloat16", "full_copy_bytes": rows * cols * 2}
    for form in ("rank-one", "dense"):
        chain = EditChain([("synthetic-update", {"parameter": name, "form": form})], host=host)
        with tempfile.TemporaryDirectory() as scratch:
            journal = TimedJournal(Path(scratch) / "journal")
            sizes = []
            for step in range(args.llama_steps):
                chain.apply(model, [llama8b_request(form, step)], journal=journal)
                sizes.append(step_bytes(Path(scratch) / "journal", step)[0])
            forms = [e["weights"][name]["form"] for e in journal.entries()]
        results[form] = {"steps": args.llama_steps, "bytes_per_step": sizes, "forms": forms, "journal_seconds_per_step": journal.seconds}
        print(f"llama8b {form}: median {statistics.median(sizes)} bytes per step", flush=True)
    return results


#: Real editors at Llama-3-8B widths, with few optimisation steps (this measures what the journal
#: stores, not edit quality). The locate-then-edit editors edit layer 0: a value written at the
#: subject in the last layer cannot reach the later positions the target is read at. MEMIT's and
#: AlphaEdit's statistics come from 32 short texts the model samples; AlphaEdit's projector is an
#: eigendecomposition of a 14336 x 14336 matrix (AlphaEdit's two edits took 22 minutes on one thread here).
LLAMA8B_EDITORS = {
    "rome": {"layer": 0, "use_covariance": False, "key": {"prefixes": 2, "prefix_source": "fixed"}, "value": {"steps": 3, "kl_factor": 0.0}},
    "memit": {"layers": [0], "key": {"prefixes": 2, "prefix_source": "fixed"}, "value": {"steps": 3, "kl_factor": 0.0},
              "statistics": {"source": "model-samples", "samples": 32, "max_length": 16, "batch_size": 8, "cache": False, "progress": False}},
    "alphaedit": {"layers": [0], "key": {"prefixes": 2, "prefix_source": "fixed"}, "value": {"steps": 3, "kl_factor": 0.0},
                  "statistics": {"source": "model-samples", "samples": 32, "max_length": 16, "batch_size": 8, "cache": False, "progress": False}},
    "ft-m": {"layers": [1], "steps": 3},
    "tpsft": {"rounds": 1, "steps_per_round": 1, "weights": {"layers": [1]}},
}


def llama8b_editors_part(args: Any) -> dict[str, Any]:
    model = llama8b_model(get_host().registry)
    results: dict[str, Any] = {}
    for editor, options in LLAMA8B_EDITORS.items():
        with tempfile.TemporaryDirectory() as scratch:
            chain = EditChain([(editor, options)])
            journal = TimedJournal(Path(scratch) / "journal")
            started = time.perf_counter()
            result = chain.apply(model, [llama8b_request(editor, step) for step in range(args.llama_editor_steps)], journal=journal)
            seconds = time.perf_counter() - started
            sizes, base, forms = journal_storage(journal)
            result.undo(model)  # the next editor starts from the same random model
        results[editor] = {
            "options": options, "steps": len(sizes), "bytes_per_step": sizes, "base_bytes_once": base,
            "forms": forms, "journal_seconds_per_step": journal.seconds, "seconds_all_steps": seconds,
        }
        print(f"llama8b {editor}: {sizes} bytes per step, forms {forms}, {seconds:.0f} s", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="grace,editors,llama8b,llama8b-editors")
    parser.add_argument("--edits", type=int, default=5000, help="GRACE edits")
    parser.add_argument("--editor-edits", type=int, default=10, help="edits per editor on the wide model")
    parser.add_argument("--llama-steps", type=int, default=6, help="steps at Llama-3-8B widths per update form")
    parser.add_argument("--llama-editor-steps", type=int, default=2, help="edits per real editor at Llama-3-8B widths")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    parts = {"grace": grace_part, "editors": editors_part, "llama8b": llama8b_part, "llama8b-editors": llama8b_editors_part}
    results: dict[str, Any] = {
        "command": "python benchmarks/journal_cost.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
        "machine": platform.platform(), "threads": args.threads, "torch": torch.__version__,
    }
    for part in args.parts.split(","):
        results[part] = parts[part](args)
        print(json.dumps({part: results[part]}, indent=2, default=str), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
