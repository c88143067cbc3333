"""Toy plugins for the core's own tests: deterministic, instant, and each failure mode on demand."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field

from easyetcon.hookspecs import hookimpl


class ShiftConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    layer: int = 0
    amount: float = Field(default=0.5, gt=0)
    fail_on: str | None = Field(default=None, description="Raise after changing weights for this case_id.")
    low_rank: bool = Field(default=False, description="Write a rank-one update through model.add_low_rank.")
    poison: float | None = Field(default=None, description="Also write this value (e.g. nan) into the weight.")
    sneak_layer: int | None = Field(default=None, description="Also change this layer's weight without declaring it.")


class ShiftEditor:
    """Adds ``amount`` to one MLP output weight per request: easy to predict and to check."""

    def __init__(self, config: ShiftConfig) -> None:
        self.config = config

    def weights_to_edit(self, model, requests: Sequence) -> list[str]:
        return [model.adapter.weight_name("mlp_out", self.config.layer)]

    def edit(self, model, requests: Sequence) -> None:
        name = self.weights_to_edit(model, requests)[0]
        weight = model.parameter(name)
        with torch.no_grad():
            for request in requests:
                if self.config.low_rank:
                    rows, cols = weight.shape
                    model.add_low_rank(name, torch.full((rows, 1), self.config.amount), torch.linspace(-1, 1, cols)[None, :])
                else:
                    weight.add_(self.config.amount)
                if self.config.poison is not None:
                    weight[0, 0] = self.config.poison
                if self.config.sneak_layer is not None:
                    model.parameter(model.adapter.weight_name("mlp_out", self.config.sneak_layer)).add_(1.0)
                if request.case_id == self.config.fail_on:
                    raise RuntimeError(f"toy failure on {request.case_id}")


class NoteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prefix: str = "Note:"


class NoteMemory:
    """Keeps 'subject -> target' notes and writes the matching one in front of a prompt."""

    def __init__(self, config: NoteConfig) -> None:
        self.config = config

    def attach(self, model, store) -> None:
        def rewrite(prompts: list[str]) -> list[str]:
            out = []
            for prompt in prompts:
                notes = [e.data for _, e in store.items() if e.data["subject"] in prompt]
                if notes:
                    prompt = f"{self.config.prefix} {notes[-1]['subject']} -> {notes[-1]['target']}. {prompt}"
                out.append(prompt)
            return out

        model.add_prompt_rewriter(f"notes:{store.name}", rewrite)

    def edit(self, model, store, requests: Sequence) -> None:
        for request in requests:
            for entry_id, entry in store.items():  # newest edit for a subject wins
                if entry.data["subject"] == request.subject:
                    store.remove(entry_id)
            store.add(
                {"subject": request.subject, "target": request.target_new},
                {"key": torch.arange(4, dtype=torch.float32) + len(store)},
            )


@hookimpl
def easyetcon_register_intrinsic_editors(register) -> None:
    register("toy-shift", ShiftEditor, config=ShiftConfig, subfamily="toy", summary="Adds a constant to one MLP weight.")


@hookimpl
def easyetcon_register_memory_editors(register) -> None:
    register("toy-notes", NoteMemory, config=NoteConfig, subfamily="retrieval", summary="Prepends a note to prompts about edited subjects.")


class EventLog:
    """A lifecycle observer plugin: records hook calls and can veto a step by name."""

    def __init__(self, veto_step: str | None = None) -> None:
        self.events: list[tuple] = []
        self.veto_step = veto_step

    @hookimpl
    def easyetcon_before_step(self, step):
        self.events.append(("before", step.index, step.name, [r.request_id for r in step.requests]))
        if step.name == self.veto_step:
            return f"{step.name} is not allowed here"
        return None

    @hookimpl
    def easyetcon_after_step(self, step, record, seconds):
        self.events.append(("after", step.index, step.name, seconds >= 0))

    @hookimpl
    def easyetcon_step_error(self, step, error):
        self.events.append(("error", step.index, step.name, type(error).__name__))
