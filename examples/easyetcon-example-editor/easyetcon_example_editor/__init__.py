"""example-ft-last: fine-tune one layer's MLP output projection on the target tokens.

The whole plugin: a config model, an editor class with ``weights_to_edit`` and ``edit``, and
one hook implementation that registers them. easyetcon handles snapshots, undo and the journal.

torch (and easyetcon's training helpers, which use it) is imported inside ``edit``: the host
imports every plugin to list its commands, and a module that imports torch at the top adds
more than a second to every ``easyetcon --help``.
"""

from __future__ import annotations

from collections.abc import Sequence

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
        import torch

        from easyetcon.text import build_target_batch
        from easyetcon.training import clamp_to_box, masked_token_nll, trainable_only

        name = self._weight_name(model)
        batch = build_target_batch(model.tokenizer, [model.format_prompt(r.prompt) for r in requests], [r.target_new for r in requests])
        batch = batch.to(model.device)
        with trainable_only(model.torch_model, [name]) as (weight,):
            original = weight.detach().clone()
            optimizer = torch.optim.Adam([weight], lr=self.config.learning_rate)
            for _ in range(self.config.steps):
                optimizer.zero_grad()
                logits = model.torch_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
                masked_token_nll(logits, batch.labels).backward()
                optimizer.step()
                if self.config.max_change is not None:
                    clamp_to_box([weight], [original], self.config.max_change)


@hookimpl
def easyetcon_register_intrinsic_editors(register) -> None:
    register(
        "example-ft-last",
        FineTuneLast,
        config=FineTuneLastConfig,
        subfamily="fine-tuning",
        summary="Example plugin: fine-tune one MLP output projection on the target tokens.",
    )
