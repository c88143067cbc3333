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

import torch

from easyetcon.devices import require_on_device
from easyetcon.errors import ChainStepError, ConfigError, EasyEtconError, StepVetoed, UndoError
from easyetcon.journal import ROLLED_BACK, UNDONE, Journal
from easyetcon.plugins import PluginHost, get_host
from easyetcon.records import (
    EditRecord,
    Factors,
    WeightDelta,
    check_digests,
    non_finite_count,
    snapshot_weights,
    tensor_digest,
    write_weights,
)
from easyetcon.registry import EditorInfo, Family
from easyetcon.requests import EditRequest, parse_requests, require_unique_ids

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


class NonFiniteEditError(EasyEtconError):
    """A step left NaN or infinite values in a weight or memory entry, or changed a weight by
    more than :data:`MAX_RELATIVE_CHANGE` times its size (the step is undone)."""


class UndeclaredWriteError(EasyEtconError):
    """A step changed parameters its editor did not list in ``weights_to_edit``."""


@dataclass
class ChainResult:
    """The records of one :meth:`EditChain.apply`, oldest first.

    ``originals`` holds, for each weight the call changed, its value before the call: one copy
    per weight, however many steps changed it, so :meth:`undo` is bit-exact and memory stays
    flat in the number of steps. With a journal, each record's tensors are released once its
    step is on disk and its ``after_step`` hooks have run (digests and forms stay); load them
    with ``journal.record(position)``, ``positions`` giving each record's place in the journal.
    """

    records: list[EditRecord] = field(default_factory=list)
    journal: Journal | None = None
    positions: list[int] = field(default_factory=list)
    originals: dict[str, torch.Tensor] = field(default_factory=dict)

    def undo(self, model: Any) -> None:
        """Undo every step of this result, restoring the model bit-exactly (and marking the
        steps undone in the journal). Refused, with nothing changed, if the weights are no
        longer as this result left them."""
        first_before: dict[str, str] = {}
        last_after: dict[str, str] = {}
        for record in self.records:
            for name, change in (record.weights.changes if record.weights is not None else {}).items():
                first_before.setdefault(name, change.before)
                last_after[name] = change.after
        check_digests(model, last_after, "undo")
        wrong = [n for n, digest in first_before.items() if tensor_digest(self.originals[n]) != digest]
        if wrong:
            raise UndoError(f"cannot undo: the kept values of {', '.join(wrong[:3])} before the chain do not match their digests")
        write_weights(model, {n: self.originals[n] for n in first_before})
        for record in reversed(self.records):
            if record.memory is not None:
                model.memory_store(record.memory.store).apply_states(record.memory.before)
        if self.journal is not None and self.positions:
            self.journal.set_status(self.positions, UNDONE)
        self.records.clear()
        self.positions.clear()
        self.originals.clear()

    def seconds_by_step(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for record in self.records:
            totals[record.step_name] = totals.get(record.step_name, 0.0) + record.seconds
        return totals


def prepare_editors(steps: Sequence[ChainStep], model: Any, requests: Sequence[EditRequest]) -> None:
    """Call each editor's optional ``prepare`` (see :class:`~easyetcon.protocols.PreparedEditor`).
    On a model with offloaded weights, first check that no step writes one, so that does not
    fail only after the statistics are read."""
    offloaded = any(p.device.type == "meta" for p in model.torch_model.parameters())
    for index, step in enumerate(steps):
        prepare = getattr(step.editor, "prepare", None)
        try:
            if offloaded and step.info.family is not Family.MEMORY:
                require_on_device(model, step.editor.weights_to_edit(model, list(requests)))
            if not callable(prepare):
                continue
            prepare(model, list(requests))
        except (EasyEtconError, ValueError, RuntimeError) as error:
            request_ids = [r.request_id for r in requests]
            raise ChainStepError(
                f"step {index} ({step.name}, editor {step.info.name!r}) failed while preparing on "
                f"request(s) {', '.join(request_ids[:5])}{' ...' if len(request_ids) > 5 else ''}: "
                f"{type(error).__name__}: {error}. The model was not changed.",
                step_index=index, editor=step.info.name, request_ids=request_ids,
            ) from error


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
        release_tensors: bool = False,
    ) -> ChainResult:
        """Run every step on ``requests`` and return the records that undo them.

        ``release_tensors`` drops each record's tensors after its step, as a journal does (for a
        process that keeps none, such as a second process of ``accelerate launch``); digests stay,
        and :meth:`ChainResult.undo` still works.

        On failure every step this call applied is undone (newest first), the journal marks
        them rolled back, and :class:`~easyetcon.errors.ChainStepError` names the step and the
        requests it was editing.
        """
        if mode not in ("sequential", "batch"):
            raise ConfigError(f"unknown mode {mode!r}; choose 'sequential' or 'batch'")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        requests = parse_requests(requests)
        require_unique_ids(requests, source="apply()")
        if journal is not None and not isinstance(journal, Journal):
            journal = Journal(journal)
        if journal is not None:
            if not len(journal):
                journal.record_base(model)
            journal.add_requests(requests)
        groups = (
            [requests[i : i + batch_size] for i in range(0, len(requests), batch_size)]
            if mode == "sequential"
            else [requests]
        )
        result = ChainResult(journal=journal)
        bar = _progress(total=len(groups) * len(self.steps), enabled=progress, description=repr(self))
        try:
            if groups:
                prepare_editors(self.steps, model, groups[0])
            for group in groups:
                for index, step in enumerate(self.steps):
                    context = StepContext(
                        index, step.name, step.info.name, step.info.family, step.config,
                        list(group), model, mode,
                    )
                    record, before = self._run_step(step, context)
                    for name in record.weights.changes if record.weights is not None else {}:
                        result.originals.setdefault(name, before[name])
                    result.records.append(record)
                    if journal is not None:
                        changed = record.weights.changes if record.weights is not None else {}
                        base = {n: before[n] for n in journal.needs_base(changed)}
                        result.positions.append(journal.append(record, base=base, model=model))
                    del before
                    self.host.after_step(context, record, record.seconds)
                    if journal is not None or release_tensors:
                        record.release_tensors()  # on disk now (or not wanted): memory stays flat over a long apply()
                    bar.update(1)
        except BaseException:  # a failed step, or an interrupt between or inside steps
            write_weights(model, result.originals)
            for record in reversed(result.records):
                if record.memory is not None:
                    model.memory_store(record.memory.store).apply_states(record.memory.before)
            if journal is not None and result.positions:
                journal.set_status(result.positions, ROLLED_BACK)
            result.records.clear()
            raise
        finally:
            bar.close()
        return result

    def _run_step(self, step: ChainStep, context: StepContext) -> tuple[EditRecord, dict[str, torch.Tensor]]:
        """Run one step and check it: every changed value finite, no undeclared parameter
        written. Returns the record and the declared weights' values before the step."""
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
        before: dict[str, torch.Tensor] = {}
        delta_holder: list = []
        versions = _parameter_versions(model)
        factors: dict[str, Factors] = {}

        def collect(name: str, left: torch.Tensor, right: torch.Tensor) -> None:
            factors.setdefault(name, []).append((left, right))

        unrestorable: list[str] = []
        try:
            vetoes = self.host.before_step(context)
            if vetoes:
                raise StepVetoed("; ".join(vetoes))
            if step.info.family is Family.MEMORY:
                store = model.memory_store(step.name)
                # this step's own editor, not one a previous chain (or a restore) attached for the name
                if model.attached_memories.get(step.name) is not step.editor:
                    step.editor.attach(model, store)
                    model.attached_memories[step.name] = step.editor
                with store.tracking() as delta:
                    delta_holder.append(delta)
                    step.editor.edit(model, store, requests)
                record.memory = delta
                bad = [f"entry {i!r} {what}" for i, e in delta.after.items() if e is not None for what in e.non_finite()]
                if bad:
                    raise NonFiniteEditError(f"memory store {step.name!r} got non-finite values: {', '.join(bad[:3])}")
            else:
                names = list(step.editor.weights_to_edit(model, requests))
                require_on_device(model, names)
                before = snapshot_weights(model, names)
                model._low_rank_listeners.append(collect)
                try:
                    step.editor.edit(model, requests)
                finally:
                    model._low_rank_listeners.remove(collect)
                after = snapshot_weights(model, names)
                _check_finite(model, after, before)
                devices = {n: model.parameter(n).device for n in names}
                record.weights = WeightDelta.between(before, after, factors, devices)
            unrestorable = _undeclared_writes(model, versions, set(before))
            if unrestorable:
                raise UndeclaredWriteError(
                    f"it changed parameter(s) {', '.join(unrestorable[:5])}{' ...' if len(unrestorable) > 5 else ''} "
                    f"that its editor did not list in weights_to_edit"
                )
            journal_state = getattr(step.editor, "journal_state", None)
            if callable(journal_state):
                record.editor_state = dict(journal_state(model, requests) or {})
        except BaseException as error:
            # Restore this step's own partial change before the chain undoes earlier steps.
            if before:
                write_weights(model, before)
            if delta_holder:
                model.memory_store(step.name).apply_states(delta_holder[0].before)
            self.host.step_error(context, error)
            if not isinstance(error, Exception):  # Ctrl-C, SIGTERM (Terminated), exit: not a failed step
                raise
            what = "was vetoed" if isinstance(error, StepVetoed) else "failed"
            if not unrestorable:
                unrestorable = _undeclared_writes(model, versions, set(before))
            restored = (
                "The model was restored to its state before the chain."
                if not unrestorable else
                f"The declared weights and earlier steps were restored, but {', '.join(unrestorable[:5])} "
                f"could not be (no copy was kept of undeclared parameters): reload the model before using it."
            )
            raise ChainStepError(
                f"step {context.index} ({step.name}, editor {step.info.name!r}) {what} on "
                f"request(s) {', '.join(request_ids[:5])}{' ...' if len(request_ids) > 5 else ''}: "
                f"{type(error).__name__}: {error}. {restored}",
                step_index=context.index, editor=step.info.name, request_ids=request_ids,
            ) from error
        record.seconds = time.perf_counter() - started
        return record, before


def _parameter_versions(model: Any) -> dict[str, tuple[int, int]]:
    """Each parameter's in-place version counter and storage address: writes bump one or the other."""
    return {name: (p._version, p.data_ptr()) for name, p in model.torch_model.named_parameters()}


def _undeclared_writes(model: Any, versions: dict[str, tuple[int, int]], declared: set[str]) -> list[str]:
    now = _parameter_versions(model)
    changed = [n for n in now.keys() | versions.keys() if n not in declared and now.get(n) != versions.get(n)]
    return sorted(changed)


def _check_finite(model: Any, after: dict[str, torch.Tensor], before: dict[str, torch.Tensor]) -> None:
    for name, value in after.items():
        count = non_finite_count(value)
        if count and not non_finite_count(before[name]):
            dtype = model.parameter(name).dtype
            cause = (
                f"the model is in {str(dtype).replace('torch.', '')}, whose range this update overflowed; "
                f"load it in float32 or lower the learning rate"
                if dtype in (torch.float16, torch.bfloat16)
                else "the update diverged: lower the learning rate (or add a ridge / fewer steps)"
            )
            raise NonFiniteEditError(f"parameter {name!r} has {count} non-finite value(s) after the edit; {cause}")
        old = before[name].to(torch.float64)
        scale = float(old.norm())
        change = float((value.to(torch.float64) - old).norm())
        if scale > 0 and change > MAX_RELATIVE_CHANGE * scale:
            raise NonFiniteEditError(
                f"parameter {name!r} changed by {change / scale:.3g} times its own size in one step "
                f"(more than {MAX_RELATIVE_CHANGE:g}); the update diverged: lower the learning rate"
            )


#: A step that changes a weight by more than this many times its norm is taken as diverged: even
#: on tiny random models, whose weights are near zero, editors stay orders of magnitude below it.
MAX_RELATIVE_CHANGE = 1e6


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
