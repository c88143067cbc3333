"""The value a locate-then-edit editor writes: the change ``δ`` of a module's output at the
fact token (the subject's last token, or the prompt's last) that makes the model state the new
target.

ROME optimises ``δ`` at the edited MLP's output, MEMIT and AlphaEdit at the residual stream
after the last edited layer; the objective is the same (Meng et al. 2022, eq. 4):

* the target's negative log-likelihood after the prompt, behind each prefix,
* ``kl_factor`` × KL(before ‖ after) of the next-token distribution after *essence prompts*
  such as ``"{subject} is a"``, so what the model thinks the subject is does not drift (with
  ``kl_continuation_tokens``, over the model's own sentences about the subject instead: see
  :func:`essence_texts`),
* ``weight_decay`` × ``(‖δ‖ / ‖v‖)²`` with ``v`` the original output,

and after every step ``‖δ‖`` is clamped to ``clamp_norm_factor × ‖v‖``.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from easyetcon.text import build_target_batch, target_token_logprobs
from easyetcon.training import trainable_only
from easyetcon_intrinsic.keys import FactToken, add_to_output, capture_output, fact_positions, fill_prefixes, pad_id_of


class EditNotReachedWarning(UserWarning):
    """The value optimisation ended without making the target likely: the edit will probably not hold."""


def check_kl_prompts(prompts: list[str]) -> list[str]:
    """Validator of the ``kl_prompts`` option: every essence prompt names the subject."""
    bad = [prompt for prompt in prompts if "{subject}" not in prompt]
    if bad:
        raise ValueError(f"every essence prompt needs a '{{subject}}' placeholder; these have none: {bad}")
    return prompts


@dataclass
class ValueOptimisation:
    """Hyperparameters of the ``δ`` optimisation (every locate-then-edit config has these fields)."""

    steps: int
    learning_rate: float
    kl_factor: float
    weight_decay: float
    clamp_norm_factor: float
    stop_nll: float
    kl_prompts: Sequence[str]
    kl_continuation_tokens: int = 0
    fact_token: FactToken = "subject_last"

    @classmethod
    def from_config(cls, config: Any) -> ValueOptimisation:
        return cls(
            config.steps, config.learning_rate, config.kl_factor, config.weight_decay,
            config.clamp_norm_factor, config.stop_nll, list(config.kl_prompts), config.kl_continuation_tokens,
            config.fact_token,
        )


@dataclass
class OptimisedValue:
    """``delta``: the output change; ``original``: the output at the bare prompt's subject; ``nll``: final target NLL."""

    delta: torch.Tensor
    original: torch.Tensor
    nll: float


@dataclass
class EssenceText:
    """A text about the subject whose next-token distributions at ``kl_positions`` must not move
    when ``δ`` is added at ``fact_position``."""

    ids: list[int]
    fact_position: int
    kl_positions: list[int]


def split_sentences(text: str) -> list[str]:
    return [part.strip() for part in re.split(r"(?<=[.!?])\s+|\n+", text) if part.strip()]


def current_answer(model: Any, prompt: str) -> str:
    """What the model says now after ``prompt``: its greedy continuation up to the first punctuation."""
    text = model.generate([prompt], max_new_tokens=8, stop=("\n",), use_memory=False)[0]
    return re.split(r"[.,;!?]", text, maxsplit=1)[0].strip()


def essence_texts(
    model: Any, request: Any, templates: Sequence[str], continuation_tokens: int, fact_token: FactToken = "subject_last"
) -> list[EssenceText]:
    """The texts of the KL term.

    Without a continuation: each essence prompt, scored at its last position (ROME). With
    ``continuation_tokens``: the model's own greedy continuation of each essence prompt, split
    into sentences; every sentence that names the subject and does not state the fact being
    edited (its old answer: ``ground_truth`` or what the model now says) is scored at every
    position from the subject on, so the subject's *other* attributes stay as they are.
    ``δ`` sits at the subject's last token, or (``fact_token="last"``) at the text's last token,
    in which case continuations are not used (a sentence's last token is its full stop).
    """
    tokenizer = model.tokenizer
    filled = [template.format(subject=request.subject) for template in templates]
    if fact_token == "last":
        continuation_tokens = 0
    if continuation_tokens == 0:
        texts = filled
    else:
        old_answers = {a for a in (request.ground_truth, current_answer(model, request.prompt)) if a and a.strip()}
        continuations = model.generate(filled, max_new_tokens=continuation_tokens, stop=("\n",), use_memory=False)
        texts = []
        for prompt, continuation in zip(filled, continuations):
            for sentence in split_sentences(prompt + continuation):
                if request.subject in sentence and not any(a in sentence for a in old_answers) and sentence not in texts:
                    texts.append(sentence)
    essence = []
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        fact = fact_positions(tokenizer, [text], [request.subject], [request.request_id], fact_token)[0]
        positions = [len(ids) - 1] if continuation_tokens == 0 else list(range(fact, len(ids) - 1)) or [len(ids) - 1]
        essence.append(EssenceText(ids, fact, positions))
    return essence


def greedy_hits(logits: torch.Tensor, batch: Any) -> list[bool]:
    """Per row of a target batch, whether every target token is the argmax where it is predicted."""
    return [
        all(int(logits[row, position].argmax()) == token for position, token in zip(positions, tokens))
        for row, (positions, tokens) in enumerate(zip(batch.target_positions, batch.target_ids))
    ]


def optimise_value(
    model: Any, module: nn.Module, request: Any, prefixes: Sequence[str], settings: ValueOptimisation
) -> OptimisedValue:
    """Optimise ``δ`` added to ``module``'s output at the fact token (see the module docstring)."""
    torch_model, tokenizer = model.torch_model, model.tokenizer
    rewriting = fill_prefixes(prefixes, request.prompt)
    essence = (
        essence_texts(model, request, settings.kl_prompts, settings.kl_continuation_tokens, settings.fact_token)
        if settings.kl_factor > 0 else []
    )
    positions = fact_positions(
        tokenizer, rewriting, [request.subject] * len(rewriting), [request.request_id] * len(rewriting), settings.fact_token
    ) + [text.fact_position for text in essence]

    target = build_target_batch(tokenizer, rewriting, [request.target_new] * len(rewriting))
    rows = [row[: int(m.sum())].tolist() for row, m in zip(target.input_ids, target.attention_mask)]
    rows += [text.ids for text in essence]
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id_of(tokenizer), dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
    input_ids, attention_mask = input_ids.to(model.device), attention_mask.to(model.device)
    n_rewriting = len(rewriting)
    kl_rows = torch.tensor([n_rewriting + i for i, t in enumerate(essence) for _ in t.kl_positions], device=model.device)
    kl_cols = torch.tensor([p for t in essence for p in t.kl_positions], device=model.device)

    def essence_log_probs(logits: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(logits[kl_rows, kl_cols].float(), dim=-1)

    with trainable_only(torch_model, []):  # weights frozen, dropout off
        with torch.no_grad(), capture_output(module) as outputs:
            logits = torch_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        original = outputs[0][0, positions[0]].detach().float()
        reference = essence_log_probs(logits) if essence else None
        max_norm = settings.clamp_norm_factor * original.norm()

        delta = torch.zeros_like(original, requires_grad=True)
        optimizer = torch.optim.Adam([delta], lr=settings.learning_rate)
        nll_value = float("inf")
        for step in range(settings.steps + 1):
            with add_to_output(module, positions, delta):
                logits = torch_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
            rewriting_logits = logits[:n_rewriting]
            nll = torch.stack([-lp.mean() for lp in target_token_logprobs(rewriting_logits, target.to(model.device))]).mean()
            nll_value = float(nll.detach())
            if nll_value < settings.stop_nll or step == settings.steps:  # the last pass only measures
                break
            loss = nll + settings.weight_decay * (delta.norm() / original.norm()) ** 2
            if reference is not None:
                kl = torch.nn.functional.kl_div(essence_log_probs(logits), reference, log_target=True, reduction="batchmean")
                loss = loss + settings.kl_factor * kl
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                norm = delta.norm()
                if norm > max_norm:
                    delta.mul_(max_norm / norm)
    hits = greedy_hits(rewriting_logits.detach(), target)
    if 2 * sum(hits) < len(hits):
        warnings.warn(
            f"request {request.request_id!r}: after {step} value steps the target is the greedy "
            f"continuation behind {sum(hits)} of {len(hits)} prefixes (target NLL {nll_value:.2f}), so this edit "
            f"will likely not hold. The output it changes has norm {float(original.norm()):.1f} and Adam moves each "
            f"coordinate by about learning_rate ({settings.learning_rate:g}) per step: raise learning_rate or steps "
            f"(or clamp_norm_factor, if ‖δ‖ = {float(delta.detach().norm()):.1f} sits at the clamp).",
            EditNotReachedWarning,
            stacklevel=2,
        )
    return OptimisedValue(delta.detach(), original, nll_value)
