"""Which layers to edit: depth-based defaults from the architecture adapter, or causal tracing.

Facts are recalled by early-to-middle MLP layers at the subject's last token (Meng et al. 2022).
``default_layers`` turns that into indices from the depth the adapter reports (for a 28-layer
GPT-J: ROME layer 5, MEMIT layers 3-8, the papers' choices); ``trace_mlp_effects`` measures it
on the model at hand: corrupt the subject's embeddings with noise, restore one layer's MLP
output at the subject's last token, and see how much of the answer's probability comes back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from typing import Any, Literal

import torch

from easyetcon.errors import ConfigError
from easyetcon.devices import current_value
from easyetcon.text import encode_continuation, locate_subject_tokens
from easyetcon.activations import forward_hook, output_tensor

LayerChoice = Literal["auto", "trace"]

# INFO lines the command line shows (the layers tracing chose)
log = logging.getLogger("easyetcon.intrinsic")


def default_layers(num_layers: int, count: int = 1) -> list[int]:
    """``count`` consecutive early-middle layers of a ``num_layers``-deep model.

    One layer: ``round(0.2 (L - 1))``; a span starts at ``round(0.1 L)``.
    """
    count = max(1, min(count, num_layers))
    if count == 1:
        return [round(0.2 * (num_layers - 1))]
    start = min(round(0.1 * num_layers), num_layers - count)
    return list(range(start, start + count))


def default_span_size(num_layers: int) -> int:
    """How many layers MEMIT-style editors spread an update over: about a fifth of the depth, at least 2."""
    return min(num_layers, max(2, round(0.2 * num_layers)))


@torch.no_grad()
def trace_mlp_effects(
    model: Any, requests: Sequence[Any], *, noise_scale: float = 3.0, samples: int = 8, seed: int = 0,
    fact_token: str = "subject_last",
) -> list[float]:
    """Average indirect effect of each layer's MLP output at the fact token (by default the
    subject's last token; ``fact_token="last"``: the prompt's last token).

    For each request: the probability ``p`` of the first token of the true answer
    (``ground_truth``, else the model's own top token) from the clean prompt, ``p*`` with noise of
    ``noise_scale`` × the embeddings' std added to the subject's tokens, and ``p_l`` when layer
    ``l``'s clean MLP output at the fact token is restored in the noisy run. Returns
    ``mean(p_l - p*)`` per layer.
    """
    torch_model, tokenizer, adapter = model.torch_model, model.tokenizer, model.adapter
    num_layers = adapter.num_layers(torch_model)
    embed = adapter.embed_module(torch_model)
    scale = noise_scale * float(current_value(embed).float().std())  # offloaded embeddings are read from accelerate's map
    generator = torch.Generator().manual_seed(seed)
    effects = torch.zeros(num_layers, dtype=torch.float64)
    for request in requests:
        prompt = model.format_prompt(request.prompt)
        subject = locate_subject_tokens(tokenizer, prompt, request.subject, request_id=request.request_id)
        ids = torch.tensor([tokenizer(prompt)["input_ids"]] * (samples + 1), device=model.device)
        if request.ground_truth:
            answer = encode_continuation(tokenizer, request.ground_truth)[0]
        else:
            answer = int(torch_model(input_ids=ids[:1]).logits[0, -1].argmax())
        noise = torch.randn((samples, len(subject), embed.weight.shape[1]), generator=generator) * scale
        position = subject[-1] if fact_token == "subject_last" else ids.shape[1] - 1
        with forward_hook(embed, partial(_add_noise, span=(subject[0], subject[-1] + 1), noise=noise)):
            corrupted = _answer_probability(torch_model, ids, answer)
            for layer in range(num_layers):
                module = adapter.module(torch_model, "mlp_out", layer)
                with forward_hook(module, partial(_restore_clean, position=position)):
                    effects[layer] += _answer_probability(torch_model, ids, answer) - corrupted
    return (effects / max(1, len(requests))).tolist()


def _add_noise(_module: Any, _args: tuple, output: torch.Tensor, *, span: tuple[int, int], noise: torch.Tensor) -> torch.Tensor:
    """Rows 1.. get noise on the subject's embeddings; row 0 stays clean."""
    hidden = output.clone()
    hidden[1:, span[0] : span[1]] += noise.to(hidden.device, hidden.dtype)
    return hidden


def _restore_clean(_module: Any, _args: tuple, output: Any, *, position: int) -> Any:
    """Rows 1.. get the clean row's output at ``position``."""
    hidden = output_tensor(output).clone()
    hidden[1:, position] = hidden[0, position]
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def _answer_probability(torch_model: Any, ids: torch.Tensor, answer: int) -> float:
    logits = torch_model(input_ids=ids).logits[1:, -1].float()
    return float(torch.softmax(logits, -1)[:, answer].mean())


def best_window(effects: Sequence[float], count: int) -> list[int]:
    """The ``count`` consecutive layers with the largest summed effect."""
    count = max(1, min(count, len(effects)))
    sums = [sum(effects[start : start + count]) for start in range(len(effects) - count + 1)]
    start = max(range(len(sums)), key=lambda index: sums[index])
    return list(range(start, start + count))


def describe_traced_layers(option: str, chosen: Sequence[int], effects: Sequence[float], requests: Sequence[Any]) -> str:
    """One line: which layers ``option: trace`` chose, and each layer's effect behind the choice."""
    which = f"layer {chosen[0]}" if len(chosen) == 1 else f"layers {chosen[0]}-{chosen[-1]}"
    per_layer = ", ".join(f"{layer}: {effect:.3f}" for layer, effect in enumerate(effects))
    ids = ", ".join(r.request_id for r in requests)
    return f"{option}: trace chose {which} (causal effect per layer on request(s) {ids}: {per_layer})"


def resolve_layers(
    model: Any, choice: int | Sequence[int] | LayerChoice, requests: Sequence[Any], *, count: int, option: str,
    fact_token: str = "subject_last",
) -> list[int]:
    """Turn a config value into layer indices: explicit indices (negative count from the end),
    ``"auto"`` (:func:`default_layers`) or ``"trace"`` (:func:`trace_mlp_effects` at the fact token
    on up to 4 requests). Editors resolve it once, in ``prepare``, so tracing sees the unedited
    model and the run's first requests, also when the run is resumed."""
    num_layers = model.adapter.num_layers(model.torch_model)
    if choice == "auto":
        return default_layers(num_layers, count)
    if choice == "trace":
        traced = list(requests)[:4]
        effects = trace_mlp_effects(model, traced, fact_token=fact_token)
        chosen = best_window(effects, count)
        log.info(describe_traced_layers(option, chosen, effects, traced))
        return chosen
    indices = [choice] if isinstance(choice, int) else list(choice)
    bad = [index for index in indices if not -num_layers <= index < num_layers]
    if bad:
        raise ConfigError(
            f"option {option!r}: layer(s) {bad} do not exist; the model has {num_layers} layers "
            f"(0..{num_layers - 1}, or negative from the end)"
        )
    return sorted({index % num_layers for index in indices})
