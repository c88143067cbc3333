"""FT-L and FT-M: fine-tune chosen layers' MLP weights on the new facts (Zhu et al. 2020;
EasyEdit's constrained fine-tuning baselines).

Both train only the MLP projections of the chosen layers (adapter kinds ``mlp_out`` and
optionally ``mlp_in``) with Adam, optionally keeping every weight within an L∞ box of radius
``max_change`` around its original value (the "constrained" in constrained fine-tuning). They
differ in the loss:

* **FT-L** reads the logits at the *last prompt position* only and scores every target token
  there, ``-mean_j log p(t_j | prompt)`` (EasyEdit's ``prompt_last`` objective; for a
  one-token target this is the usual next-token loss).
* **FT-M** feeds ``prompt + target`` and scores each target token at its own position with
  teacher forcing, masking the prompt: ``-Σ_j w_j log p(t_j | prompt, t_<j) / n``. The weights
  ``w_j`` are 1, or with the ``eaft`` option each token's normalised top-K entropy (EAFT,
  arXiv 2601.02151): a token the model confidently predicts as something else pulls less, which
  limits how much of what the model knows the edit overwrites.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from easyetcon.errors import RequestError
from easyetcon.text import IGNORE_INDEX, TargetBatch, build_target_batch, encode_continuation
from easyetcon.training import EaftOptions, clamp_to_box, eaft_token_weights, masked_token_nll, reused_lower_blocks, trainable_only
from easyetcon.text import pad_id_of, pad_rows
from easyetcon.locate.layers import resolve_layers


class FineTuneConfig(BaseModel):
    """Options shared by ``ft-l`` and ``ft-m``."""

    model_config = ConfigDict(extra="forbid")

    layers: list[int] | Literal["auto"] = Field(
        default="auto",
        description="layers whose MLP weights train: indices (negative from the end) or 'auto' (one early-middle layer)",
    )
    modules: list[Literal["mlp_out", "mlp_in"]] = Field(
        default_factory=lambda: ["mlp_out"], description="which MLP projections of those layers train"
    )
    steps: int = Field(default=25, ge=1, le=10_000, description="optimisation steps per edit")
    learning_rate: float = Field(default=5e-4, gt=0, description="Adam learning rate")
    weight_decay: float = Field(default=0.0, ge=0, description="Adam weight decay")
    max_change: float | None = Field(default=None, gt=0, description="L∞ bound on how far a weight may move (None: unbounded)")
    stop_loss: float | None = Field(default=None, gt=0, description="stop once the loss is below this (None: run every step)")

    @field_validator("layers", "modules")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("must name at least one")
        return value


class FTMConfig(FineTuneConfig):
    """Options of ``ft-m``: those of fine-tuning plus how target tokens are weighted."""

    eaft: EaftOptions | None = Field(
        default=None, description="entropy-adaptive token weights (EAFT); null: every target token counts once"
    )


def _trained_layers(model: Any, config: FineTuneConfig, requests: Sequence[Any]) -> list[int]:
    """The layers that train, non-negative and sorted."""
    return resolve_layers(model, config.layers, requests, count=1, option="layers")


def _weight_names(model: Any, config: FineTuneConfig, layers: Sequence[int]) -> list[str]:
    return [model.adapter.weight_name(kind, layer) for layer in layers for kind in config.modules]


def _parameter_names(model: Any, config: FineTuneConfig, requests: Sequence[Any]) -> list[str]:
    return _weight_names(model, config, _trained_layers(model, config, requests))


def _fine_tune(model: Any, requests: Sequence[Any], config: FineTuneConfig, loss_fn: Callable[[], torch.Tensor]) -> None:
    """Adam on the chosen layers' weights, projected into the L∞ box after every step. In a
    float16/bfloat16 model ``weights`` are fp32 masters (Adam's eps and small steps vanish in half
    precision), so the box is measured on them too and the model ends with the masters cast to
    its dtype. The blocks below the lowest trained layer run once (the batch is the same at every
    step: :func:`~easyetcon.training.reused_lower_blocks`)."""
    layers = _trained_layers(model, config, requests)
    with trainable_only(model.torch_model, _weight_names(model, config, layers)) as weights, reused_lower_blocks(model, layers[0]):
        originals = [weight.detach().clone() for weight in weights]
        optimizer = torch.optim.Adam(weights, lr=config.learning_rate, weight_decay=config.weight_decay)
        for _step in range(config.steps):
            loss = loss_fn()
            if config.stop_loss is not None and float(loss.detach()) < config.stop_loss:
                break
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if config.max_change is not None:
                clamp_to_box(weights, originals, config.max_change)


class FineTuneLast:
    """``ft-l``: every target token scored at the last prompt position."""

    def __init__(self, config: FineTuneConfig) -> None:
        self.config = config

    def weights_to_edit(self, model: Any, requests: Sequence[Any]) -> list[str]:
        return _parameter_names(model, self.config, requests)

    def edit(self, model: Any, requests: Sequence[Any]) -> None:
        tokenizer = model.tokenizer
        input_ids, attention_mask = pad_rows([tokenizer(r.prompt)["input_ids"] for r in requests], pad_id_of(tokenizer))
        input_ids, attention_mask = input_ids.to(model.device), attention_mask.to(model.device)
        last = attention_mask.sum(dim=1) - 1
        targets = [torch.tensor(encode_continuation(tokenizer, r.target_new), device=model.device) for r in requests]
        rows = torch.arange(len(requests), device=model.device)

        def loss() -> torch.Tensor:
            logits = model.torch_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
            log_probs = torch.log_softmax(logits[rows, last].float(), dim=-1)
            return torch.stack([-log_probs[i, tokens].mean() for i, tokens in enumerate(targets)]).mean()

        _fine_tune(model, requests, self.config, loss)


class FineTuneMasked:
    """``ft-m``: teacher-forced loss on the target tokens only."""

    def __init__(self, config: FTMConfig) -> None:
        self.config = config

    def weights_to_edit(self, model: Any, requests: Sequence[Any]) -> list[str]:
        return _parameter_names(model, self.config, requests)

    def token_weights(self, logits: torch.Tensor, batch: TargetBatch) -> torch.Tensor | None:
        """Per-token loss weights aligned with ``batch.labels`` (``None``: every target token counts once)."""
        if self.config.eaft is None:
            return None
        return eaft_token_weights(logits, batch.labels, self.config.eaft)

    def edit(self, model: Any, requests: Sequence[Any]) -> None:
        batch = build_target_batch(model.tokenizer, [r.prompt for r in requests], [r.target_new for r in requests])
        batch = batch.to(model.device)
        has_target = (batch.labels != IGNORE_INDEX).any(dim=1).tolist()
        if not all(has_target):
            empty = [r.request_id for r, ok in zip(requests, has_target) if not ok]
            raise RequestError(f"request(s) {empty}: the target encodes to no tokens")

        def loss() -> torch.Tensor:
            logits = model.torch_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
            return masked_token_nll(logits, batch.labels, token_weights=self.token_weights(logits, batch))

        _fine_tune(model, requests, self.config, loss)
