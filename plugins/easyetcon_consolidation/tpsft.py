"""TPSFT — targeted proximal supervised fine-tuning (EtCon's edit stage, arXiv 2512.04753).

Fine-tune only selected FFN weights on the edit target with PPO's clipped surrogate and a
constant positive advantage. Per target token t, with r_t = p_current(t) / p_old(t):

    objective = mean_t  min(r_t, clip(r_t, 1 - eps, 1 + eps))

Once a token's probability has risen by a factor (1 + eps) over p_old its gradient is zero:
a trust region that keeps the edit from over-fitting the new fact and drifting the model.
``p_old`` is the model at the start of each round; round 1 starts from the model before this
chain step, so ``rounds=1`` is exactly one trust region around the pre-step model, and each
further round lets probabilities rise by another factor of at most (1 + eps).

Optional ``weights.preserve`` adds MEMIT's preservation objective as a penalty on the change of
the output projections (:class:`~easyetcon_consolidation.common.OutputPreservation`), so an edit
moves what ordinary text reads from them as little as it can.

Optional EAFT weighting multiplies each token's term by its normalised top-K entropy, on every
completion token or (``eaft.tokens``) only the edit target's tokens or only the tokens around them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from easyetcon.requests import EditRequest
from easyetcon.text import build_target_batch, encode_continuation
from easyetcon.training import EaftOptions, eaft_token_weights, reused_lower_blocks, target_token_mask, trainable_only
from easyetcon_consolidation.common import (
    FfnSelection,
    LifelongSchedule,
    PromptSources,
    ScheduleState,
    ffn_weight_names,
    is_chat_model,
    preservation_statistics,
    preserving_outputs,
    selected_layers,
    training_pairs,
)


class TPSFTConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weights: FfnSelection = Field(default_factory=FfnSelection)
    prompts: PromptSources = Field(default_factory=PromptSources)
    epsilon: float = Field(default=0.2, gt=0, le=10, description="Trust-region half-width of the ratio clip.")
    rounds: int = Field(default=30, ge=1, le=10_000, description="Times p_old is refreshed.")
    steps_per_round: int = Field(default=2, ge=1, le=1000, description="Optimiser steps against one p_old.")
    learning_rate: float = Field(default=5e-3, gt=0)
    eaft: EaftOptions | None = Field(default=None, description="Entropy-adaptive token weighting; off when null.")
    schedule: LifelongSchedule = Field(default_factory=LifelongSchedule)


class TPSFT:
    def __init__(self, config: TPSFTConfig) -> None:
        self.config = config
        self.state = ScheduleState(config.schedule)
        self.statistics = preservation_statistics(config.weights)

    def weights_to_edit(self, model: Any, requests: Sequence[EditRequest]) -> list[str]:
        return ffn_weight_names(model, self.config.weights) if self.state.fires_next() else []

    def edit(self, model: Any, requests: Sequence[EditRequest]) -> None:
        chosen = self.state.advance(requests)
        if chosen is None:
            return
        pairs, targets_of_pairs = [], []
        for request in chosen:
            target_ids = encode_continuation(model.tokenizer, request.target_new)
            for pair in training_pairs(request, self.config.prompts, chat_model=is_chat_model(model)):
                pairs.append(pair)
                targets_of_pairs.append(target_ids)
        if not pairs:
            raise ValueError("no training prompts: enable prompts.cloze or prompts.questions")
        # trained in the form the model is asked in (its prompt format), as the evaluator asks
        prompts = [model.format_prompt(p) for p, _, _ in pairs]
        # a chat reply ends its turn (the end-of-sequence token), where generation stops
        ends_turn = [fmt == "reply" and model.tokenizer.eos_token_id is not None for _, _, fmt in pairs]
        batch = build_target_batch(
            model.tokenizer, prompts, [c for _, c, _ in pairs], append_eos=ends_turn
        ).to(model.device)
        # which completion tokens spell the target: only EAFT restricted to some tokens needs it
        is_target = target_token_mask(batch.labels, targets_of_pairs) if self.config.eaft is not None else None
        mask = (batch.labels[:, 1:] != -100).float()
        targets = batch.labels[:, 1:].clamp(min=0).unsqueeze(-1)
        net = model.torch_model

        def token_logprobs() -> tuple[torch.Tensor, torch.Tensor]:
            logits = net(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, targets).squeeze(-1)
            return logprobs, logits

        selection = self.config.weights
        # params are fp32 masters in a float16/bfloat16 model; the preservation hook sits on them
        first = min(selected_layers(model, selection))
        # the batch is the same at every step: the blocks below the lowest trained one run once
        with trainable_only(net, ffn_weight_names(model, selection)) as params, preserving_outputs(
            model, selection, self.statistics
        ), reused_lower_blocks(model, first):
            optimizer = torch.optim.Adam(params, lr=self.config.learning_rate)
            eps = self.config.epsilon
            for _ in range(self.config.rounds):
                with torch.no_grad():
                    old_logprobs, _ = token_logprobs()
                for _ in range(self.config.steps_per_round):
                    logprobs, logits = token_logprobs()
                    ratio = torch.exp(logprobs - old_logprobs)
                    surrogate = torch.minimum(ratio, ratio.clamp(1 - eps, 1 + eps))
                    weights = mask
                    if self.config.eaft is not None:
                        eaft = eaft_token_weights(logits, batch.labels, self.config.eaft, is_target)
                        weights = mask * eaft[:, 1:]
                    loss = -(surrogate * weights).sum() / mask.sum()
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
