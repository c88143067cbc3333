"""The leaderboard: every registered editor and every shipped chain on a fact-world model.

    python benchmarks/leaderboard.py --model wide --single 100 --sequential 735 --threads 1 \\
        --out benchmarks/results/leaderboard_wide.json --table benchmarks/results/leaderboard_wide.md \\
        --plot benchmarks/results/leaderboard_wide.png

Entries: each editor the host registry lists (intrinsic, memory, merging; TPSFT, the one
consolidation step that edits by itself, with the options of ``examples/chains/tpsft.yaml``;
GRPO only consolidates what an earlier step wrote, so it is listed as skipped and runs in the
chains) and each chain of ``examples/chains/*.yaml``. ``--editors a,b`` restricts the set.

Two protocols of editing, on the ``--split`` (test) requests of the model's world:

* ``single`` (``--single N``): each request edited alone by a fresh chain on the unedited model,
  scored, undone (as ``intrinsic_single.py``); the model is checked to be bit-identical after.
* ``sequential`` (``--sequential N``): one chain edits the N requests one after another
  (``easyetcon_eval.run_lifelong``, one request per application), scored after the last edit.

Scores (``easyetcon_eval.evaluate_edits``, teacher-forced and generation protocols): reliability,
generalization, locality (agreement with the unedited model) and portability. Seconds per edit:
the median wall-clock time of one chain application (the scoring excluded). Peak memory: the
growth of the process's resident set size (RSS) over what it was when the entry started, the
maximum of ``/proc/self/statm`` sampled every 20 ms while the entry edits and scores (where
``/proc`` is missing: the growth of ``resource.getrusage`` max RSS, which only shows a new peak of
the process). It covers the editor's state, statistics and memory store plus the evaluation's
activations; the model is loaded before the window opens.

Options come only from choices already made on the tune split (never from the test split); the
JSON names the source of each entry's options:

* intrinsic editors: ``intrinsic_configs.json`` (default model) or ``intrinsic_configs_wide.json``
  (wide), the ``sequential_overrides`` applied for the sequential protocol (``--configs`` replaces);
* ``ike``: the templates and k that ``ike_fact_world.py`` chose (its results JSON);
* ``wise``: the options of docs/memory.md's runs of ``wise_world.py`` (its results JSON), with
  the last 16 tune prompts of this world as ``irrelevant_prompts``;
* ``retrieval-memory``, ``grace``: calibrated on the tune split as ``memory_merging.py`` does;
* ``lora-merge``: ``memory_merging.py``'s LoRA options, its merge window, the default strategy;
* ``serac``, ``mend``: trained once on the tune split (``train_serac_classifier``, ``train_mend``
  with the options ``mend_fact_world.py`` chose); their training (and the calibrations') seconds
  are the ``training s`` column, apart from the seconds per edit;
* anything else registered: its registered defaults;
* chain steps without options get the options of that editor's own entry.

The choices of IKE, WISE, MEND and LoRA-merge were made with the default model; no other exists,
so ``--model wide`` reuses them (calibrations and training run on the model at hand). The
sequential protocol edits one request per application; a ``sequential_overrides`` entry tuned
for batched calls (UltraEdit's on wide, batches of 55) is applied as it is.

Results go to ``--out`` after every (entry, protocol); a run started again with the same ``--out``
skips what is there (``--retry-failed`` runs failed entries again). An entry that fails is kept
with its error and shown as failed in the table. ``--table`` writes Markdown, ``--plot`` a figure
(reliability against locality per entry, one panel per protocol of editing and scoring).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from intrinsic_common import (  # noqa: E402
    DEFAULT_CONFIGS,
    METRICS,
    RESULTS,
    SHIPPED_CONFIGS,
    environment,
    fmt,
    load_configs,
    load_world_model,
    mean,
    median,
    run_arguments,
    world_requests,
    write_json,
)

REPO = Path(__file__).resolve().parent.parent
CHAINS = REPO / "examples" / "chains"
PROTOCOLS = ("teacher-forced", "generation")
MODES = ("single", "sequential")
#: ``memory_merging.py``'s ``--lora-options`` and ``--merge-every`` defaults.
LORA_OPTIONS = {"rank": 4, "steps": 60, "learning_rate": 0.003, "stop_loss": 0.5, "layers": [-1], "merge_every": 10}
#: ``memory_merging.py``'s ``--grace-options`` default; the radius is calibrated on tune.
GRACE_OPTIONS = {"layer": -1}
#: Consolidation steps that only act on what an earlier step edited: run inside chains only.
CONSOLIDATION_ONLY = {
    "grpo": "consolidation only: GRPO trains the model to use an edit an earlier step wrote; it runs in the chains "
            "(etcon, alphaedit-grpo, ft-m-grpo, lora-merge-grpo, rome-grpo)",
}
#: A registered editor whose entry is a shipped single-step chain (the options live there).
EDITOR_CHAINS = {"tpsft": "tpsft.yaml"}


@dataclass
class Choice:
    """An editor's options for one protocol and where they come from."""

    options: dict[str, Any]
    source: str
    training_seconds: float | None = None


@dataclass
class Entry:
    """A row of the leaderboard: a registered editor or a chain file (``skipped``: why it is not run)."""

    name: str
    kind: str  # "editor" or "chain"
    editor: str | None = None
    chain_file: Path | None = None
    skipped: str | None = None


@dataclass
class Setup:
    """What choosing options needs: the world, its tune split, a scratch folder for trained files,
    and what was trained or calibrated already (once per run)."""

    folder: str
    world: Any
    configs_path: Path
    scratch: Path
    dtype: str
    trained: dict[str, Any] = field(default_factory=dict)

    def fresh_model(self) -> Any:
        return load_world_model(self.folder, self.dtype)[0]

    def tune(self, count: int | None = None) -> list[Any]:
        return world_requests(self.world, "tune", count, 0)

    def once(self, key: str, make: Callable[[], Any]) -> tuple[Any, float]:
        """``make()``'s value and its seconds, computed on first use only."""
        if key not in self.trained:
            started = time.perf_counter()
            value = make()
            self.trained[key] = (value, time.perf_counter() - started)
        return self.trained[key]


# ---- where each editor's options come from ------------------------------------------------

def configs_choice(setup: Setup, editor: str, mode: str) -> Choice | None:
    configs = load_configs(setup.configs_path, sequential=mode == "sequential")
    if editor not in configs:
        return None
    overrides = json.loads(setup.configs_path.read_text(encoding="utf-8")).get("sequential_overrides", {})
    note = " with its sequential_overrides" if mode == "sequential" and editor in overrides else ""
    return Choice(configs[editor], f"{relative(setup.configs_path)}{note} (chosen on the tune split with intrinsic_tune.py)")


def results_file(name: str) -> dict[str, Any]:
    path = RESULTS / name
    if not path.is_file():
        raise FileNotFoundError(f"{relative(path)} is missing: run the benchmark that writes it to choose these options")
    return json.loads(path.read_text(encoding="utf-8"))


def ike_choice(setup: Setup, mode: str) -> Choice:
    chosen = results_file("ike_fact_world.json")["test"][mode]
    return Choice(dict(chosen["options"]), f"benchmarks/ike_fact_world.py's choice on the tune split "
                  f"(results/ike_fact_world.json: templates {chosen['template']!r}, k {chosen['k']}; chosen with the default model)")


def wise_choice(setup: Setup, mode: str) -> Choice:
    options = dict(results_file(f"wise_world_{mode}.json")["options"])
    # wise_world.py --irrelevant 16: the prompts of the last 16 tune facts, taken from this world
    options["irrelevant_prompts"] = [r.prompt for r in setup.tune()[-16:]]
    return Choice(options, f"benchmarks/wise_world.py as docs/memory.md runs it (results/wise_world_{mode}.json, chosen with the "
                  "default model), irrelevant_prompts the last 16 tune prompts")


def calibration_requests(setup: Setup) -> list[Any]:
    """One tune request per subject, as ``memory_merging.py`` calibrates on (each keeps same-subject probes)."""
    return setup.tune(len({r.subject for r in setup.tune()}))


def retrieval_choice(setup: Setup, mode: str) -> Choice:
    from easyetcon_memory import calibrate_threshold, relation_examples_from

    def calibrate() -> dict[str, Any]:
        options = {"relation_examples": relation_examples_from(setup.tune())}
        return {**options, "threshold": calibrate_threshold(calibration_requests(setup), options).threshold}

    options, seconds = setup.once("retrieval-memory", calibrate)
    return Choice(options, "memory_merging.py's retrieval part: relation examples from the tune split, threshold "
                  "calibrated on it (seconds: the calibration)", seconds)


def grace_choice(setup: Setup, mode: str) -> Choice:
    from easyetcon_memory import calibrate_radius

    def calibrate() -> dict[str, Any]:
        radius = calibrate_radius(setup.fresh_model(), calibration_requests(setup), GRACE_OPTIONS, min_specificity=0.95).radius
        return {**GRACE_OPTIONS, "initial_radius": radius}

    options, seconds = setup.once("grace", calibrate)
    return Choice(options, "memory_merging.py's grace part: layer -1, initial_radius calibrated on the tune split "
                  "(locality specificity >= 0.95; seconds: the calibration)", seconds)


def lora_choice(setup: Setup, mode: str) -> Choice:
    return Choice(dict(LORA_OPTIONS), "memory_merging.py's --lora-options and --merge-every defaults (chosen on a small "
                  "preset world), the registered default strategy")


def serac_choice(setup: Setup, mode: str) -> Choice:
    from easyetcon_memory import train_serac_classifier

    def train() -> str:
        classifier = train_serac_classifier(setup.tune(), retriever="auto")
        return str(classifier.save(setup.scratch / "serac_classifier.safetensors"))

    path, seconds = setup.once("serac", train)
    return Choice({"classifier": path, "threshold": 0.5}, "serac_fact_world.py: the scope classifier trained on the "
                  "whole tune split (retriever auto), threshold 0.5 (seconds: the training)", seconds)


def mend_choice(setup: Setup, mode: str) -> Choice:
    from easyetcon_intrinsic.mend import train_mend

    chosen = results_file("mend_fact_world.json")["training"]

    def train() -> str:
        hypernetwork = train_mend(setup.fresh_model(), setup.tune(), chosen["options"])
        return str(hypernetwork.save(setup.scratch / "mend.safetensors"))

    path, seconds = setup.once("mend", train)
    return Choice({"hypernetwork": path}, f"mend_fact_world.py's choice on the tune split (trial {chosen['trial']!r}, "
                  "chosen with the default model), the hypernetwork trained for this model on the whole tune split "
                  "(seconds: the training)", seconds)


SPECIAL_CHOICES: dict[str, Callable[[Setup, str], Choice]] = {
    "ike": ike_choice, "wise": wise_choice, "retrieval-memory": retrieval_choice, "grace": grace_choice,
    "lora-merge": lora_choice, "serac": serac_choice, "mend": mend_choice,
}


def editor_choice(setup: Setup, editor: str, mode: str) -> Choice:
    tuned = configs_choice(setup, editor, mode)
    if tuned is not None:
        return tuned
    if editor in SPECIAL_CHOICES:
        return SPECIAL_CHOICES[editor](setup, mode)
    return Choice({}, "registered defaults (no tune-split choice in the repository)")


def entry_steps(setup: Setup, entry: Entry, mode: str) -> tuple[list[dict[str, Any]], str, float | None]:
    """The chain steps of ``entry`` for ``mode``, the source of their options and the training seconds."""
    if entry.kind == "editor":
        choice = editor_choice(setup, entry.editor, mode)
        return [{"editor": entry.editor, **choice.options}], choice.source, choice.training_seconds
    from easyetcon.spec import read_spec_file

    spec = read_spec_file(entry.chain_file)  # the chain's steps only: every entry runs both protocols
    steps, sources, training = [], [f"{relative(entry.chain_file)}"], []
    for step in spec["chain"]:
        if set(step) - {"editor", "label"}:
            steps.append(dict(step))
            continue
        choice = editor_choice(setup, step["editor"], mode)
        steps.append({**step, **choice.options})
        sources.append(f"step {step['editor']}: {choice.source}")
        if choice.training_seconds is not None:
            training.append(choice.training_seconds)
    return steps, "; ".join(sources), sum(training) if training else None


def relative(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


# ---- the entries ---------------------------------------------------------------------------

def all_entries(chains_folder: Path) -> list[Entry]:
    from easyetcon.plugins import get_host

    entries = []
    for info in get_host().registry.editors():
        if info.name in CONSOLIDATION_ONLY:
            entries.append(Entry(info.name, "editor", editor=info.name, skipped=CONSOLIDATION_ONLY[info.name]))
        elif info.name in EDITOR_CHAINS:
            entries.append(Entry(info.name, "chain", chain_file=chains_folder / EDITOR_CHAINS[info.name]))
        else:
            entries.append(Entry(info.name, "editor", editor=info.name))
    taken = {e.name for e in entries} | set(EDITOR_CHAINS.values())
    for path in sorted(chains_folder.glob("*.yaml")):
        if path.stem not in taken and path.name not in taken:
            entries.append(Entry(path.stem, "chain", chain_file=path))
    return entries


def choose_entries(entries: list[Entry], text: str | None) -> list[Entry]:
    if not text:
        return entries
    by_name = {e.name: e for e in entries}
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise SystemExit(f"unknown editor(s) or chain(s) {unknown}; choose from {', '.join(by_name)}")
    return [by_name[n] for n in names]


# ---- measuring -----------------------------------------------------------------------------

class PeakRss:
    """The peak growth of the process's resident set size while the block runs, in MiB."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.statm = Path("/proc/self/statm")
        self.method = "rss_sampled" if self.statm.is_file() else "ru_maxrss"
        self.page = os.sysconf("SC_PAGE_SIZE") if self.method == "rss_sampled" else 0

    def rss(self) -> int:
        return int(self.statm.read_text().split()[1]) * self.page

    def __enter__(self) -> PeakRss:
        gc.collect()
        if self.method == "rss_sampled":
            self.start = self.peak = self.rss()
            self.stop = threading.Event()
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        else:
            self.start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return self

    def _sample(self) -> None:
        while not self.stop.wait(self.interval):
            self.peak = max(self.peak, self.rss())

    def __exit__(self, *exc: Any) -> None:
        if self.method == "rss_sampled":
            self.stop.set()
            self.thread.join()
            self.peak = max(self.peak, self.rss())
        else:
            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    @property
    def description(self) -> str:
        if self.method == "rss_sampled":
            return f"RSS from /proc/self/statm sampled every {self.interval * 1000:.0f} ms"
        return "growth of getrusage's max RSS (a new peak of the process only)"

    @property
    def growth_mib(self) -> float:
        return max(self.peak - self.start, 0) / 2**20


def summarise(per_request: list[dict[str, Any]], keys: list[str]) -> dict[str, dict[str, Any]]:
    return {key: {**{m: mean([r[key].get(m) for r in per_request]) for m in METRICS}, "n": len(per_request)} for key in keys}


def single_edits(model: Any, requests: list[Any], steps: list[dict[str, Any]], baseline: Any) -> tuple[dict, list[float]]:
    """Each request edited alone by a fresh chain (no state carried over), scored and undone."""
    from easyetcon_eval import evaluate_edits

    from easyetcon.chain import EditChain

    original = model.state_hash()
    per_request, seconds, keys = [], [], []
    for request in requests:
        chain = EditChain(steps)
        started = time.perf_counter()
        result = chain.apply(model, [request])
        seconds.append(time.perf_counter() - started)
        try:
            scored = evaluate_edits(model, [request], protocols=PROTOCOLS, baseline=baseline)
        finally:
            result.undo(model)
        keys = list(scored.protocols)
        per_request.append(scored.per_request[0])
    if model.state_hash() != original:
        raise RuntimeError("undoing the single edits did not restore the model")
    return summarise(per_request, keys), seconds


def sequential_edits(model: Any, requests: list[Any], steps: list[dict[str, Any]], baseline: Any) -> tuple[dict, list[float]]:
    """One chain edits the requests one after another; scored after the last edit."""
    from easyetcon_eval import run_lifelong

    from easyetcon.chain import EditChain

    result = run_lifelong(model, EditChain(steps), requests, schedule="end", protocols=PROTOCOLS, mode="sequential",
                          batch_size=1, baseline=baseline, progress=False, report=False)
    scores = {key: {**{m: value.get(m) for m in METRICS}, "n": value.get("n")}
              for key, value in result.final.items() if isinstance(value, dict)}
    return scores, result.seconds_per_edit


def run_entry(setup: Setup, entry: Entry, mode: str, requests: list[Any], baseline: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"name": entry.name, "kind": entry.kind, "mode": mode, "edits": len(requests)}
    if entry.skipped:
        return {**row, "skipped": entry.skipped}
    try:
        steps, source, training_seconds = entry_steps(setup, entry, mode)
        row.update(steps=steps, options_source=source, training_seconds=training_seconds)
        model = setup.fresh_model()
        started = time.perf_counter()
        with PeakRss() as memory:
            run = single_edits if mode == "single" else sequential_edits
            scores, seconds = run(model, requests, steps, baseline)
        row.update(
            scores=scores, median_seconds_per_edit=median(seconds), mean_seconds_per_edit=mean(seconds),
            seconds_per_edit=seconds, peak_rss_growth_mib=memory.growth_mib, peak_memory_method=memory.method,
            wall_seconds=time.perf_counter() - started,
        )
    except Exception as error:  # a failing editor is a result of the leaderboard, not the end of it
        row.update(error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc(limit=8))
    return row


# ---- reporting -----------------------------------------------------------------------------

def table(data: dict[str, Any]) -> str:
    header = ("| editor | mode | protocol | " + " | ".join(METRICS)
              + " | s/edit | peak RSS MiB | training s |")
    lines = [header, "|" + "---|" * (len(METRICS) + 6)]
    sources = []
    for key, row in data["entries"].items():
        name, mode = row["name"] + (" (chain)" if row["kind"] == "chain" else ""), row["mode"]
        if "skipped" in row or "error" in row:
            what = f"skipped: {row['skipped']}" if "skipped" in row else f"**failed**: {' '.join(row['error'].split())[:300]}"
            what = what.replace("|", "\\|")
            lines.append(f"| {name} | {mode} | – | {what} |" + " |" * (len(METRICS) + 2))
            continue
        for protocol, values in row["scores"].items():
            lines.append(
                f"| {name} | {mode} | {protocol} | " + " | ".join(fmt(values.get(m)) for m in METRICS)
                + f" | {fmt(row['median_seconds_per_edit'])} | {fmt(row['peak_rss_growth_mib'], 1)}"
                + f" | {fmt(row.get('training_seconds'), 1)} |"
            )
        sources.append(f"- {name}, {mode}: {row['options_source']}")
    meta = data["meta"]
    intro = (f"Leaderboard on the {Path(meta['model']).name} world model ({meta['split']} split): {meta['single']} single edits (each alone, "
             f"undone) and {meta['sequential']} sequential edits (scored after the last). Locality is agreement with "
             f"the unedited model; s/edit is the median seconds of one chain application; peak RSS is the growth of "
             f"the process's resident memory while the entry ran ({meta['peak_memory']}).")
    return "\n".join([intro, "", *lines, "", "Options:", "", *sources, ""])


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in data["entries"].values() if "scores" in r]
    protocols = list(dict.fromkeys(p for r in rows for p in r["scores"]))
    figure, axes = plt.subplots(len(MODES), max(len(protocols), 1), figsize=(6 * max(len(protocols), 1), 5 * len(MODES)),
                                squeeze=False)
    for i, mode in enumerate(MODES):
        for j, protocol in enumerate(protocols or ["–"]):
            axis = axes[i][j]
            for row in rows:
                values = row["scores"].get(protocol) if row["mode"] == mode else None
                if values and values.get("reliability") is not None and values.get("locality") is not None:
                    marker = "s" if row["kind"] == "chain" else "o"
                    axis.scatter(values["locality"], values["reliability"], marker=marker)
                    axis.annotate(row["name"], (values["locality"], values["reliability"]), fontsize=8,
                                  xytext=(3, 3), textcoords="offset points")
            axis.set(xlim=(-0.05, 1.05), ylim=(-0.05, 1.05), xlabel="locality", ylabel="reliability",
                     title=f"{mode} edits, {protocol}")
            axis.grid(alpha=0.3)
    figure.suptitle(f"Leaderboard on {Path(data['meta']['model']).name} (squares: chains)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


# ---- the run -------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    run_arguments(parser)
    parser.set_defaults(model="wide")
    parser.add_argument("--single", type=int, default=100, help="single edits per entry (0: none)")
    parser.add_argument("--sequential", type=int, default=735, help="sequential edits per entry (0: none)")
    parser.add_argument("--editors", default=None, help="comma-separated editors and chains (default: all)")
    parser.add_argument("--split", default="test", choices=("tune", "test"), help="the split edited and scored")
    parser.add_argument("--edit-seed", type=int, default=0, help="which facts are edited, and to what")
    parser.add_argument("--configs", type=Path, default=None,
                        help="intrinsic editors' options (default: the file tuned for --model, see intrinsic_common)")
    parser.add_argument("--chains", type=Path, default=CHAINS, help="folder of the chains (*.yaml)")
    parser.add_argument("--retry-failed", action="store_true", help="run entries that failed in --out again")
    parser.add_argument("--table", type=Path, default=None, help="write the Markdown table here")
    parser.add_argument("--plot", type=Path, default=None, help="write the figure (PNG) here")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    configs_path = args.configs or SHIPPED_CONFIGS.get(args.model, DEFAULT_CONFIGS)
    entries = choose_entries(all_entries(args.chains), args.editors)
    modes = [(mode, count) for mode, count in (("single", args.single), ("sequential", args.sequential)) if count > 0]

    from easyetcon_eval import compute_baseline

    model, world, folder = load_world_model(args.model, args.dtype)
    meta = {"model": folder, "split": args.split, "edit_seed": args.edit_seed, "single": args.single,
            "sequential": args.sequential, "protocols": list(PROTOCOLS), "peak_memory": PeakRss().description}
    data: dict[str, Any] = {"meta": meta, "environment": environment(args), "entries": {}}
    if args.out.is_file():
        data = json.loads(args.out.read_text(encoding="utf-8"))
        asked = {k: meta[k] for k in ("model", "split", "edit_seed", "single", "sequential")}
        if {k: data["meta"].get(k) for k in asked} != asked:
            raise SystemExit(f"{args.out} holds a run with other settings ({data['meta']}); choose another --out")
    done = {key for key, row in data["entries"].items() if not ("error" in row and args.retry_failed)}
    with tempfile.TemporaryDirectory(prefix="leaderboard-") as scratch:
        setup = Setup(folder, world, Path(configs_path), Path(scratch), args.dtype)
        for mode, count in modes:
            pending = [e for e in entries if f"{e.name}/{mode}" not in done]
            if not pending:
                continue
            requests = world_requests(world, args.split, count, args.edit_seed)
            started = time.perf_counter()
            baseline = compute_baseline(model, requests, protocols=PROTOCOLS)
            print(f"{mode}: baseline of {len(requests)} requests in {time.perf_counter() - started:.0f}s", flush=True)
            for entry in pending:
                row = run_entry(setup, entry, mode, requests, baseline)
                data["entries"][f"{entry.name}/{mode}"] = row
                write_json(args.out, data)
                status = row.get("error") or row.get("skipped") or (
                    f"{fmt(row['median_seconds_per_edit'])} s/edit, " + ", ".join(
                        f"{p} rel {fmt(v['reliability'])} loc {fmt(v['locality'])}" for p, v in row["scores"].items()))
                print(f"{entry.name} ({mode}): {status}", flush=True)
    # entries in the order of the registry and the chains folder, whatever order they finished in
    order = [f"{e.name}/{m}" for e in all_entries(args.chains) for m in MODES]
    data["entries"] = {k: data["entries"][k] for k in sorted(data["entries"], key=lambda k: order.index(k) if k in order else len(order))}
    write_json(args.out, data)
    text = table(data)
    print("\n" + text)
    if args.table:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(text, encoding="utf-8")
    if args.plot:
        plot(data, args.plot)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
