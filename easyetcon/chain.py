"""Edit chains: configured editors applied in order, e.g. EtCon = TPSFT then GRPO, or a
retrieval memory in front of ROME.

``sequential`` mode takes the requests ``batch_size`` at a time and runs every step on each
batch before the next (lifelong editing); ``batch`` mode runs each step once on all requests.
If any step fails the model is restored to its state before :meth:`EditChain.apply`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from easyetcon.errors import ChainStepError, ConfigError, StepVetoed
from easyetcon.journal import ROLLED_BACK, Journal
from easyetcon.plugins import PluginHost, get_host
from easyetcon.records import EditRecord, WeightDelta, snapshot_weights, write_weights
from easyetcon.registry import EditorInfo, Family
from easyetcon.requests import EditRequest, parse_requests

Mode = Literal["sequential", "batch"]


@dataclass
class ChainStep:
    """One configured editor of a chain. ``name`` labels the step (and its memory store)."""

    info: EditorInfo
    editor: Any
    name: str

    @property
    def config(self) -> BaseModel:
        return self.editor.config


@dataclass
class StepContext:
    """What lifecycle hooks see about the step being run."""

    index: int
    name: str
    editor: str
    family: Family
    config: BaseModel
    requests: list[EditRequest]
    model: Any
    mode: Mode


@dataclass
class ChainResult:
    """The records of one :meth:`EditChain.apply`, oldest first."""

    records: list[EditRecord] = field(default_factory=list)
    journal: Journal | None = None

    def undo(self, model: Any) -> None:
        """Undo every step of this result, newest first, restoring the model bit-exactly."""
        for record in reversed(self.records):
            record.undo(model)
        self.records.clear()

    def seconds_by_step(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for record in self.records:
            totals[record.step_name] = totals.get(record.step_name, 0.0) + record.seconds
        return totals


StepLike = ChainStep | str | tuple[str, dict[str, Any] | BaseModel] | dict[str, Any]


class EditChain:
    """Configured editors applied in order.

    >>> chain = EditChain(["example-ft-last", ("example-ft-last", {"steps": 5})])  # doctest: +SKIP
    >>> result = chain.apply(model, requests, mode="sequential")                  # doctest: +SKIP

    A step is an editor name (default options), a ``(name, options)`` pair, a dict
    ``{"editor": name, **options}`` as in a chain spec file, or a :class:`ChainStep`.
    """

    def __init__(self, steps: Iterable[StepLike], *, host: PluginHost | None = None) -> None:
        self.host = host or get_host()
        self.steps: list[ChainStep] = []
        problems: list[str] = []
        for index, step in enumerate(steps):
            try:
                self.steps.append(self._make_step(step, index))
            except ConfigError as error:
                problems.extend(f"step {index}: {p}" for p in (error.problems or [str(error)]))
            except KeyError as error:
                problems.append(f"step {index}: {error}")
        if problems:
            raise ConfigError("invalid chain", problems)
        if not self.steps:
            raise ConfigError("a chain needs at least one step")
        names = [s.name for s in self.steps]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(
                f"step names must be unique; repeated: {', '.join(duplicates)} "
                f"(give one a 'label' in the spec)"
            )

    def _make_step(self, step: StepLike, index: int) -> ChainStep:
        if isinstance(step, ChainStep):
            return step
        label = None
        if isinstance(step, str):
            name, options = step, {}
        elif isinstance(step, tuple):
            name, options = step
        elif isinstance(step, dict):
            options = dict(step)
            name = options.pop("editor", None)
            label = options.pop("label", None)
            if not name:
                raise ConfigError(f"missing 'editor' (found keys: {sorted(step) or 'none'})")
        else:
            raise ConfigError(f"cannot make a chain step from {type(step).__name__}")
        info = self.host.registry.editor(name)
        return ChainStep(info, info.create(options), label or info.name)

    def __repr__(self) -> str:
        return "EditChain(" + " -> ".join(s.name for s in self.steps) + ")"

    # ---- running -----------------------------------------------------------------------------
    def apply(
        self,
        model: Any,
        requests: Sequence[EditRequest] | Sequence[dict],
        *,
        mode: Mode = "sequential",
        batch_size: int = 1,
        journal: Journal | str | Path | None = None,
        progress: bool = False,
    ) -> ChainResult:
        """Run every step on ``requests`` and return the records that undo them.

        On failure every step this call applied is undone (newest first), the journal marks
        them rolled back, and :class:`~easyetcon.errors.ChainStepError` names the step and the
        requests it was editing.
        """
        if mode not in ("sequential", "batch"):
            raise ConfigError(f"unknown mode {mode!r}; choose 'sequential' or 'batch'")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        requests = parse_requests(requests)
        if journal is not None and not isinstance(journal, Journal):
            journal = Journal(journal)
        if journal is not None:
            journal.add_requests(requests)
        groups = (
            [requests[i : i + batch_size] for i in range(0, len(requests), batch_size)]
            if mode == "sequential"
            else [requests]
        )
        result = ChainResult(journal=journal)
        positions: list[int] = []
        bar = _progress(total=len(groups) * len(self.steps), enabled=progress, description=repr(self))
        try:
            for group in groups:
                for index, step in enumerate(self.steps):
                    context = StepContext(
                        index, step.name, step.info.name, step.info.family, step.config,
                        list(group), model, mode,
                    )
                    record = self._run_step(step, context)
                    result.records.append(record)
                    if journal is not None:
                        positions.append(journal.append(record))
                    self.host.after_step(context, record, record.seconds)
                    bar.update(1)
        except BaseException:  # a failed step, or an interrupt between or inside steps
            for record in reversed(result.records):
                record.undo(model, check=False)
            if journal is not None and positions:
                journal.set_status(positions, ROLLED_BACK)
            result.records.clear()
            raise
        finally:
            bar.close()
        return result

    def _run_step(self, step: ChainStep, context: StepContext) -> EditRecord:
        model, requests = context.model, context.requests
        request_ids = [r.request_id for r in requests]
        started = time.perf_counter()
        record = EditRecord(
            step_index=context.index,
            step_name=step.name,
            editor=step.info.name,
            family=step.info.family.value,
            config=step.config.model_dump(mode="json"),
            request_ids=request_ids,
        )
        before: dict | None = None
        delta_holder: list = []
        try:
            vetoes = self.host.before_step(context)
            if vetoes:
                raise StepVetoed("; ".join(vetoes))
            if step.info.family is Family.MEMORY:
                store = model.memory_store(step.name)
                if step.name not in model.attached_memories:
                    step.editor.attach(model, store)
                    model.attached_memories.add(step.name)
                with store.tracking() as delta:
                    delta_holder.append(delta)
                    step.editor.edit(model, store, requests)
                record.memory = delta
            else:
                names = list(step.editor.weights_to_edit(model, requests))
                before = snapshot_weights(model, names)
                step.editor.edit(model, requests)
                record.weights = WeightDelta.between(before, snapshot_weights(model, names))
        except BaseException as error:
            # Restore this step's own partial change before the chain undoes earlier steps.
            if before is not None:
                write_weights(model, before)
            if delta_holder:
                model.memory_store(step.name).apply_states(delta_holder[0].before)
            self.host.step_error(context, error)
            if isinstance(error, KeyboardInterrupt):
                raise
            what = "was vetoed" if isinstance(error, StepVetoed) else "failed"
            raise ChainStepError(
                f"step {context.index} ({step.name}, editor {step.info.name!r}) {what} on "
                f"request(s) {', '.join(request_ids[:5])}{' ...' if len(request_ids) > 5 else ''}: "
                f"{type(error).__name__}: {error}. The model was restored to its state before "
                f"the chain.",
                step_index=context.index, editor=step.info.name, request_ids=request_ids,
            ) from error
        record.seconds = time.perf_counter() - started
        return record


class _NoProgress:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(*, total: int, enabled: bool, description: str) -> Any:
    if not enabled:
        return _NoProgress()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="step")
