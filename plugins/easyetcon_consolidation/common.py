"""What TPSFT and GRPO share: which FFN weights train, which prompts they train on, and when
a consolidator fires in a lifelong (sequential) run."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from easyetcon.errors import ConfigError
from easyetcon.requests import EditRequest

FfnModules = Literal["mlp_out", "mlp_in", "mlp"]


class FfnSelection(BaseModel):
    """Which feed-forward weights a consolidator may change."""

    model_config = ConfigDict(extra="forbid")

    layers: list[int] | None = Field(
        default=None, description="Layer indices (negative count from the end); None = every layer."
    )
    modules: FfnModules = Field(
        default="mlp_out", description="mlp_out (down projection), mlp_in (up projection) or mlp (both)."
    )


def ffn_weight_names(model: Any, selection: FfnSelection) -> list[str]:
    """Parameter names of the selected FFN weights, via the model's architecture adapter."""
    count = model.adapter.num_layers(model.torch_model)
    layers = range(count) if selection.layers is None else selection.layers
    kinds = {"mlp_out": ("mlp_out",), "mlp_in": ("mlp_in",), "mlp": ("mlp_in", "mlp_out")}[selection.modules]
    names = []
    for layer in layers:
        if not -count <= layer < count:
            raise ConfigError(f"option 'layers': layer {layer} does not exist (the model has {count}: 0..{count - 1})")
        names.extend(model.adapter.weight_name(kind, layer % count) for kind in kinds)
    return list(dict.fromkeys(names))


class PromptSources(BaseModel):
    """Which prompts of a request consolidation trains on (never its rephrase prompts: those
    measure generalisation)."""

    model_config = ConfigDict(extra="forbid")

    cloze: bool = Field(default=True, description="The edit prompt itself, completed by ' <target>.'")
    questions: bool = Field(
        default=True,
        description="Question-answer prompts from metadata['qa_prompts'] (the fact world provides them), "
        "completed by ' <answer> <target> </answer>'.",
    )
    question_template: str | None = Field(
        default=None,
        description="Builds a question prompt from a request without metadata['qa_prompts'], e.g. "
        "'Question: {prompt}? Answer:' (fields: prompt, subject).",
    )


def question_prompts(request: EditRequest, sources: PromptSources) -> list[str]:
    """The question-answer prompts of ``request`` (possibly none)."""
    if not sources.questions:
        return []
    found = request.metadata.get("qa_prompts") or []
    if found:
        return list(found)
    if sources.question_template:
        return [sources.question_template.format(prompt=request.prompt, subject=request.subject)]
    return []


def training_pairs(request: EditRequest, sources: PromptSources) -> list[tuple[str, str]]:
    """``(prompt, completion)`` pairs teaching the new fact in the selected forms."""
    pairs = []
    if sources.cloze:
        pairs.append((request.prompt, f"{request.target_new}."))
    for prompt in question_prompts(request, sources):
        pairs.append((prompt, f"<answer> {request.target_new} </answer>"))
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
