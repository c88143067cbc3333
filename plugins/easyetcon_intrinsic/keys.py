"""Keys and values at a fact's token: what locate-then-edit editors read and write.

A *key* is the input of a layer's MLP output projection (the adapter's ``mlp_out`` module) at
the *fact token* (ROME's ``fact_token``): the last token of the subject (``"subject_last"``, the
papers' default) or the last token of the prompt (``"last"``); the projection maps it to a
*value* added to the residual stream. ROME, MEMIT and AlphaEdit average each key over several short prefixes so the edit does
not depend on what precedes the subject. Everything here is read with forward hooks, so it
works for any architecture an :class:`~easyetcon.adapters.ArchitectureAdapter` describes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import nn

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


class StopForward(Exception):
    """Raised inside a hook to end a forward pass once the activations we need are read."""


def pad_right(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token rows, so each token keeps its position: ``(input_ids, attention_mask)``."""
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(list(row), dtype=torch.long)
        mask[i, : len(row)] = 1
    return input_ids, mask


def pad_id_of(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def subject_last_positions(
    tokenizer: Any, prompts: Sequence[str], subjects: Sequence[str], request_ids: Sequence[str | None]
) -> list[int]:
    """Index of the subject's last token in each tokenised prompt (a missing subject names the request)."""
    return [
        locate_subject_tokens(tokenizer, prompt, subject, request_id=request_id)[-1]
        for prompt, subject, request_id in zip(prompts, subjects, request_ids)
    ]


FactToken = Literal["subject_last", "last"]


def fact_positions(
    tokenizer: Any, prompts: Sequence[str], subjects: Sequence[str], request_ids: Sequence[str | None],
    fact_token: FactToken = "subject_last",
) -> list[int]:
    """The fact token of each prompt: the subject's last token, or the prompt's last token."""
    if fact_token == "last":
        return [len(tokenizer(prompt)["input_ids"]) - 1 for prompt in prompts]
    return subject_last_positions(tokenizer, prompts, subjects, request_ids)


def output_tensor(output: Any) -> torch.Tensor:
    """The hidden states of a module's output (decoder blocks return a tuple in older transformers)."""
    return output[0] if isinstance(output, tuple) else output


@contextmanager
def capture_input(module: nn.Module, *, stop: bool = False) -> Iterator[list[torch.Tensor]]:
    """Collect the first positional input of ``module`` on every forward call; with ``stop``,
    end the forward pass right after (the rest of the model is not needed)."""
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, args: tuple) -> None:
        captured.append(args[0])
        if stop:
            raise StopForward

    handle = module.register_forward_pre_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


@contextmanager
def capture_output(module: nn.Module, *, stop: bool = False) -> Iterator[list[torch.Tensor]]:
    """Collect ``module``'s output hidden states on every forward call."""
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, _args: tuple, output: Any) -> None:
        captured.append(output_tensor(output))
        if stop:
            raise StopForward

    handle = module.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


@contextmanager
def add_to_output(module: nn.Module, positions: Sequence[int], delta: torch.Tensor) -> Iterator[None]:
    """Add ``delta`` to ``module``'s output at ``positions[i]`` of row ``i`` (differentiably)."""

    def hook(_module: nn.Module, _args: tuple, output: Any) -> Any:
        hidden = output_tensor(output)
        rows = torch.arange(len(positions), device=hidden.device)
        cols = torch.tensor(list(positions), device=hidden.device)
        shift = torch.zeros_like(hidden)
        shift[rows, cols] = delta.to(hidden.dtype)
        edited = hidden + shift
        return (edited, *output[1:]) if isinstance(output, tuple) else edited

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def run_forward(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, **inputs: Any) -> None:
    """A forward pass that may be ended early by :class:`StopForward` (``use_cache=False`` unless ``inputs`` say otherwise)."""
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, **{"use_cache": False, **inputs})
    except StopForward:
        pass


@torch.no_grad()
def activations_at(
    model: Any, module: nn.Module, prompts: Sequence[str], positions: Sequence[int], *, which: str = "input",
    batch_size: int = 32,
) -> torch.Tensor:
    """``module``'s input (``which="input"``) or output at ``positions[i]`` of ``prompts[i]``, as fp32 ``(n, d)``."""
    torch_model, tokenizer = model.torch_model, model.tokenizer
    capture = capture_input if which == "input" else capture_output
    rows: list[torch.Tensor] = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        ids, mask = pad_right([tokenizer(p)["input_ids"] for p in chunk], pad_id_of(tokenizer))
        with capture(module, stop=True) as captured:
            run_forward(torch_model, ids.to(model.device), mask.to(model.device))
        hidden = captured[0]
        index = torch.tensor(list(positions[start : start + batch_size]), device=hidden.device)
        rows.append(hidden[torch.arange(len(chunk), device=hidden.device), index].float())
    return torch.cat(rows)


def fill_prefixes(prefixes: Sequence[str], prompt: str) -> list[str]:
    return [prefix.format(prompt) if "{}" in prefix else f"{prefix} {prompt}" for prefix in prefixes]


def fact_keys(
    model: Any, layer: int, requests: Sequence[Any], prefixes: Sequence[str] = ("{}",),
    fact_token: FactToken = "subject_last",
) -> torch.Tensor:
    """The key of each request at ``layer``: the input of ``mlp_out`` at the fact token (by default
    the subject's last token), averaged over ``prefixes`` (templates with ``{}`` for the prompt).
    fp32 ``(n_requests, d_in)``."""
    module = model.adapter.module(model.torch_model, "mlp_out", layer)
    texts, positions = [], []
    for request in requests:
        filled = fill_prefixes(prefixes, request.prompt)
        texts.extend(filled)
        positions.extend(
            fact_positions(
                model.tokenizer, filled, [request.subject] * len(filled), [request.request_id] * len(filled), fact_token
            )
        )
    keys = activations_at(model, module, texts, positions, which="input")
    return keys.view(len(requests), len(prefixes), -1).mean(dim=1)


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
    continuations = model.generate(seeds, max_new_tokens=length, stop=("\n",), use_memory=False)
    prefixes = ["{}"]
    for seed, text in zip(seeds, continuations):
        text = (seed + text).replace("{", " ").replace("}", " ").strip()
        prefixes.append(f"{text}. {{}}")
    return prefixes
