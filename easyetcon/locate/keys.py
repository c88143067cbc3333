"""Keys and values at a fact's token: what locate-then-edit editors read and write.

A *key* is the input of a layer's MLP output projection (the adapter's ``mlp_out`` module) at
the *fact token* (ROME's ``fact_token``): the last token of the subject (``"subject_last"``, the
papers' default) or the last token of the prompt (``"last"``); the projection maps it to a
*value* added to the residual stream. ROME, MEMIT and AlphaEdit average each key over several short prefixes so the edit does
not depend on what precedes the subject. Everything here is read with forward hooks (:mod:`easyetcon.activations`), so it
works for any architecture an :class:`~easyetcon.adapters.ArchitectureAdapter` describes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from easyetcon.activations import activations_at
from easyetcon.text import locate_subject_tokens

#: Prefixes used when ``prefix_source="fixed"``; ``{}`` stands for the prompt.
FIXED_PREFIXES = (
    "{}",
    "Here is a fact. {}",
    "I learned something today. {}",
    "The following is true. {}",
    "As everyone knows, {}",
    "Note: {}",
    "In short, {}",
    "Read this. {}",
    "It is said that {}",
    "Fact: {}",
    "They told me that {}",
)

#: Words the model continues to make its own prefixes (as ROME does, but greedily: deterministic).
PREFIX_SEEDS = ("The", "Therefore", "Because", "I", "You", "It", "In", "A", "When", "She")


def subject_last_positions(
    tokenizer: Any, prompts: Sequence[str], subjects: Sequence[str], request_ids: Sequence[str | None]
) -> list[int]:
    """Index of the subject's last token in each tokenised prompt (a missing subject names the request)."""
    return [
        locate_subject_tokens(tokenizer, prompt, subject, request_id=request_id)[-1]
        for prompt, subject, request_id in zip(prompts, subjects, request_ids)
    ]


FactToken = Literal["subject_last", "last"]


class KeyOptions(BaseModel):
    """Where a locate-then-edit editor reads its keys and writes its values (the ``key:`` section)."""

    model_config = ConfigDict(extra="forbid")

    fact_token: FactToken = Field(
        default="subject_last",
        description="where keys are read and values written: the subject's last token (the papers) or the "
        "prompt's last token (ROME's 'last' strategy: specific to subject and relation)",
    )
    prefixes: int = Field(
        default=10, ge=0, le=100, description="prefix contexts keys and values are averaged over (besides the bare prompt)"
    )
    prefix_length: int = Field(default=10, ge=1, le=64, description="tokens per generated prefix")
    prefix_source: Literal["generated", "fixed"] = Field(
        default="generated",
        description="'generated': greedy continuations of seed words by the model; 'fixed': built-in sentences",
    )


def fact_positions(
    tokenizer: Any, prompts: Sequence[str], subjects: Sequence[str], request_ids: Sequence[str | None],
    fact_token: FactToken = "subject_last",
) -> list[int]:
    """The fact token of each prompt: the subject's last token, or the prompt's last token."""
    if fact_token == "last":
        return [len(tokenizer(prompt)["input_ids"]) - 1 for prompt in prompts]
    return subject_last_positions(tokenizer, prompts, subjects, request_ids)


def fill_prefixes(prefixes: Sequence[str], prompt: str) -> list[str]:
    return [prefix.format(prompt) if "{}" in prefix else f"{prefix} {prompt}" for prefix in prefixes]


@dataclass(frozen=True)
class LocatedRequest:
    """A request located once: its prompt behind every prefix (``texts[0]`` is the bare prompt) and
    the fact token's index in each tokenised text. Keys and values are read at these positions."""

    request: Any
    texts: tuple[str, ...]
    positions: tuple[int, ...]
    fact_token: FactToken

    @property
    def position(self) -> int:
        """The fact token's index in the bare prompt."""
        return self.positions[0]


def locate_request(
    tokenizer: Any, request: Any, prefixes: Sequence[str], fact_token: FactToken,
    *, format_prompt: Callable[[str], str] | None = None, context: str = "",
) -> LocatedRequest:
    """Locate ``request``'s fact token behind each of ``prefixes`` (the first must be ``"{}"``),
    each prefixed prompt put in the model's context by ``format_prompt`` (the prefix is part of
    what the user says).

    ``context`` is text the model has already said after the prompt (an answer so far, with its
    leading space): it follows each formatted prompt, so the target is what comes after it, and
    the ``"last"`` fact token is its last token. The subject is still the prompt's (a mention of
    it in ``context`` is not the fact token)."""
    if not prefixes or prefixes[0] != "{}":
        raise ValueError(f"the first prefix must be the bare prompt '{{}}', got {list(prefixes[:1])}")
    prompts = fill_prefixes(prefixes, request.prompt)
    if format_prompt is not None:
        prompts = [format_prompt(text) for text in prompts]
    texts = [prompt + context for prompt in prompts]
    # the subject's tokens are the same in the prompt alone: the context only follows them
    located = texts if fact_token == "last" else prompts
    positions = fact_positions(tokenizer, located, [request.subject] * len(texts), [request.request_id] * len(texts), fact_token)
    return LocatedRequest(request, tuple(texts), tuple(positions), fact_token)


def located_keys(model: Any, module: torch.nn.Module, located: Sequence[LocatedRequest]) -> torch.Tensor:
    """The input of ``module`` at each located request's fact token, averaged over its prefixed
    texts: fp32 ``(n_requests, d_in)``."""
    texts = [text for entry in located for text in entry.texts]
    positions = [position for entry in located for position in entry.positions]
    keys = activations_at(model, module, texts, positions, which="input")
    return keys.view(len(located), len(located[0].texts), -1).mean(dim=1)


def fact_keys(
    model: Any, layer: int, requests: Sequence[Any], prefixes: Sequence[str] = ("{}",),
    fact_token: FactToken = "subject_last",
) -> torch.Tensor:
    """The key of each request at ``layer``: the input of ``mlp_out`` at the fact token (by default
    the subject's last token), averaged over ``prefixes`` (templates with ``{}`` for the prompt;
    the first is the bare ``"{}"``). fp32 ``(n_requests, d_in)``."""
    module = model.adapter.module(model.torch_model, "mlp_out", layer)
    located = [locate_request(model.tokenizer, r, prefixes, fact_token, format_prompt=model.format_prompt) for r in requests]
    return located_keys(model, module, located)


@torch.no_grad()
def make_prefixes(model: Any, count: int, length: int, source: str = "generated") -> list[str]:
    """``count`` prefix templates plus the bare ``"{}"``.

    ``"generated"``: the model continues seed words greedily for ``length`` tokens (deterministic,
    in the model's own distribution, as in ROME); ``"fixed"``: built-in neutral sentences.
    Editors call it once, in ``prepare``, on the unedited model: an edited model continues the
    seeds differently, and a resumed run could not reproduce those prefixes.
    """
    if count == 0:
        return ["{}"]
    if source == "fixed":
        return list(FIXED_PREFIXES[: count + 1])
    seeds = [PREFIX_SEEDS[i % len(PREFIX_SEEDS)] for i in range(count)]
    continuations = model.generate(seeds, max_new_tokens=length, stop=("\n",), raw=True)
    prefixes = ["{}"]
    for seed, text in zip(seeds, continuations):
        text = (seed + text).replace("{", " ").replace("}", " ").strip()
        prefixes.append(f"{text}. {{}}")
    return prefixes
