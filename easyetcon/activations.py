"""Reading and changing activations with forward hooks, for any architecture an
:class:`~easyetcon.adapters.ArchitectureAdapter` describes.

What editors share to look inside a model: capture a module's input or output, add a change to
its output at chosen positions, stop a forward pass once what is needed has been read, and read
one module's activations at one position of each prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from easyetcon.text import pad_id_of, pad_rows


class StopForward(Exception):
    """Raised inside a hook to end a forward pass once the activations we need are read."""


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
        shift[rows, cols] = delta.to(device=hidden.device, dtype=hidden.dtype)
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
        ids, mask = pad_rows([tokenizer(p)["input_ids"] for p in chunk], pad_id_of(tokenizer))
        with capture(module, stop=True) as captured:
            run_forward(torch_model, ids.to(model.device), mask.to(model.device))
        hidden = captured[0]
        index = torch.tensor(list(positions[start : start + batch_size]), device=hidden.device)
        rows.append(hidden[torch.arange(len(chunk), device=hidden.device), index].float())
    return torch.cat(rows)


@contextmanager
def forward_hook(module: nn.Module, hook: Callable[..., Any]) -> Iterator[None]:
    """``hook`` registered as ``module``'s forward hook while the block runs."""
    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
