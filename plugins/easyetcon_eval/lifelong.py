"""Lifelong editing runs: a chain applied to many requests, one group at a time, with retention
measured on everything edited so far, resumable from its journal.

Schedules:

* ``"each"`` — right after each chain application, score the requests it just edited
  (``LifelongResult.immediate``); retention on everything is measured once, at the end;
* ``"every:N"`` — after every N edits, score *all* requests edited so far (the retention curve);
* ``"end"`` — score everything once, after the last edit.

With ``out_dir`` the run keeps ``journal/`` (an :class:`easyetcon.Journal`), ``baseline-*.json``
(the unedited model's outputs, computed once) and ``lifelong.json`` (curve and timings, rewritten
atomically after every group). Started again on the same folder with a freshly loaded unedited
model, it replays the journal's complete groups onto the model, drops a group that was cut off
half-way, and continues with the first request not yet edited. Before the replay every editor
derives its statistics, prefixes and layer choice from that unedited model (``prepare``) and
rebuilds the state it carries between edits from the journal (``restore_state``), so a resumed
run is bit for bit the run that was not interrupted.
"""

from __future__ import annotations

import json
import logging
import random
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from easyetcon.errors import ConfigError, JournalError
from easyetcon.chain import prepare_editors
from easyetcon.journal import APPLIED, INDEX_FILE, ROLLED_BACK, Journal, write_json_atomic
from easyetcon.registry import Family
from easyetcon.requests import EditRequest, parse_requests
from easyetcon_eval.evaluate import (
    DEFAULT_JUDGE,
    Baseline,
    check_protocols,
    compute_baseline,
    evaluate_edits,
)

STATE_FILE = "lifelong.json"
STATE_VERSION = 1

# INFO lines the command line shows (where a run resumed)
log = logging.getLogger("easyetcon.eval")


class LifelongInterrupted(KeyboardInterrupt):
    """Ctrl-C during a lifelong run, with how far it got: ``edits`` of ``total`` requests are
    edited and (with ``out_dir``) in its journal, where a new call with the same arguments
    resumes."""

    def __init__(self, edits: int, total: int, out_dir: Path | None) -> None:
        super().__init__(f"lifelong run interrupted after {edits} of {total} edit(s)")
        self.edits, self.total, self.out_dir = edits, total, out_dir


def parse_schedule(schedule: str) -> tuple[str, int | None]:
    """``"each"`` / ``"end"`` / ``"every:N"`` -> ``(kind, N)``."""
    text = str(schedule).strip()
    if text in ("each", "end"):
        return text, None
    if text.startswith("every:"):
        try:
            every = int(text.split(":", 1)[1])
        except ValueError:
            every = 0
        if every >= 1:
            return "every", every
    raise ConfigError(f"unknown schedule {schedule!r}; use 'each', 'end' or 'every:N' with N >= 1")


@dataclass
class LifelongResult:
    """What a lifelong run measured.

    ``curve``: retention points ``{"edits": k, "<protocol>@<v>": {metric: value, ...}}`` over all
    requests edited so far (the last one is after the final edit); ``final``: the summary after
    the last edit; ``seconds_per_edit``: wall-clock seconds of each chain application;
    ``immediate``: with schedule ``"each"``, the summary of each application's own requests.
    """

    curve: list[dict[str, Any]]
    final: dict[str, Any]
    seconds_per_edit: list[float]
    immediate: list[dict[str, Any]] = field(default_factory=list)
    baseline_summary: dict[str, Any] | None = None
    schedule: str = "end"
    edits: int = 0
    resumed_at: int = 0
    chain: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    out_dir: Path | None = None
    #: step name -> the weights it changed (a layer chosen by ``"trace"`` shows here)
    edited_weights: dict[str, list[str]] = field(default_factory=dict)
    #: the per-request scores behind ``final`` (an ``EvaluationResult``), when this call scored
    #: them; ``None`` when a finished run was only read back. Not part of the saved state.
    final_evaluation: Any = field(default=None, repr=False)

    def note_edited_weights(self, records: Iterable[Any]) -> None:
        for record in records:
            if record.weights is not None and record.weights.changes:
                known = self.edited_weights.setdefault(record.step_name, [])
                known[:] = sorted({*known, *record.weights.changes})

    def summary(self) -> dict[str, Any]:
        return self.final

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "schedule": self.schedule,
            "edits": self.edits,
            "resumed_at": self.resumed_at,
            "chain": self.chain,
            "edited_weights": self.edited_weights,
            "settings": self.settings,
            "baseline": self.baseline_summary,
            "final": self.final,
            "curve": self.curve,
            "immediate": self.immediate,
            "seconds_per_edit": self.seconds_per_edit,
        }


def _as_chain(chain: Any) -> Any:
    from easyetcon.chain import EditChain

    if isinstance(chain, EditChain):
        return chain
    if isinstance(chain, (str, Path)):
        from easyetcon.spec import load_chain_spec

        return load_chain_spec(chain)[1]
    if isinstance(chain, Iterable):
        return EditChain(list(chain))
    raise ConfigError(f"cannot make an edit chain from {type(chain).__name__}; pass an EditChain, a list of steps or a spec file")


def describe_chain(chain: Any) -> list[dict[str, Any]]:
    return [
        {"step": s.name, "editor": s.info.name, "family": s.info.family.value, "config": s.config.model_dump(mode="json")}
        for s in chain.steps
    ]


def same_chain(recorded: Any, chain: Any) -> bool:
    """Whether a run's recorded chain (:func:`describe_chain`) is ``chain``. Each recorded config is
    read again by its step's config model first, so a run recorded before options moved into
    sections (flat keys; read with a deprecation warning) still matches the same options written now."""
    current = describe_chain(chain)
    if not isinstance(recorded, list) or len(recorded) != len(current):
        return False
    for stored, step, now in zip(recorded, chain.steps, current):
        if not isinstance(stored, dict) or {k: v for k, v in stored.items() if k != "config"} != {k: v for k, v in now.items() if k != "config"}:
            return False
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # the flat keys are ours, not the user's
                config = step.info.config_model.model_validate(stored.get("config")).model_dump(mode="json")
        except ValueError:  # pydantic's ValidationError: options this version no longer reads
            return False
        if config != now["config"]:
            return False
    return True


def latest_edits(requests: Sequence[EditRequest]) -> list[int]:
    """Positions of the requests no later one re-edits (same subject and prompt), in order:
    the newest edit of a fact is the one that should hold."""
    return sorted({(r.subject, r.prompt): i for i, r in enumerate(requests)}.values())


def _retention_subset(requests: Sequence[EditRequest], edited: int, sample: int | None) -> list[EditRequest]:
    """The first ``edited`` requests less those a later one re-edits (:func:`latest_edits`), or a
    stable random subset of ``sample`` of them (the same requests stay in the subset as the run
    grows)."""
    current = latest_edits(requests[:edited])
    if sample is None or len(current) <= sample:
        return [requests[i] for i in current]
    rng = random.Random(0)
    priority = [rng.random() for _ in range(len(requests))]
    chosen = sorted(current, key=lambda i: priority[i])[:sample]
    return [requests[i] for i in sorted(chosen)]


def _complete_groups(journal: Journal, groups: list[list[str]], steps: int) -> tuple[int, list[int], list[int]]:
    """How many leading groups the journal holds completely, the positions of their entries, and
    the applied positions of a group cut off half-way (to drop)."""
    entries = journal.entries(APPLIED)
    complete_positions: list[int] = []
    done = 0
    cursor = 0
    while done < len(groups) and cursor < len(entries):
        ids = groups[done]
        mine = []
        while cursor < len(entries) and entries[cursor]["request_ids"] == ids:
            mine.append(entries[cursor])
            cursor += 1
        if not mine:
            break
        if sorted(e["step_index"] for e in mine) != list(range(steps)):
            return done, complete_positions, [e["position"] for e in entries[cursor - len(mine):]]
        complete_positions.extend(e["position"] for e in mine)
        done += 1
    leftovers = [e["position"] for e in entries[cursor:]]
    return done, complete_positions, leftovers


def run_lifelong(
    model: Any,
    chain: Any,
    requests: Sequence[EditRequest] | Sequence[dict],
    *,
    schedule: str = "every:50",
    protocols: Iterable[str] | str = ("generation",),
    mode: str = "sequential",
    batch_size: int = 1,
    out_dir: str | Path | None = None,
    baseline: Baseline | bool | None = True,
    resume: bool = True,
    retention_sample: int | None = None,
    max_new_tokens: int = 48,
    eval_batch_size: int = 32,
    judge: str = DEFAULT_JUDGE,
    fluency: bool = False,
    progress: bool = True,
    report: bool = True,
) -> LifelongResult:
    """Apply ``chain`` to ``requests`` group by group and measure retention on a schedule.

    ``model`` must be unedited (a fresh load) — also when resuming. ``mode="sequential"`` applies
    the chain to ``batch_size`` requests at a time; ``mode="batch"`` applies it once to all.
    ``baseline=True`` computes the unedited model's outputs once (cached in ``out_dir``), so
    locality is also scored as agreement; pass a :class:`Baseline` to reuse one, or ``False``.
    ``retention_sample`` caps the number of requests scored at each retention point (a stable
    random subset). A request that edits a fact again (same subject and prompt) replaces the
    earlier one in every later retention point. With ``out_dir``, the run is journalled and resumable, and (``report=True``)
    ``results.json``, ``results.md`` and ``retention.png`` are written at the end.
    """
    requests = parse_requests(requests, source="lifelong requests")
    protocols = check_protocols(protocols)
    kind, every = parse_schedule(schedule)
    if mode not in ("sequential", "batch"):
        raise ConfigError(f"unknown mode {mode!r}; choose 'sequential' or 'batch'")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    if retention_sample is not None and retention_sample < 1:
        raise ConfigError(f"retention_sample must be at least 1, got {retention_sample}")
    ids = [r.request_id for r in requests]
    repeated = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
    if repeated:
        raise ConfigError(f"request ids must be unique in a lifelong run; repeated: {', '.join(repeated[:5])}")
    chain = _as_chain(chain)
    size = batch_size if mode == "sequential" else len(requests)
    groups = [requests[i : i + size] for i in range(0, len(requests), size)]
    group_ids = [[r.request_id for r in g] for g in groups]
    settings = {
        "protocols": list(protocols), "mode": mode, "batch_size": batch_size, "schedule": schedule,
        "retention_sample": retention_sample, "max_new_tokens": max_new_tokens, "judge": judge,
        "prompt_format": model.prompt_format.describe(),
    }
    eval_options = dict(protocols=protocols, max_new_tokens=max_new_tokens, batch_size=eval_batch_size, judge=judge)

    out = Path(out_dir) if out_dir is not None else None
    journal: Journal | None = None
    state: dict[str, Any] = {}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        journal_dir = out / "journal"
        if (journal_dir / INDEX_FILE).exists() and not resume:
            raise ConfigError(f"{str(out)!r} already holds a lifelong run; pass resume=True to continue it or choose a new folder")
        if (out / STATE_FILE).is_file():
            state = _read_state(out / STATE_FILE)

    # The baseline needs the unedited model, so it comes before any replay.
    if baseline is True:
        baseline = compute_baseline(model, requests, cache_dir=out, progress=progress, **eval_options)
    elif not baseline:
        baseline = None

    done_groups, resuming = 0, False
    replay_positions: list[int] = []
    partial: list[int] = []
    chain_description = describe_chain(chain)
    if out is not None:
        journal_dir = out / "journal"
        if (journal_dir / INDEX_FILE).exists():
            journal = Journal(journal_dir)
            meta = journal.metadata
            journal.check_base(model, what=f"the model given to resume the lifelong run in {str(out)!r}")
            if not same_chain(meta.get("chain"), chain):
                raise JournalError(f"the lifelong run in {str(out)!r} used another chain: {meta.get('chain')}")
            asked = meta.get("prompt_format", {"context": "question"})
            if asked != settings["prompt_format"]:
                raise JournalError(
                    f"the lifelong run in {str(out)!r} asked the model with prompt format {asked}, this "
                    f"one with {settings['prompt_format']}; resume it with the same prompt_format"
                )
            if meta.get("groups") != group_ids:
                raise JournalError(
                    f"the lifelong run in {str(out)!r} was started with other requests or batching "
                    f"(mode/batch_size); pass the same requests and options to resume it"
                )
            done_groups, positions, partial = _complete_groups(journal, group_ids, len(chain.steps))
            if partial:
                journal.set_status(partial, ROLLED_BACK)
            replay_positions = positions
            resuming = True
        else:
            journal = Journal(journal_dir, metadata={
                "chain": chain_description, "groups": group_ids, "prompt_format": settings["prompt_format"],
            })
            journal.record_base(model)

    edited = sum(len(g) for g in groups[:done_groups])
    if resuming:
        _log_resume(out, edited, requests, groups[done_groups] if done_groups < len(groups) else None, partial)
    curve = [p for p in state.get("curve", []) if p["edits"] <= edited] if done_groups else []
    immediate = [p for p in state.get("immediate", []) if p["edits"] <= edited] if done_groups else []
    seconds = list(state.get("seconds_per_edit", []))[:done_groups] if done_groups else []
    if journal is not None and len(seconds) < done_groups:  # state written before the crash lagged
        seconds = _seconds_from_journal(journal, group_ids[:done_groups])
    result = LifelongResult(
        curve=curve, final={}, seconds_per_edit=seconds, immediate=immediate,
        baseline_summary=baseline.summary if baseline is not None else None, schedule=schedule,
        edits=edited, resumed_at=edited, chain=chain_description, settings=settings, out_dir=out,
    )

    def retention_point(count: int) -> dict[str, Any]:
        subset = _retention_subset(requests, count, retention_sample)
        evaluation = evaluate_edits(model, subset, baseline=baseline, fluency=fluency, progress=progress, **eval_options)
        result.final_evaluation = evaluation  # the last point scored is the final one
        return {"edits": count, **evaluation.summary()}

    def save_state() -> None:
        if out is not None:
            write_json_atomic(out / STATE_FILE, result.to_json())

    def due(before: int, count: int) -> bool:
        return kind == "every" and count // every > before // every and count < len(requests)

    try:
        if done_groups:
            # Editors derive their statistics, prefixes and layers from the unedited model, as the
            # uninterrupted run did, before any step is replayed.
            prepare_editors(chain.steps, model, groups[0])
            by_id = {r.request_id: r for r in requests}
            steps, count = len(chain.steps), 0
            saved_curve, saved_immediate = {p["edits"] for p in result.curve}, {p["edits"] for p in result.immediate}
            for g in range(done_groups):
                for position in replay_positions[g * steps : (g + 1) * steps]:
                    record = journal.record(position)
                    record.redo(model)
                    result.note_edited_weights([record])
                    restore = getattr(chain.steps[record.step_index].editor, "restore_state", None)
                    if callable(restore):
                        restore(model, [by_id[i] for i in record.request_ids], record.editor_state)
                before, count = count, count + len(groups[g])
                # A point the interrupted run measured but had not saved yet is measured again here,
                # on the same weights.
                if kind == "each" and count not in saved_immediate:
                    summary = evaluate_edits(model, groups[g], baseline=baseline, **eval_options).summary()
                    result.immediate.append({"edits": count, **summary})
                elif due(before, count) and count not in saved_curve:
                    result.curve.append(retention_point(count))
            result.curve.sort(key=lambda p: p["edits"])
            result.immediate.sort(key=lambda p: p["edits"])
            for step in chain.steps:
                if step.info.family is Family.MEMORY and model.attached_memories.get(step.name) is not step.editor and step.name in model.memories:
                    step.editor.attach(model, model.memory_store(step.name))
                    model.attached_memories[step.name] = step.editor

        score_line = _ScoreLine()
        for point in result.immediate:
            score_line.add_immediate(point)
        if result.curve:
            score_line.set_retention(result.curve[-1])
        bar = _edit_bar(len(requests), edited, progress, repr(chain))
        try:
            bar.set_postfix_str(score_line.text())
            for group in groups[done_groups:]:
                started = time.perf_counter()
                applied = chain.apply(model, group, mode="batch", journal=journal)
                result.seconds_per_edit.append(time.perf_counter() - started)
                result.note_edited_weights(applied.records)
                before, edited = edited, edited + len(group)
                result.edits = edited
                bar.update(len(group))
                if kind == "each":
                    summary = evaluate_edits(model, group, baseline=baseline, **eval_options).summary()
                    result.immediate.append({"edits": edited, **summary})
                    score_line.add_immediate(result.immediate[-1])
                elif due(before, edited):
                    result.curve.append(retention_point(edited))
                    score_line.set_retention(result.curve[-1])
                bar.set_postfix_str(score_line.text())
                save_state()
            if not result.curve or result.curve[-1]["edits"] != edited:
                result.curve.append(retention_point(edited))
                if not result.immediate:
                    score_line.set_retention(result.curve[-1])
                    bar.set_postfix_str(score_line.text())
        finally:
            bar.close()
    except KeyboardInterrupt as interrupt:
        raise LifelongInterrupted(result.edits, len(requests), out) from interrupt
    result.final = {k: v for k, v in result.curve[-1].items() if k != "edits"}
    save_state()
    if out is not None and report:
        from easyetcon_eval.reports import write_report

        write_report(out, result)
    return result


def _log_resume(
    out: Path, edited: int, requests: Sequence[EditRequest], next_group: Sequence[EditRequest] | None, dropped: list[int],
) -> None:
    if dropped:
        log.info(f"resume: {len(dropped)} step(s) of a chain application cut off half-way were rolled back; it is applied again")
    if next_group is not None and not edited:
        log.info(f"resuming the run in {str(out)!r} from its first request (no chain application had finished)")
    elif next_group is None:
        log.info(f"resuming the run in {str(out)!r}: all {edited} edit(s) are in its journal; replaying them to score what was not saved")
    else:
        log.info(
            f"resuming the run in {str(out)!r} at edit {edited + 1} of {len(requests)} (request "
            f"{next_group[0].request_id!r}): the first {edited} edit(s) are replayed from its journal"
        )


def _read_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise JournalError(
            f"{str(path)!r} is damaged ({error}); delete it to resume the run without its earlier "
            f"retention points (the edits themselves are in the journal)"
        ) from error
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise JournalError(f"{str(path)!r} is not a lifelong state file of version {STATE_VERSION}; delete it to resume")
    return state


def _seconds_from_journal(journal: Journal, group_ids: list[list[str]]) -> list[float]:
    totals: list[float] = []
    entries = journal.entries(APPLIED)
    for ids in group_ids:
        totals.append(sum(e["seconds"] for e in entries if e["request_ids"] == ids))
    return totals


class _ScoreLine:
    """The progress bar's postfix: the latest retention score, or with schedule ``each`` the
    running mean over the chain applications so far (kept as sums, so it costs the same at
    every edit), of the generation protocol where it was measured, else of the first protocol."""

    SHOWN = ("reliability", "locality")

    def __init__(self) -> None:
        self.sums: dict[str, dict[str, list[float]]] = {}  # key -> metric -> [weighted sum, weight]
        self.latest: dict[str, Any] | None = None

    def add_immediate(self, point: dict[str, Any]) -> None:
        for key, row in point.items():
            if not isinstance(row, dict):
                continue
            for metric in self.SHOWN:
                if row.get(metric) is not None:
                    weight = row.get("n", 1) - (row.get("skipped") or {}).get(metric, 0)
                    total = self.sums.setdefault(key, {}).setdefault(metric, [0.0, 0.0])
                    total[0] += row[metric] * weight
                    total[1] += weight

    def set_retention(self, point: dict[str, Any]) -> None:
        self.latest = point

    def text(self) -> str:
        if self.sums:
            rows = {k: {m: s / w for m, (s, w) in metrics.items() if w} for k, metrics in self.sums.items()}
            what = "just edited, mean"
        elif self.latest is not None:
            rows = {k: v for k, v in self.latest.items() if isinstance(v, dict)}
            what = f"after {self.latest['edits']} edits"
        else:
            return ""
        keys = [k for k, row in rows.items() if row.get("reliability") is not None]
        if not keys:
            return ""
        key = next((k for k in keys if k.startswith("generation@")), keys[0])
        scores = ", ".join(f"{m} {rows[key][m]:.2f}" for m in self.SHOWN if rows[key].get(m) is not None)
        return f"{key} ({what}): {scores}"


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def _edit_bar(total: int, initial: int, enabled: bool, description: str) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=description, unit="edit")
