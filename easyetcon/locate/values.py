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
* ``weight_decay`` × ``(‖δ‖ / ‖v‖)²`` with ``v`` the original output (``norm_penalty="linear"``:
  NAMET's ``‖δ‖ / ‖v‖``, ``‖v‖`` the root mean square over the prompts ``δ`` is added in),

and after every step ``‖δ‖`` is clamped to ``clamp_norm_factor × ‖v‖``.

NAMET (Dai et al. 2025, "Noise-Aware Memory Optimization") is MEMIT with three changes, each an
option here: ``delta_position="left_padded"`` (its noise: its code left-pads the prefixed prompts and
adds ``δ`` at the unpadded fact-token index, so in every shorter prompt ``δ`` lands a few tokens
early), ``norm_penalty="linear"`` and ``residual_at="prefixes"`` (the residual a MEMIT-style
editor writes is averaged over the prefixed prompts, each against its own optimised hidden state:
:meth:`easyetcon.locate.EditSites.spread`).
"""

from __future__ import annotations

import contextlib
import inspect
import re
import warnings
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from easyetcon.activations import add_to_output, capture_input, capture_output, run_forward
from easyetcon.devices import execution_device, runs_on_one_device
from easyetcon.errors import EasyEtconError
from easyetcon.locate.keys import FactToken, LocatedRequest, fact_positions
from easyetcon.text import build_target_batch, pad_id_of, pad_rows
from easyetcon.training import trainable_only


class EditNotReachedWarning(UserWarning):
    """The value optimisation ended without making the target likely: the edit will probably not hold."""


class ValueOptions(BaseModel):
    """How ``δ`` is optimised (the ``value:`` section of a locate-then-edit editor's options).

    Editors whose papers use other defaults declare them with :func:`easyetcon.locate.with_defaults`."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(default=25, ge=1, le=1000, description="optimisation steps for δ")
    learning_rate: float = Field(default=0.5, gt=0, description="Adam learning rate of δ")
    kl_factor: float = Field(default=0.0625, ge=0, description="weight of the KL term on the essence prompts")
    weight_decay: float = Field(
        default=0.01, ge=0, description="weight of (‖δ‖/‖v‖)² (scale-free; the papers' ‖δ‖/‖v‖² is ~0 at their scale)"
    )
    clamp_norm_factor: float = Field(default=4.0, gt=0, description="‖δ‖ is clamped to this × ‖v‖")
    stop_nll: float = Field(default=0.05, ge=0, description="stop optimising once the target NLL is below this")
    kl_prompts: list[str] = Field(
        default_factory=lambda: ["{subject} is a"], description="essence prompts; {subject} is filled in"
    )
    kl_continuation_tokens: int = Field(
        default=0, ge=0, le=256,
        description="0: KL at the end of each essence prompt (the paper); N: KL over the model's own N-token "
        "continuation of each, sentence by sentence, leaving out sentences that state the edited fact",
    )

    delta_position: Literal["fact_token", "left_padded"] = Field(
        default="fact_token",
        description="where δ is added in each prompt behind its prefixes: at the fact token (the papers), or "
        "'left_padded' (NAMET's noise): at the fact token's index as if the prompts were left-padded to the longest "
        "and the index not moved, i.e. as many tokens early as the prompt is shorter than the longest; a prompt "
        "that puts δ before its first token is left out of the target's NLL (NAMET adds δ to padding there)",
    )
    norm_penalty: Literal["squared", "linear"] = Field(
        default="squared",
        description="weight_decay × (‖δ‖/‖v‖)², v the bare prompt's original output (default), or NAMET's "
        "weight_decay × ‖δ‖/‖v‖, ‖v‖ the root mean square of the original outputs where δ is added",
    )
    residual_at: Literal["prompt", "prefixes"] = Field(
        default="prompt",
        description="MEMIT-style editors: the residual still missing after the last edited layer, measured at the "
        "bare prompt (MEMIT) or averaged over the prefixed prompts, each against its own original output + δ "
        "(NAMET; the bare prompt when there are no prefixes). ROME writes δ itself and ignores it",
    )

    @field_validator("kl_prompts")
    @classmethod
    def _name_the_subject(cls, prompts: list[str]) -> list[str]:
        bad = [prompt for prompt in prompts if "{subject}" not in prompt]
        if bad:
            raise ValueError(f"every essence prompt needs a '{{subject}}' placeholder; these have none: {bad}")
        return prompts


@dataclass
class OptimisedValue:
    """``delta``: the output change; ``original``: the output at the bare prompt's subject; ``nll``:
    final target NLL; ``key``: with ``key_module``, its input at the fact token averaged over the
    prefixes (what :func:`~.keys.fact_keys` gives, read from the first pass instead of another);
    ``originals``: the output where ``δ`` is added in each prompt behind its prefixes, ``(texts, d)``
    (row 0 is ``original``)."""

    delta: torch.Tensor
    original: torch.Tensor
    nll: float
    key: torch.Tensor | None = None
    originals: torch.Tensor | None = None


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
        continuations = model.generate(filled, max_new_tokens=continuation_tokens, stop=("\n",), raw=True)
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


def greedy_hits(logits: torch.Tensor, target_ids: Sequence[int]) -> list[bool]:
    """Per row of kept target logits ``(rows, len(target_ids), vocab)``, whether every target
    token is the argmax where it is predicted."""
    tokens = torch.tensor(list(target_ids), device=logits.device)
    return [bool(row) for row in (logits.argmax(-1) == tokens).all(-1)]


def logits_at(torch_model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Logits ``(rows, keep.shape[1], vocab)`` at column ``keep[i, j]`` of row ``i`` only.

    The vocabulary projection is the largest matrix of a model with few layers (and the KL and
    NLL read a few positions): transformers' ``logits_to_keep`` skips it elsewhere. A model
    without it, or one that reads a 2-D index otherwise, gets the full logits, gathered."""
    rows = torch.arange(len(keep), device=keep.device)[:, None]
    # a model split over devices gets the index on its first device while the last hidden states sit on another
    if runs_on_one_device(torch_model):
        try:
            logits = torch_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=keep).logits
            if tuple(logits.shape[:2]) == tuple(keep.shape):
                return logits
        except TypeError:  # no logits_to_keep argument
            pass
    logits = torch_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    return logits[rows, keep.to(logits.device)]


#: Per model: whether its suffix passes agreed with full passes (checked once, on its first value optimisation).
_SUFFIX_PASSES_AGREE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
#: Largest relative difference of the kept logits accepted between a suffix and a full pass, per dtype.
SUFFIX_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8, torch.float16: 2e-2, torch.bfloat16: 5e-2}


class ForwardPasses:
    """The forward passes of one ``δ`` optimisation: right-padded ``rows``, ``δ`` added at
    ``positions[i]`` of row ``i``, logits kept at ``keep[i]``.

    Under causal attention nothing before a row's fact token depends on ``δ``, at any layer. Those
    tokens run once (:meth:`__init__`: their attention keys and values kept, padding zeroed), and
    each *suffix pass* runs only the tokens from the fact token on, behind that cache, with their
    true position ids: for a prompt behind a ten-token prefix about a quarter of the tokens. A
    model whose cache is not a ``DynamicCache`` or cannot be rebuilt falls back to full passes;
    :func:`optimise_value` also checks once per model that a suffix pass gives the full pass's
    logits (:data:`SUFFIX_TOLERANCE`) before relying on it.
    """

    def __init__(self, torch_model: nn.Module, rows: Sequence[Sequence[int]], positions: Sequence[int],
                 keep: torch.Tensor, pad_id: int, device: torch.device | str, stop_module: nn.Module | None = None) -> None:
        self.torch_model = torch_model
        self.stop_module = stop_module  # the last layer's attention output projection, if the adapter names it
        self.positions = list(positions)
        input_ids, mask = pad_rows(rows, pad_id)
        self.input_ids, self.attention_mask = input_ids.to(device), mask.to(device)
        self.keep = keep
        self.prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        if max(self.positions) > 0:
            try:
                self._cache_prefixes(rows, pad_id, device)
            except (TypeError, ValueError, AttributeError, IndexError, RuntimeError):  # a cache we cannot rebuild
                self.prefix = None

    @torch.no_grad()
    def _cache_prefixes(self, rows: Sequence[Sequence[int]], pad_id: int, device: torch.device | str) -> None:
        from transformers import DynamicCache

        splits = torch.tensor(self.positions, device=device)
        width = int(splits.max())
        prefix_mask = (torch.arange(width, device=device)[None, :] < splits[:, None]).long()
        # transformers 5 names the cache ``cache``; earlier versions ``past_key_values``
        self.cache_argument = "cache" if "cache" in inspect.signature(self.torch_model.forward).parameters else "past_key_values"
        cache = DynamicCache()
        # the keys and values are all that is needed: the pass ends at the last attention's output projection
        with capture_input(self.stop_module, stop=True) if self.stop_module is not None else contextlib.nullcontext():
            run_forward(self.torch_model, self.input_ids[:, :width], prefix_mask,
                        use_cache=True, logits_to_keep=1, **{self.cache_argument: cache})
        if any(type(layer).__name__ != "DynamicLayer" for layer in getattr(cache, "layers", [])):
            return  # sliding-window or hybrid layers: not rebuilt here
        padding = ~prefix_mask.bool()
        prefix = []
        for entry in cache:
            keys, values = entry[0], entry[1]
            if keys is None or keys.shape[0] != len(rows) or keys.shape[-2] != width:
                return
            shape = (len(rows),) + (1,) * (keys.dim() - 3) + (width, 1)
            # a row whose fact token comes first has only padding here: zero it, so no NaN can leak
            # (each layer's cache is on that layer's device)
            pad = padding.view(shape).to(keys.device)
            prefix.append((keys.masked_fill(pad, 0), values.masked_fill(pad, 0)))
        suffix_ids, suffix_mask = pad_rows([row[p:] for row, p in zip(rows, self.positions)], pad_id)
        self.suffix_ids = suffix_ids.to(device)
        self.suffix_attention_mask = torch.cat([prefix_mask, suffix_mask.to(device)], dim=1)
        self.suffix_position_ids = splits[:, None] + torch.arange(suffix_ids.shape[1], device=device)[None, :]
        self.suffix_keep = self.keep - splits[:, None]
        self.cache_type = DynamicCache
        self.prefix = prefix

    @property
    def can_split(self) -> bool:
        return self.prefix is not None

    def run(self, module: nn.Module, delta: torch.Tensor, *, suffix: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Kept logits ``(rows, keep width, vocab)`` with ``δ`` added, and ``module``'s output
        (before ``δ``) where ``δ`` is added in each row, ``(rows, d)``."""
        positions = [0] * len(self.positions) if suffix else self.positions
        # the capture, registered first, sees the output before δ is added
        with capture_output(module) as outputs, add_to_output(module, positions, delta):
            if suffix:
                by_index = runs_on_one_device(self.torch_model)  # as in logits_at
                logits = self.torch_model(
                    input_ids=self.suffix_ids, attention_mask=self.suffix_attention_mask,
                    position_ids=self.suffix_position_ids, use_cache=True, logits_to_keep=self.suffix_keep if by_index else 0,
                    **{self.cache_argument: self.cache_type(ddp_cache_data=self.prefix)},
                ).logits
                if not by_index:
                    keep = self.suffix_keep.to(logits.device)
                    logits = logits[torch.arange(len(keep), device=keep.device)[:, None], keep]
            else:
                logits = logits_at(self.torch_model, self.input_ids, self.attention_mask, self.keep)
        hidden = outputs[0]
        return logits, hidden[torch.arange(len(positions), device=hidden.device), torch.tensor(positions, device=hidden.device)]

    def suffix_agrees(self, module: nn.Module, width: int) -> bool:
        """Whether a suffix pass gives a full pass's logits (no gradients, ``δ = 0`` of ``width``)."""
        delta = torch.zeros(width, device=execution_device(module))
        try:
            with torch.no_grad():
                full, _ = self.run(module, delta, suffix=False)
                logits, _ = self.run(module, delta, suffix=True)
        except (TypeError, ValueError, AttributeError, IndexError, RuntimeError):
            return False
        if logits.shape != full.shape:
            return False
        scale = float(full.abs().max()) or 1.0
        tolerance = SUFFIX_TOLERANCE.get(full.dtype, 5e-2)
        return float((logits.float() - full.float()).abs().max()) <= tolerance * scale


def left_padded_positions(rows: Sequence[Sequence[int]], positions: Sequence[int]) -> tuple[list[int], list[bool]]:
    """Where NAMET adds ``δ``: each row's fact-token index as if the rows were left-padded to the
    longest and the index not moved, i.e. ``position − (longest − len(row))``, and whether that is
    inside the row (if not, NAMET adds ``δ`` to padding: the row's fact token keeps its position
    here and the row is left out of the NLL)."""
    longest = max(len(row) for row in rows)
    shifted = [position - (longest - len(row)) for row, position in zip(rows, positions)]
    reached = [where >= 0 for where in shifted]
    return [where if inside else position for where, inside, position in zip(shifted, reached, positions)], reached


def optimise_value(
    model: Any, module: nn.Module, located: LocatedRequest, settings: ValueOptions, *, key_module: nn.Module | None = None,
) -> OptimisedValue:
    """Optimise ``δ`` added to ``module``'s output at the located request's fact token, behind
    each of its prefixes (see the module docstring).

    Each step is one forward pass with ``δ`` added, logits computed only at the target and KL
    positions; the first (``δ = 0``) also gives the original output and the KL reference."""
    torch_model, tokenizer, request = model.torch_model, model.tokenizer, located.request
    rewriting = list(located.texts)
    essence = (
        essence_texts(model, request, settings.kl_prompts, settings.kl_continuation_tokens, located.fact_token)
        if settings.kl_factor > 0 else []
    )
    target = build_target_batch(tokenizer, rewriting, [request.target_new] * len(rewriting))
    rows = [row[: int(m.sum())].tolist() for row, m in zip(target.input_ids, target.attention_mask)]
    n_rewriting = len(rewriting)
    positions, reached = list(located.positions), [True] * n_rewriting
    if settings.delta_position == "left_padded":
        positions, reached = left_padded_positions(rows, positions)
    positions += [text.fact_position for text in essence]
    rows += [text.ids for text in essence]
    target_ids = target.target_ids[0]  # every rewriting row has the same target
    # the kept logit positions per row: a rewriting row's target positions, an essence text's KL positions
    kept = target.target_positions + [text.kl_positions for text in essence]
    keep_width = max(len(row) for row in kept)
    keep = torch.tensor([row + row[-1:] * (keep_width - len(row)) for row in kept], device=model.device)
    target_tokens = torch.tensor(target_ids, device=model.device)
    kl_rows = torch.tensor([n_rewriting + i for i, t in enumerate(essence) for _ in t.kl_positions], device=model.device)
    kl_cols = torch.tensor([j for t in essence for j in range(len(t.kl_positions))], device=model.device)

    def essence_log_probs(logits: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(logits[kl_rows, kl_cols].float(), dim=-1)

    with trainable_only(torch_model, []):  # weights frozen, dropout off
        try:
            last_attention = model.adapter.module(torch_model, "attn_out", model.adapter.num_layers(torch_model) - 1)
        except EasyEtconError:  # an adapter that does not name the attention's output projection
            last_attention = None
        passes = ForwardPasses(torch_model, rows, positions, keep, pad_id_of(tokenizer), model.device, last_attention)
        # δ lives in the residual stream, as wide as any MLP's output (ROME's module is one, MEMIT's a block)
        residual_width = model.adapter.in_out_features(model.adapter.module(torch_model, "mlp_out", 0))[1]
        delta = torch.zeros(residual_width, device=execution_device(module), requires_grad=True)  # where δ is added
        if passes.can_split and torch_model not in _SUFFIX_PASSES_AGREE:
            # checked apart from the optimisation, so every request's passes are the same whatever came before
            _SUFFIX_PASSES_AGREE[torch_model] = passes.suffix_agrees(module, residual_width)
        suffix = passes.can_split and _SUFFIX_PASSES_AGREE[torch_model]
        nll_value = float("inf")
        key = None
        for step in range(settings.steps + 1):
            reading_key = step == 0 and key_module is not None
            with capture_input(key_module) if reading_key else contextlib.nullcontext([]) as inputs:
                logits, output = passes.run(module, delta, suffix=suffix)
            if step == 0:  # δ = 0: this pass is also the unedited model's
                if key_module is not None:  # the rewriting rows are the prefixed prompts, target after the fact token
                    columns = torch.tensor([0 if suffix else p for p in positions[:n_rewriting]], device=inputs[0].device)
                    key = inputs[0][torch.arange(n_rewriting, device=columns.device), columns].float().mean(0).detach()
                originals = output[:n_rewriting].detach().float()
                original = originals[0]
                reference = essence_log_probs(logits).detach() if essence else None
                max_norm = settings.clamp_norm_factor * original.norm()
                if settings.norm_penalty == "linear":  # NAMET's anchor: the outputs δ is added to
                    anchor = originals[torch.tensor(reached, device=originals.device)].norm(dim=-1).pow(2).mean().sqrt()
                optimizer = torch.optim.Adam([delta], lr=settings.learning_rate)
            rewriting_logits = logits[:n_rewriting, : len(target_ids)]
            log_probs = torch.log_softmax(rewriting_logits.float(), dim=-1)
            row_nll = -log_probs.gather(-1, target_tokens.expand(n_rewriting, -1)[..., None]).squeeze(-1).mean(-1)
            nll = row_nll.mean() if all(reached) else row_nll[torch.tensor(reached, device=row_nll.device)].mean()
            nll_value = float(nll.detach())
            if nll_value < settings.stop_nll or step == settings.steps:  # the last pass only measures
                break
            if settings.norm_penalty == "linear":
                penalty = settings.weight_decay * delta.norm() / anchor
            else:
                penalty = settings.weight_decay * (delta.norm() / original.norm()) ** 2
            loss = nll + penalty.to(nll.device)
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
    hits = [hit for hit, used in zip(greedy_hits(rewriting_logits.detach(), target_ids), reached) if used]
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
    return OptimisedValue(delta.detach(), original, nll_value, key, originals)
