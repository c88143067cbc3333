"""Training primitives shared by fine-tuning editors: which weights train, and the loss."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from easyetcon.text import IGNORE_INDEX


@contextmanager
def trainable_only(model: nn.Module, names: Sequence[str]) -> Iterator[list[nn.Parameter]]:
    """Within the block only the named parameters require grad; the model is in train mode
    with dropout disabled (editing wants deterministic gradients). Everything is restored
    afterwards, also on error."""
    wanted = set(names)
    params = dict(model.named_parameters())
    missing = wanted - params.keys()
    if missing:
        raise KeyError(f"no parameter(s) {sorted(missing)} in {type(model).__name__}")
    flags = {name: p.requires_grad for name, p in params.items()}
    was_training = model.training
    try:
        for name, p in params.items():
            p.requires_grad_(name in wanted)
        model.eval()  # no dropout; gradients still flow
        yield [params[name] for name in names]
    finally:
        for name, p in params.items():
            p.requires_grad_(flags[name])
        model.train(was_training)


def masked_token_nll(logits: torch.Tensor, labels: torch.Tensor, token_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token NLL over labelled positions (labels are aligned with inputs, as in
    ``transformers``: logits at position p predict labels at p+1). ``token_weights`` (same shape
    as ``labels``) scales each labelled token's loss, e.g. entropy-adaptive weights."""
    shifted_logits = logits[:, :-1].float()
    shifted_labels = labels[:, 1:]
    losses = torch.nn.functional.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.shape[-1]),
        shifted_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view_as(shifted_labels)
    mask = (shifted_labels != IGNORE_INDEX).float()
    if token_weights is not None:
        mask = mask * token_weights[:, 1:].to(mask.dtype)
    return (losses * mask).sum() / (shifted_labels != IGNORE_INDEX).sum().clamp(min=1)


def clamp_to_box(parameters: Sequence[nn.Parameter], originals: Sequence[torch.Tensor], bound: float) -> None:
    """Project each parameter back into an L-infinity box of radius ``bound`` around its original."""
    with torch.no_grad():
        for parameter, original in zip(parameters, originals):
            parameter.copy_(original + (parameter - original).clamp(-bound, bound))


def first_param_device(model: Any) -> torch.device:
    return next(model.parameters()).device


def entropy_adaptive_weights(logits: torch.Tensor, *, top_k: int = 20, alpha: float = 1.0) -> torch.Tensor:
    """EAFT token weights (arXiv 2601.02151): each position's top-K entropy divided by ln K,
    raised to ``alpha``, computed without gradient.

    A confident-conflict token — the model is sure of something else (low entropy) and gives
    the target a low probability — gets a small weight, so fine-tuning does not bulldoze
    knowledge the model holds firmly. The weight at position p scales the loss of the token
    predicted from p, i.e. it aligns with ``labels[:, p + 1]``; the returned tensor is shifted
    to align with ``labels`` (same shape, first column 1).
    """
    if top_k < 2:
        raise ValueError(f"top_k must be at least 2, got {top_k}")
    with torch.no_grad():
        k = min(top_k, logits.shape[-1])
        top = torch.topk(logits.float(), k, dim=-1).values
        probs = torch.softmax(top, dim=-1)
        entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum(-1)
        weights = (entropy / torch.log(torch.tensor(float(k)))).clamp(0.0, 1.0) ** alpha
        aligned = torch.ones_like(weights)
        aligned[:, 1:] = weights[:, :-1]
    return aligned
