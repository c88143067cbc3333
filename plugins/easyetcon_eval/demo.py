"""``easyetcon demo``: edit a handful of facts of the shipped fact-world model and show what changed.

Loads the model named ``default`` and draws counterfactual edits from the ``fact-world`` dataset's
test split (both registered by the world plugin: the shipped model, no training, no download),
applies a chain (ROME by default, or any chain spec), and prints, per edit, the model's
answers before and after on the edit prompt, a held-out rephrasing and every locality probe
(the facts the locality score counts: the subject's other facts and other subjects' facts of
the same relation), then the scores of the generation protocol before and after.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import click

#: What the demo edits: a model name and a dataset, both registered by the world plugin.
DEMO_MODEL, DEMO_DATASET = "default", "fact-world"
#: The demo's default chain: ROME at the layer tuned for the shipped model (benchmarks/intrinsic_tune.py).
DEFAULT_DEMO_CHAIN = [{"editor": "rome", "layer": 1, "statistics": {"source": "world", "samples": 2000, "progress": False}}]


@click.command("demo")
@click.option("--chain", "chain_path", type=click.Path(dir_okay=False, exists=True),
              help="Chain spec to apply instead of the default (ROME).")
@click.option("--edits", type=click.IntRange(1, 50), default=5, show_default=True, help="How many facts to edit.")
@click.option("--seed", type=int, default=0, show_default=True, help="Which facts are edited.")
def demo_command(chain_path: str | None, edits: int, seed: int) -> None:
    """Edit a few facts of the shipped fact-world model and print before/after answers and scores."""
    from rich.console import Console
    from rich.table import Table

    from easyetcon.chain import EditChain
    from easyetcon.errors import EasyEtconError
    from easyetcon.model import load_model
    from easyetcon.plugins import get_host
    from easyetcon.spec import load_chain_spec
    from easyetcon_eval.evaluate import compute_baseline, evaluate_edits

    console = Console()
    started = time.perf_counter()
    host = get_host()
    chain = load_chain_spec(chain_path)[1] if chain_path else EditChain(DEFAULT_DEMO_CHAIN, host=host)
    try:  # the world plugin's model name and dataset; any plugin could register them
        model = load_model(DEMO_MODEL, registry=host.registry)
        requests = host.registry.dataset(DEMO_DATASET).load({"split": "test", "n": edits, "edit_seed": seed})
    except EasyEtconError as error:
        raise click.ClickException(
            f"the demo edits the model named {DEMO_MODEL!r} with requests of the {DEMO_DATASET!r} dataset, "
            f"which the world plugin registers: {error}"
        ) from None
    console.print(f"[bold]{DEMO_DATASET}[/bold] (test split): editing {len(requests)} facts of model {DEMO_MODEL!r} with {chain!r}")

    probes = demo_probes(requests)
    prompts = [prompt for _, prompt, _ in probes]

    baseline = compute_baseline(model, requests, protocols=("generation",))
    before_scores = evaluate_edits(model, requests, protocols=("generation",), baseline=baseline).summary()
    before = model.generate(prompts, max_new_tokens=8, stop=("\n", "."))
    chain.apply(model, requests, progress=True)
    after = model.generate(prompts, max_new_tokens=8, stop=("\n", "."))
    after_scores = evaluate_edits(model, requests, protocols=("generation",), baseline=baseline).summary()

    table = Table(title="answers before and after the edits (greedy generation)")
    for column in ("prompt", "kind", "before", "after", "wanted"):
        table.add_column(column, overflow="fold")
    for index, ((what, prompt, wanted), old, new) in enumerate(zip(probes, before, after)):
        if index and what == "edit":
            table.add_section()  # one block of rows per edit
        # locality counts an answer that did not change, whether or not it was right before
        held = new.strip() == (old.strip() if wanted is None else wanted)
        mark = "[green]✓[/green]" if held else "[red]✗[/red]"
        table.add_row(prompt, what, old.strip(), f"{new.strip()} {mark}", "(unchanged)" if wanted is None else wanted)
    console.print(table)

    scores = Table(title="generation protocol (exact match)")
    scores.add_column("metric")
    scores.add_column("before")
    scores.add_column("after")
    (key,) = [k for k in after_scores if k.startswith("generation@")]
    for metric in ("reliability", "generalization", "locality", "portability"):
        old, new = before_scores[key].get(metric), after_scores[key].get(metric)
        scores.add_row(metric, "–" if old is None else f"{old:.2f}", "–" if new is None else f"{new:.2f}")
    console.print(scores)
    console.print(f"done in {time.perf_counter() - started:.1f} s (scores: {key}; locality = answers unchanged)")


def demo_probes(requests: Sequence[Any]) -> list[tuple[str, str, str | None]]:
    """``(kind, prompt, wanted answer)`` rows of the demo table, per request: the edit prompt,
    its first held-out rephrasing, and every locality probe, which wants its answer unchanged
    (``None``), as the locality score counts it."""
    rows: list[tuple[str, str, str | None]] = []
    for request in requests:
        rows.append(("edit", request.prompt, request.target_new))
        if request.rephrase_prompts:
            rows.append(("rephrase", request.rephrase_prompts[0], request.target_new))
        rows.extend((f"locality: {probe.kind or 'probe'}", probe.prompt, None) for probe in request.locality)
    return rows
