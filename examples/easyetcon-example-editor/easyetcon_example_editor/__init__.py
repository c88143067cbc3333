"""example-ft-last: fine-tune one layer's MLP output projection on the target tokens.

The whole plugin: a config model, an editor class with ``weights_to_edit`` and ``edit``, and
one hook implementation that registers them. easyetcon handles snapshots, undo and the journal.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field

from easyetcon.hookspecs import hookimpl


class FineTuneLastConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    layer: int = Field(default=-1, description="Which layer's MLP output projection to train (negative counts from the end).")
    steps: int = Field(default=30, ge=1, le=10_000, description="Optimisation steps per edit.")
    learning_rate: float = Field(default=0.05, gt=0, description="Adam learning rate.")
    max_change: float | None = Field(default=None, gt=0, description="Optional L-infinity bound on the weight change.")


class FineTuneLast:
    def __init__(self, config: FineTuneLastConfig) -> None:
        self.config = config

    def _weight_name(self, model) -> str:
        layer = self.config.layer % model.adapter.num_layers(model.torch_model)
        return model.adapter.weight_name("mlp_out", layer)

    def weights_to_edit(self, model, requests: Sequence) -> list[str]:
        return [self._weight_name(model)]

    def edit(self, model, requests: Sequence) -> None:
        weight = model.parameter(self._weight_name(model))
        original = weight.detach().clone()
        batches = [self._tokens(model, r.prompt, r.target_new) for r in requests]
        trainable = {p: p.requires_grad for p in model.torch_model.parameters()}
        for p in trainable:
            p.requires_grad_(p is weight)
        optimizer = torch.optim.Adam([weight], lr=self.config.learning_rate)
        try:
            for _ in range(self.config.steps):
                optimizer.zero_grad()
                loss = sum(self._target_nll(model, ids, labels) for ids, labels in batches) / len(batches)
                loss.backward()
                optimizer.step()
                if self.config.max_change is not None:
                    with torch.no_grad():
                        bound = self.config.max_change
                        weight.copy_(original + (weight - original).clamp(-bound, bound))
        finally:
            for p, flag in trainable.items():
                p.requires_grad_(flag)

    @staticmethod
    def _tokens(model, prompt: str, target: str) -> tuple[torch.Tensor, torch.Tensor]:
        prompt_ids = model.tokenizer(prompt)["input_ids"]
        target_ids = model.encode_answer(target)
        ids = torch.tensor([prompt_ids + target_ids], device=model.device)
        labels = torch.tensor([[-100] * len(prompt_ids) + target_ids], device=model.device)
        return ids, labels

    @staticmethod
    def _target_nll(model, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return model.torch_model(input_ids=ids, labels=labels).loss


@hookimpl
def easyetcon_register_intrinsic_editors(register) -> None:
    register(
        "example-ft-last",
        FineTuneLast,
        config=FineTuneLastConfig,
        subfamily="fine-tuning",
        summary="Example plugin: fine-tune one MLP output projection on the target tokens.",
    )
