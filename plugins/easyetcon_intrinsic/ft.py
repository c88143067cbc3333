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
from easyetcon.locate import with_defaults
from easyetcon.locate.layers import resolve_layers
from easyetcon.text import IGNORE_INDEX, TargetBatch, build_target_batch, encode_continuation, pad_id_of, pad_rows
from easyetcon.training import EaftOptions, clamp_to_box, eaft_token_weights, masked_token_nll, reused_lower_blocks, trainable_only


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
    steps: int = Field(
        default=25, ge=1, le=10_000,
        description="optimisation steps per edit; with batch_size, passes over the requests (epochs), one step per mini-batch",
    )
    batch_size: int | None = Field(
        default=None, ge=1,
        description="requests per optimisation step, in mini-batches shuffled at every pass (breadth-first, as LocFT-BF); "
        "None: every request at every step",
    )
    seed: int = Field(default=0, description="seed of the mini-batch shuffle")
    learning_rate: float = Field(default=5e-4, gt=0, description="Adam learning rate")
    weight_decay: float = Field(default=0.0, ge=0, description="Adam weight decay")
    max_change: float | None = Field(default=None, gt=0, description="L∞ bound on how far a weight may move (None: unbounded)")
    stop_loss: float | None = Field(
        default=None, gt=0,
        description="skip a step whose loss is below this, and stop after a pass that skipped them all (None: run every step)",
    )

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
    append_eos: bool = Field(
        default=False, description="end every target with the end-of-sequence token, which the loss then counts"
    )


LocFTBFConfig = with_defaults(
    FTMConfig, name="LocFTBFConfig",
    doc="""Options of ``locft-bf``: FT-M in the breadth-first pipeline of Yang et al. (ICLR 2026), with
    their defaults: mini-batches of 100 over 25 passes, learning rate 5e-4, targets ending with
    the end-of-sequence token, steps skipped below a loss of 0.01. The layer is the paper's
    per-model choice (one MLP output projection; e.g. 22 of Llama-3-8B's 32): set ``layers``.""",
    steps=25, batch_size=100, learning_rate=5e-4, append_eos=True, stop_loss=1e-2,
)


def _trained_layers(model: Any, config: FineTuneConfig, requests: Sequence[Any]) -> list[int]:
    """The layers that train, non-negative and sorted."""
    return resolve_layers(model, config.layers, requests, count=1, option="layers")


def _weight_names(model: Any, config: FineTuneConfig, layers: Sequence[int]) -> list[str]:
    return [model.adapter.weight_name(kind, layer) for layer in layers for kind in config.modules]


def _parameter_names(model: Any, config: FineTuneConfig, requests: Sequence[Any]) -> list[str]:
    return _weight_names(model, config, _trained_layers(model, config, requests))


def mini_batches(count: int, batch_size: int | None, passes: int, seed: int) -> list[list[list[int]]]:
    """Per pass, the request indices of each optimisation step: all of them (``batch_size`` None),
    or shuffled mini-batches of ``batch_size`` (a new order every pass, deterministic in ``seed``)."""
    if batch_size is None or batch_size >= count:
        return [[list(range(count))] for _ in range(passes)]
    generator = torch.Generator().manual_seed(seed)
    plan = []
    for _ in range(passes):
        order = torch.randperm(count, generator=generator).tolist()
        plan.append([order[start : start + batch_size] for start in range(0, count, batch_size)])
    return plan


def _fine_tune(
    model: Any, requests: Sequence[Any], config: FineTuneConfig, loss_fn: Callable[[Sequence[int]], torch.Tensor]
) -> None:
    """Adam on the chosen layers' weights, one step per mini-batch of requests (``loss_fn(indices)``),
    projected into the L∞ box after every step. In a float16/bfloat16 model ``weights`` are fp32
    masters (Adam's eps and small steps vanish in half precision), so the box is measured on them
    too and the model ends with the masters cast to its dtype. The blocks below the lowest trained
    layer run once while the batch stays the same (:func:`~easyetcon.training.reused_lower_blocks`)."""
    layers = _trained_layers(model, config, requests)
    with trainable_only(model.torch_model, _weight_names(model, config, layers)) as weights, reused_lower_blocks(model, layers[0]):
        originals = [weight.detach().clone() for weight in weights]
        optimizer = torch.optim.Adam(weights, lr=config.learning_rate, weight_decay=config.weight_decay)
        for steps in mini_batches(len(requests), config.batch_size, config.steps, config.seed):
            skipped = 0
            for indices in steps:
                loss = loss_fn(indices)
                if config.stop_loss is not None and float(loss.detach()) < config.stop_loss:
                    skipped += 1
                    continue
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if config.max_change is not None:
                    clamp_to_box(weights, originals, config.max_change)
            if skipped == len(steps):
                break


class FineTuneLast:
    """``ft-l``: every target token scored at the last prompt position."""

    def __init__(self, config: FineTuneConfig) -> None:
        self.config = config

    def weights_to_edit(self, model: Any, requests: Sequence[Any]) -> list[str]:
        return _parameter_names(model, self.config, requests)

    def edit(self, model: Any, requests: Sequence[Any]) -> None:
        tokenizer = model.tokenizer
        input_ids, attention_mask = pad_rows([tokenizer(model.format_prompt(r.prompt))["input_ids"] for r in requests], pad_id_of(tokenizer))
        input_ids, attention_mask = input_ids.to(model.device), attention_mask.to(model.device)
        last = attention_mask.sum(dim=1) - 1
        targets = [torch.tensor(encode_continuation(tokenizer, r.target_new), device=model.device) for r in requests]
        rows = torch.arange(len(requests), device=model.device)

        def loss(indices: Sequence[int]) -> torch.Tensor:
            chosen = torch.tensor(list(indices), device=model.device)
            logits = model.torch_model(input_ids=input_ids[chosen], attention_mask=attention_mask[chosen], use_cache=False).logits
            log_probs = torch.log_softmax(logits[rows[: len(indices)], last[chosen]].float(), dim=-1)
            return torch.stack([-log_probs[j, targets[i]].mean() for j, i in enumerate(indices)]).mean()

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
        batch = build_target_batch(
            model.tokenizer, [model.format_prompt(r.prompt) for r in requests], [r.target_new for r in requests],
            append_eos=self.config.append_eos,
        )
        batch = batch.to(model.device)
        has_target = (batch.labels != IGNORE_INDEX).any(dim=1).tolist()
        if not all(has_target):
            empty = [r.request_id for r, ok in zip(requests, has_target) if not ok]
            raise RequestError(f"request(s) {empty}: the target encodes to no tokens")
        everything = list(range(len(requests)))

        def loss(indices: Sequence[int]) -> torch.Tensor:
            part = batch if list(indices) == everything else batch.rows(indices)
            logits = model.torch_model(input_ids=part.input_ids, attention_mask=part.attention_mask, use_cache=False).logits
            return masked_token_nll(logits, part.labels, token_weights=self.token_weights(logits, part))

        _fine_tune(model, requests, self.config, loss)
