"""Training primitives shared by fine-tuning editors: which weights train, and the loss."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from easyetcon.text import IGNORE_INDEX


#: Dtypes whose weights train through fp32 master copies (Adam's eps and small updates vanish in them).
HALF_PRECISION = (torch.float16, torch.bfloat16)


@contextmanager
def trainable_only(model: nn.Module, names: Sequence[str]) -> Iterator[list[nn.Parameter]]:
    """Within the block only the named parameters require grad; the model is in train mode
    with dropout disabled (editing wants deterministic gradients). Yields the tensors to
    optimise, in the order of ``names``: the parameters themselves, or for float16/bfloat16
    parameters their fp32 masters (see :func:`fp32_master_weights`). Everything is restored
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
        with fp32_master_weights(model, names) as tensors:
            yield tensors
    finally:
        for name, p in params.items():
            p.requires_grad_(flags[name])
        model.train(was_training)


@contextmanager
def fp32_master_weights(model: nn.Module, names: Sequence[str]) -> Iterator[list[nn.Parameter]]:
    """Train half-precision weights through fp32 master copies (mixed-precision training).

    For each named float16/bfloat16 parameter an fp32 copy takes its place in the module for
    the block: ``named_parameters()`` and ``module.weight`` outside a forward pass give the
    master (so optimisers, also TRL's, step it and gradient hooks see it), while inside the
    module's forward ``module.weight`` is the master cast to the model's dtype, with gradient
    flowing back to the master. On exit the original parameter object is written with the
    master cast to its dtype and put back. Costs one fp32 copy of the named weights.

    Yields the tensors to optimise in the order of ``names``: masters for half-precision
    parameters, the parameters themselves otherwise (fp32 training is untouched).
    """
    params = dict(model.named_parameters())
    missing = set(names) - params.keys()
    if missing:
        raise KeyError(f"no parameter(s) {sorted(missing)} in {type(model).__name__}")
    masters: dict[int, nn.Parameter] = {}
    installed: list[tuple[nn.Parameter, nn.Parameter, list[tuple[nn.Module, str]]]] = []
    handles = []
    try:
        tensors = []
        for name in names:
            parameter = params[name]
            if parameter.dtype not in HALF_PRECISION:
                tensors.append(parameter)
                continue
            if id(parameter) not in masters:
                master = nn.Parameter(parameter.detach().float(), requires_grad=parameter.requires_grad)
                masters[id(parameter)] = master
                # every module holding the parameter (tied weights) must read the same master
                sites = [(m, attr) for m in model.modules() for attr, p in m._parameters.items() if p is parameter]
                installed.append((parameter, master, sites))
                for module, attr in sites:
                    module._parameters[attr] = master
                    handles.append(module.register_forward_pre_hook(_cast_in(attr, master, parameter.dtype)))
                    handles.append(module.register_forward_hook(_cast_out(attr), always_call=True))
            tensors.append(masters[id(parameter)])
        yield tensors
    finally:
        for handle in handles:
            handle.remove()
        with torch.no_grad():
            for parameter, master, sites in installed:
                parameter.copy_(master)  # round to nearest: the stored weight is the master cast
                for module, attr in sites:
                    module.__dict__.pop(attr, None)
                    module._parameters[attr] = parameter


def _cast_in(attr: str, master: nn.Parameter, dtype: torch.dtype) -> Any:
    def hook(module: nn.Module, args: Any) -> None:
        # an instance attribute shadows ``_parameters`` for this call: the forward computes in the
        # model's dtype with exactly the weight that will be stored, and backward reaches the master
        module.__dict__[attr] = master.to(dtype)

    return hook


def _cast_out(attr: str) -> Any:
    def hook(module: nn.Module, args: Any, output: Any) -> None:
        module.__dict__.pop(attr, None)

    return hook


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
    """Project each parameter back into an L-infinity box of radius ``bound`` around its original.
    Give it the tensors :func:`trainable_only` yields (fp32 masters of half-precision weights),
    so the box holds on what the optimiser steps; casting back can add half a unit in the last place."""
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


class EaftOptions(BaseModel):
    """Entropy-adaptive fine-tuning (EAFT) as a loss option of an SFT-style editor."""

    model_config = ConfigDict(extra="forbid")

    top_k: int = Field(default=20, ge=2, description="K of the top-K entropy (normalised by ln K)")
    alpha: float = Field(default=1.0, gt=0, description="exponent applied to the normalised entropy")
    tokens: Literal["all", "target", "surrounding"] = Field(
        default="all",
        description="which completion tokens are weighted: all, only the edit target's tokens, or only the "
        "tokens around it (answer tags, full stop); the others keep weight 1",
    )


def target_token_mask(labels: torch.Tensor, target_ids: Sequence[Sequence[int]]) -> torch.Tensor:
    """Bool tensor shaped like ``labels``: True at the labelled tokens that spell the edit target.

    ``target_ids[i]`` are the target's own tokens (as :func:`easyetcon.text.encode_continuation`
    gives them); their last occurrence inside row ``i``'s labelled span is marked. A row whose
    completion does not contain them verbatim (a tokenizer that merges across the boundary)
    counts entirely as target, so EAFT restricted to "surrounding" tokens never weights the edit.
    """
    mask = torch.zeros_like(labels, dtype=torch.bool)
    for row, wanted in enumerate(target_ids):
        positions = (labels[row] != IGNORE_INDEX).nonzero().flatten().tolist()
        tokens = labels[row, positions].tolist()
        n = len(wanted)
        starts = [i for i in range(len(tokens) - n + 1) if n and tokens[i : i + n] == list(wanted)]
        chosen = positions[starts[-1] : starts[-1] + n] if starts else positions
        mask[row, chosen] = True
    return mask


def eaft_token_weights(
    logits: torch.Tensor, labels: torch.Tensor, options: EaftOptions, target_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Loss weights aligned with ``labels``: :func:`entropy_adaptive_weights` on the tokens that
    ``options.tokens`` selects (``target_mask`` marks the edit target's tokens; None means every
    labelled token is target), 1 elsewhere."""
    weights = entropy_adaptive_weights(logits, top_k=options.top_k, alpha=options.alpha)
    if options.tokens == "all":
        return weights
    is_target = target_mask if target_mask is not None else labels != IGNORE_INDEX
    selected = is_target if options.tokens == "target" else ~is_target
    return torch.where(selected, weights, torch.ones_like(weights))


@contextmanager
def reused_lower_blocks(model: Any, first_trained: int) -> Iterator[None]:
    """Run the blocks below ``first_trained`` once, not at every training step.

    Training that changes only weights in block ``first_trained`` or above, on the same batch at
    every step (FT-L, FT-M, TPSFT), would recompute identical activations below it each time:
    that is ``first_trained / num_layers`` of every forward pass. Inside this context the first
    forward pass runs in full and records what block ``first_trained`` receives; a later pass
    whose input to block 0 is the same (``torch.equal``) skips the blocks below, and block
    ``first_trained`` is given the recorded input. Any other input runs in full (and is recorded
    in turn). The results are bit-identical to full passes, so resumed runs stay exact.

    Nothing is reused (the context does nothing) when a parameter below ``first_trained``
    requires grad or a block below is in training mode (dropout would differ at each step).
    ``model`` is an :class:`~easyetcon.model.EditableModel`.
    """
    blocks = list(model.adapter.blocks(model.torch_model))
    lower = blocks[:first_trained]
    if (
        not lower
        or first_trained >= len(blocks)
        or any(block.training for block in lower)
        or any(p.requires_grad for block in lower for p in block.parameters())
    ):
        yield
        return
    # input: block 0's input of the recorded pass; received: block first_trained's input in it;
    # stand_in: the last lower block's output, returned by every skipped block (only its
    # structure matters: block first_trained is handed `received`)
    state: dict[str, Any] = {"input": None, "received": None, "stand_in": None, "skip": False}

    def hidden_of(args: tuple, kwargs: dict) -> torch.Tensor:
        return args[0] if args else kwargs["hidden_states"]

    def first_block_input(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden, known = hidden_of(args, kwargs), state["input"]
        state["skip"] = (
            known is not None and state["received"] is not None and state["stand_in"] is not None
            and hidden.shape == known.shape and torch.equal(hidden, known)
        )
        if not state["skip"]:
            state.update(input=hidden.detach().clone(), received=None, stand_in=None)

    def trained_block_input(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if not state["skip"]:
            state["received"] = hidden_of(args, kwargs).detach().clone()
            return None
        if args:
            return (state["received"], *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": state["received"]}

    def skippable(block: nn.Module, forward: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            if state["skip"]:
                return state["stand_in"]
            output = forward(*args, **kwargs)
            if block is lower[-1]:
                state["stand_in"] = _detached(output)
            return output

        return run

    saved = [block.__dict__.get("forward") for block in lower]  # an instance-level forward (accelerate's hooks)
    handles = [
        blocks[0].register_forward_pre_hook(first_block_input, with_kwargs=True, prepend=True),
        blocks[first_trained].register_forward_pre_hook(trained_block_input, with_kwargs=True),
    ]
    for block in lower:
        block.forward = skippable(block, block.forward)
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for block, forward in zip(lower, saved):
            if forward is None:
                del block.forward
            else:
                block.forward = forward


def _detached(output: Any) -> Any:
    if isinstance(output, torch.Tensor):
        return output.detach()
    if isinstance(output, tuple) and not hasattr(output, "_fields"):
        return tuple(_detached(item) for item in output)
    return output
