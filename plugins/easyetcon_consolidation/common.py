"""What TPSFT and GRPO share: which FFN weights train (and what holds them), which prompts they
train on, and when a consolidator fires in a lifelong (sequential) run."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from easyetcon.errors import ConfigError
from easyetcon.questions import derive_question
from easyetcon.requests import EditRequest

# The key statistics of ROME/MEMIT/AlphaEdit (streamed, cached on disk) serve the preservation term.
from easyetcon.statistics import LayerStatistics, StatisticsConfig

FfnModules = Literal["mlp_out", "mlp_in", "mlp"]


class OutputPreservation(BaseModel):
    """Hold the trained MLP output projections to what they say on ordinary text.

    MEMIT's preservation objective as a penalty: with ``C = E[k kᵀ]`` the second moment of the
    projection's input keys over a text source, each stage adds ``λ · tr(ΔW C ΔWᵀ) / c̄`` to its
    loss, where ``ΔW`` is the weight's change since the stage began and ``c̄ = tr(C) / d`` makes
    ``λ`` independent of the activation scale. Directions ordinary text uses are expensive to
    move; directions only the edit's keys use stay cheap.
    """

    model_config = ConfigDict(extra="forbid")

    weight: float = Field(gt=0, description="λ, the penalty's weight (0 < λ; larger keeps more, edits less).")
    statistics: StatisticsConfig = Field(
        default_factory=lambda: StatisticsConfig(progress=False), description="Where C comes from."
    )


class FfnSelection(BaseModel):
    """Which feed-forward weights a consolidator may change."""

    model_config = ConfigDict(extra="forbid")

    layers: list[int] | None = Field(
        default=None, description="Layer indices (negative count from the end); None = every layer."
    )
    modules: FfnModules = Field(
        default="mlp_out", description="mlp_out (down projection), mlp_in (up projection) or mlp (both)."
    )
    preserve: OutputPreservation | None = Field(
        default=None, description="Penalise changing the output projections' outputs on ordinary text; off when null."
    )

    @model_validator(mode="after")
    def _preserve_needs_output_projection(self) -> FfnSelection:
        if self.preserve is not None and self.modules != "mlp_out":
            raise ValueError(
                f"option 'preserve' holds the MLP output projection (its keys' statistics), but modules is "
                f"{self.modules!r}: set modules to 'mlp_out' or drop 'preserve'"
            )
        return self


def selected_layers(model: Any, selection: FfnSelection) -> list[int]:
    """The selection's layer indices, non-negative and checked against the model's depth."""
    count = model.adapter.num_layers(model.torch_model)
    layers = range(count) if selection.layers is None else selection.layers
    for layer in layers:
        if not -count <= layer < count:
            raise ConfigError(f"option 'layers': layer {layer} does not exist (the model has {count}: 0..{count - 1})")
    return list(dict.fromkeys(layer % count for layer in layers))


def ffn_weight_names(model: Any, selection: FfnSelection) -> list[str]:
    """Parameter names of the selected FFN weights, via the model's architecture adapter."""
    kinds = {"mlp_out": ("mlp_out",), "mlp_in": ("mlp_in",), "mlp": ("mlp_in", "mlp_out")}[selection.modules]
    return [model.adapter.weight_name(kind, layer) for layer in selected_layers(model, selection) for kind in kinds]


def preservation_statistics(selection: FfnSelection) -> LayerStatistics | None:
    """A consolidator's source of ``C`` (kept for its lifetime: computed once per model)."""
    return LayerStatistics(selection.preserve.statistics) if selection.preserve is not None else None


@contextmanager
def preserving_outputs(model: Any, selection: FfnSelection, statistics: LayerStatistics | None) -> Iterator[None]:
    """While active, the gradient of each selected ``mlp_out`` weight carries the penalty of
    :class:`OutputPreservation` (``2λ ΔW C / c̄``), measured from the weights at entry. A gradient
    hook rather than a loss term, so it also holds inside trainers we do not write (TRL's GRPO).
    Enter it inside :func:`easyetcon.training.trainable_only`: in a float16/bfloat16 model the
    module's weight is then the fp32 master the optimiser steps, and the hook sits on that.
    No-op when ``selection.preserve`` is null."""
    if selection.preserve is None or statistics is None:
        yield
        return
    layers = selected_layers(model, selection)
    moments = statistics.get(model, layers)
    strength = 2.0 * selection.preserve.weight
    handles = []
    try:
        for layer in layers:
            module = model.adapter.module(model.torch_model, "mlp_out", layer)
            parameter = module.weight
            mom2 = moments[layer].mom2.to(device=parameter.device, dtype=torch.float32)
            scaled = mom2 * (mom2.shape[0] / torch.trace(mom2).clamp(min=1e-12))
            start = parameter.detach().clone()
            transposed = model.adapter.is_transposed(module)

            def add_penalty(grad: torch.Tensor, parameter=parameter, start=start, scaled=scaled, transposed=transposed):
                change = (parameter.detach() - start).float()
                # (out, in) weights: ΔW C; GPT-2's Conv1D stores (in, out): C ΔW
                penalty = scaled @ change if transposed else change @ scaled
                return grad + (strength * penalty).to(grad.dtype)

            handles.append(parameter.register_hook(add_penalty))
        yield
    finally:
        for handle in handles:
            handle.remove()


AnswerFormat = Literal["auto", "tagged", "reply", "continuation"]
ResolvedAnswerFormat = Literal["tagged", "reply", "continuation"]


def answer_format_field() -> Any:
    """The ``answer_format`` option of TPSFT (``prompts.answer_format``) and GRPO (``answer_format``)."""
    return Field(
        default="auto",
        description="How the model answers a question prompt, which TPSFT teaches and GRPO's format reward "
        "checks: tagged ('<answer> X </answer>'), reply (a chat model's reply 'X.' ending its turn), "
        "continuation (a plain continuation ' X.'), or auto: tagged for metadata['qa_prompts'] (the fact "
        "world teaches the tags), and for a derived or templated question reply when the model is asked "
        "through its chat template, else continuation.",
    )


def resolve_answer_format(answer_format: AnswerFormat, *, from_request: bool, chat_model: bool) -> ResolvedAnswerFormat:
    """The answer format of one question prompt: ``from_request`` when it came from the request's
    ``metadata['qa_prompts']``, ``chat_model`` when the model is asked through its chat template."""
    if answer_format != "auto":
        return answer_format
    if from_request:
        return "tagged"
    return "reply" if chat_model else "continuation"


def question_completion(target: str, answer_format: ResolvedAnswerFormat) -> str:
    """What a question prompt is answered with in ``answer_format`` (the end of a chat reply's turn,
    its end-of-sequence token, is added where the batch is built)."""
    return f"<answer> {target} </answer>" if answer_format == "tagged" else f"{target}."


class PromptSources(BaseModel):
    """Which prompts of a request consolidation trains on (never its rephrase prompts: those
    measure generalisation)."""

    model_config = ConfigDict(extra="forbid")

    cloze: bool = Field(default=True, description="The edit prompt itself, completed by ' <target>.'")
    questions: bool = Field(
        default=True,
        description="Question prompts: metadata['qa_prompts'] (the fact world provides them), else "
        "question_template, else one derived from the request (easyetcon.questions), answered in answer_format.",
    )
    question_template: str | None = Field(
        default=None,
        description="Builds the question prompt of a request without metadata['qa_prompts'], e.g. "
        "'Question: {prompt}? Answer:' (fields: prompt, subject); null derives one (easyetcon.questions).",
    )
    answer_format: AnswerFormat = answer_format_field()


def question_forms(
    request: EditRequest, sources: PromptSources, *, chat_model: bool
) -> list[tuple[str, ResolvedAnswerFormat]]:
    """The question prompts of ``request``, each with the answer format it is answered in:
    ``metadata['qa_prompts']``, else ``question_template``, else a derived question."""
    if not sources.questions:
        return []
    found = list(request.metadata.get("qa_prompts") or [])
    if found:
        prompts = found
    elif sources.question_template:
        prompts = [sources.question_template.format(prompt=request.prompt, subject=request.subject)]
    else:
        prompts = [derive_question(request)]
    answer_format = resolve_answer_format(sources.answer_format, from_request=bool(found), chat_model=chat_model)
    return [(prompt, answer_format) for prompt in prompts]


def is_chat_model(model: Any) -> bool:
    """Whether ``model`` is asked through its chat template (its prompt format's context)."""
    return model.prompt_format.context == "chat"


def training_pairs(
    request: EditRequest, sources: PromptSources, *, chat_model: bool = False
) -> list[tuple[str, str, ResolvedAnswerFormat | None]]:
    """``(prompt, completion, answer format)`` triples teaching the new fact in the selected forms
    (the cloze prompt's format is None: it is completed as a sentence)."""
    pairs: list[tuple[str, str, ResolvedAnswerFormat | None]] = []
    if sources.cloze:
        pairs.append((request.prompt, f"{request.target_new}.", None))
    for prompt, answer_format in question_forms(request, sources, chat_model=chat_model):
        pairs.append((prompt, question_completion(request.target_new, answer_format), answer_format))
    return pairs


class LifelongSchedule(BaseModel):
    """When a consolidator runs inside a sequential chain."""

    model_config = ConfigDict(extra="forbid")

    every: int = Field(default=1, ge=1, description="Run on every Nth chain application (1 = every time).")
    scope: Literal["current", "since_last", "all"] = Field(
        default="current",
        description="Consolidate the current requests, those seen since this consolidator last ran "
        "(with every=N: the last N applications), or every request seen so far.",
    )


class ScheduleState:
    """Counts chain applications and remembers the requests seen, for :class:`LifelongSchedule`."""

    def __init__(self, schedule: LifelongSchedule) -> None:
        self.schedule = schedule
        self.calls = 0
        self.seen: dict[str, EditRequest] = {}
        self.since_last: dict[str, EditRequest] = {}

    def fires_next(self) -> bool:
        return (self.calls + 1) % self.schedule.every == 0

    def advance(self, requests: Sequence[EditRequest]) -> list[EditRequest] | None:
        """Record one application; the requests to consolidate now, or None when not firing."""
        fires = self.fires_next()
        self.calls += 1
        for request in requests:
            self.seen[request.request_id] = request  # a newer edit of the same id replaces the old
            self.since_last[request.request_id] = request
        if not fires:
            return None
        recent, self.since_last = list(self.since_last.values()), {}
        if self.schedule.scope == "all":
            return list(self.seen.values())
        return recent if self.schedule.scope == "since_last" else list(requests)
