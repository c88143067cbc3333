"""Output preservation: the gradient hook is the penalty's exact gradient, it holds the
preserved outputs in TPSFT and in TRL's GRPO, and it is refused where it cannot apply."""

import pytest
import torch
from easyetcon_consolidation.common import (
    FfnSelection,
    preservation_statistics,
    preserving_outputs,
)

from easyetcon.chain import EditChain
from easyetcon.errors import ConfigError
from easyetcon.testing import tiny_model, tiny_requests

from tests.consolidation.helpers import LetterReward

TEXTS = [f"Text number {i} about the tiny world and its people." for i in range(24)]

STATISTICS = {"source": "model-samples", "samples": 24, "cache": False, "progress": False}


@pytest.fixture
def host(easyetcon_host):
    easyetcon_host.register(LetterReward(), name="letter-reward")
    return easyetcon_host


def key_moment(model, layer):
    selection = FfnSelection(layers=[layer], preserve={"weight": 1.0, "statistics": STATISTICS})
    statistics = preservation_statistics(selection)
    statistics.use_texts(TEXTS)
    return statistics, statistics.get(model, [layer])[layer].mom2.double()


def output_change(before, after, model, layer, mom2):
    """``tr(ΔW C ΔWᵀ)`` in the (out, in) orientation: how far outputs on the keys moved."""
    module = model.adapter.module(model.torch_model, "mlp_out", layer)
    name = model.adapter.weight_name("mlp_out", layer)
    delta = (after[name] - before[name]).double()
    delta = delta.T if model.adapter.is_transposed(module) else delta
    return float(torch.trace(delta @ mom2 @ delta.T))


def hooked_gradient(model, selection, statistics, parameter):
    """``(start, gradient)``: the weight moved by a small random change inside
    :func:`preserving_outputs`, and the gradient the hook gives a zero loss there (the penalty's
    alone). The weight stays changed."""
    start = parameter.detach().clone()
    change = torch.randn_like(parameter) * 0.01
    with preserving_outputs(model, selection, statistics):
        with torch.no_grad():
            parameter.add_(change)
        parameter.requires_grad_(True)
        parameter.grad = None
        (parameter * 0).sum().backward()
        return start, parameter.grad.clone()


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_the_hook_adds_the_penalty_gradient(host, architecture):
    model = tiny_model(architecture, registry=host.registry)
    layer, weight = 1, 3.0
    selection = FfnSelection(layers=[layer], preserve={"weight": weight, "statistics": STATISTICS})
    statistics, mom2 = key_moment(model, layer)
    module = model.adapter.module(model.torch_model, "mlp_out", layer)
    parameter = module.weight
    start, hooked = hooked_gradient(model, selection, statistics, parameter)
    # the same penalty written out and differentiated by autograd
    variable = parameter.detach().clone().double().requires_grad_(True)
    delta = variable - start.double()
    delta = delta.T if model.adapter.is_transposed(module) else delta
    scaled = mom2 * mom2.shape[0] / torch.trace(mom2)
    (weight * torch.trace(delta @ scaled @ delta.T)).backward()
    scale = variable.grad.abs().max()
    assert (hooked.double() - variable.grad).abs().max() < 1e-5 * scale
    # and the hook is gone after the block
    parameter.grad = None
    (parameter * 0).sum().backward()
    assert torch.count_nonzero(parameter.grad) == 0
    with torch.no_grad():
        parameter.copy_(start)


def edited_once(host, editor, options, preserve, *, layer, architecture="llama"):
    """Apply one ``editor`` step (``weights.preserve`` = ``preserve``, or none) to one request;
    ``(model, weights before, C)`` of the held layer."""
    model = tiny_model(architecture, registry=host.registry)
    _, mom2 = key_moment(model, layer)
    weights = {"layers": [layer], **({"preserve": {**preserve, "statistics": STATISTICS}} if preserve else {})}
    chain = EditChain([(editor, {**options, "weights": weights})])
    if preserve:
        chain.steps[0].editor.statistics.use_texts(TEXTS)
    before = {k: v.detach().clone() for k, v in model.torch_model.state_dict().items()}
    requests = [r.model_copy(update={"metadata": {"qa_prompts": [f"Question: {r.prompt}? Answer:"]}})
                for r in tiny_requests()[:1]]
    chain.apply(model, requests)
    return model, before, mom2


def preserved_and_edited(host, editor, options, preserve):
    """Apply one step with or without ``preserve``; how much the outputs on the keys moved."""
    layer = 2
    model, before, mom2 = edited_once(host, editor, options, {"weight": preserve} if preserve else None, layer=layer)
    return output_change(before, model.torch_model.state_dict(), model, layer, mom2)


def test_tpsft_moves_preserved_outputs_less(host):
    options = {"rounds": 10, "learning_rate": 1e-2, "prompts": {"questions": False}}
    free = preserved_and_edited(host, "tpsft", options, None)
    held = preserved_and_edited(host, "tpsft", options, 100.0)
    assert 0 < held < 0.5 * free


def test_grpo_moves_preserved_outputs_less(host):
    options = {"steps": 4, "group_size": 2, "prompts_per_step": 1, "max_completion_tokens": 6,
               "learning_rate": 1e-2, "rewards": {"letter-e": 1.0}, "format_gate": None}
    free = preserved_and_edited(host, "grpo", options, None)
    held = preserved_and_edited(host, "grpo", options, 100.0)
    assert 0 < held < 0.5 * free


@pytest.mark.parametrize("editor", ["tpsft", "grpo"])
def test_preserve_needs_the_output_projection(host, editor):
    with pytest.raises(ConfigError, match="'preserve'.*modules"):
        host.registry.editor(editor).create({"weights": {"modules": "mlp", "preserve": {"weight": 1.0}}})


def test_preserve_weight_must_be_positive(host):
    with pytest.raises(ConfigError, match="weight"):
        host.registry.editor("tpsft").create({"weights": {"preserve": {"weight": 0}}})


def relative_output_change(host, editor, options, budget, architecture="llama"):
    """One step with ``preserve.budget`` (or none): sqrt(tr(ΔW C ΔWᵀ) / tr(W C Wᵀ)) on the keys."""
    layer = 1
    model, before, mom2 = edited_once(host, editor, options, {"budget": budget} if budget else None,
                                      layer=layer, architecture=architecture)
    module = model.adapter.module(model.torch_model, "mlp_out", layer)
    start = before[model.adapter.weight_name("mlp_out", layer)].double()
    start = start.T if model.adapter.is_transposed(module) else start
    reference = float(torch.trace(start @ mom2 @ start.T))
    return (output_change(before, model.torch_model.state_dict(), model, layer, mom2) / reference) ** 0.5


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_tpsft_keeps_to_the_locality_budget(host, architecture):
    options = {"rounds": 10, "learning_rate": 1e-2, "prompts": {"questions": False}}
    free = relative_output_change(host, "tpsft", options, None, architecture)
    budget = free / 4
    held = relative_output_change(host, "tpsft", options, budget, architecture)
    # the change goes up to the budget, never past it (float32 rounding aside)
    assert 0.5 * budget < held <= budget * (1 + 1e-4)


def test_grpo_keeps_to_the_locality_budget(host):
    options = {"steps": 4, "group_size": 2, "prompts_per_step": 1, "max_completion_tokens": 6,
               "learning_rate": 1e-2, "rewards": {"letter-e": 1.0}, "format_gate": None}
    free = relative_output_change(host, "grpo", options, None)
    budget = free / 4
    held = relative_output_change(host, "grpo", options, budget)
    assert 0 < held <= budget * (1 + 1e-4)


def test_preserve_needs_a_weight_or_a_budget(host):
    with pytest.raises(ConfigError, match="weight.*budget"):
        host.registry.editor("tpsft").create({"weights": {"preserve": {"statistics": STATISTICS}}})
    with pytest.raises(ConfigError, match="budget"):
        host.registry.editor("grpo").create({"weights": {"preserve": {"budget": 0}}})
    both = host.registry.editor("tpsft").create({"weights": {"preserve": {"weight": 1.0, "budget": 0.05}}})
    assert both.config.weights.preserve.budget == 0.05


def test_scale_outputs_divides_the_penalty_by_the_outputs_energy(host):
    """With ``scale: outputs`` the hook's gradient is that of λ·tr(ΔW C ΔWᵀ)/tr(W C Wᵀ), the
    penalty on the squared relative change of the outputs."""
    model = tiny_model(registry=host.registry)
    layer, weight = 1, 3.0
    selection = FfnSelection(layers=[layer], preserve={"weight": weight, "scale": "outputs", "statistics": STATISTICS})
    statistics, mom2 = key_moment(model, layer)
    parameter = model.adapter.module(model.torch_model, "mlp_out", layer).weight
    start, hooked = hooked_gradient(model, selection, statistics, parameter)
    variable = parameter.detach().clone().double().requires_grad_(True)
    delta, w0 = variable - start.double(), start.double()
    (weight * torch.trace(delta @ mom2 @ delta.T) / torch.trace(w0 @ mom2 @ w0.T)).backward()
    assert (hooked.double() - variable.grad).abs().max() < 1e-5 * variable.grad.abs().max()
    with torch.no_grad():
        parameter.copy_(start)


def test_scale_outputs_uses_each_layers_own_energy(host):
    """Two held layers: each weight's penalty is divided by its own tr(W C Wᵀ), not the last one's."""
    model = tiny_model(registry=host.registry)
    layers, weight = [0, 1], 3.0
    selection = FfnSelection(layers=layers, preserve={"weight": weight, "scale": "outputs", "statistics": STATISTICS})
    statistics = preservation_statistics(selection)
    statistics.use_texts(TEXTS)
    moments = statistics.get(model, layers)
    parameters = [model.adapter.module(model.torch_model, "mlp_out", layer).weight for layer in layers]
    starts = [p.detach().clone() for p in parameters]
    with preserving_outputs(model, selection, statistics):
        with torch.no_grad():
            for p in parameters:
                p.add_(torch.randn_like(p) * 0.01)
        for p in parameters:
            p.requires_grad_(True)
            p.grad = None
        sum((p * 0).sum() for p in parameters).backward()
        hooked = [p.grad.clone() for p in parameters]
    for layer, parameter, start, gradient in zip(layers, parameters, starts, hooked):
        mom2 = moments[layer].mom2.double()
        variable = parameter.detach().clone().double().requires_grad_(True)
        delta, w0 = variable - start.double(), start.double()
        (weight * torch.trace(delta @ mom2 @ delta.T) / torch.trace(w0 @ mom2 @ w0.T)).backward()
        assert (gradient.double() - variable.grad).abs().max() < 1e-5 * variable.grad.abs().max(), layer
    with torch.no_grad():
        for parameter, start in zip(parameters, starts):
            parameter.copy_(start)
