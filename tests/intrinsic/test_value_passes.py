"""The value optimisation's forward passes: the unchanged prefix of every row runs once, each step
only from the fact token on, logits only where they are read; the result is the full passes'."""

import warnings

import pytest
import torch
from easyetcon.locate import values
from easyetcon.locate.keys import fill_prefixes, locate_request
from easyetcon.locate.values import ForwardPasses, ValueOptions, optimise_value

from easyetcon.plugins import get_host
from easyetcon.testing import tiny_model
from tests.intrinsic.helpers import subject_final_requests

PREFIXES = ["{}", "Hello there. {}", "A b c d e f g. {}"]


def settings(**changes):
    options = dict(
        steps=6, learning_rate=0.5, kl_factor=0.5, weight_decay=0.01, clamp_norm_factor=4.0, stop_nll=0.0,
        kl_prompts=["{subject} is a"], kl_continuation_tokens=0,
    )
    return ValueOptions(**{**options, **changes})


def located(model, request):
    return locate_request(model.tokenizer, request, PREFIXES, "subject_last")


def passes_for(model, rows, positions, keep):
    keep = torch.tensor(keep)
    return ForwardPasses(model.torch_model, rows, positions, keep, model.tokenizer.pad_token_id or 0, model.device)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_a_suffix_pass_gives_the_full_pass_logits_even_when_a_fact_token_comes_first(arch):
    model = tiny_model(arch, registry=get_host().registry)
    tokenizer = model.tokenizer
    rows = [tokenizer(text)["input_ids"] for text in ["a b c d e f g h", "b c d", "c d e f g"]]
    positions = [3, 0, 2]  # row 1's fact token is its first: its prefix is all padding
    keep = [[4, 6], [1, 2], [2, 4]]
    passes = passes_for(model, rows, positions, keep)
    assert passes.can_split
    module = model.adapter.module(model.torch_model, "mlp_out", 0)
    delta = torch.randn(model.torch_model.config.hidden_size) * 0.1
    with torch.no_grad():
        full, full_output = passes.run(module, delta, suffix=False)
        suffix, suffix_output = passes.run(module, delta, suffix=True)
    assert torch.isfinite(suffix).all()
    assert torch.allclose(suffix, full, atol=1e-5, rtol=1e-5)
    assert torch.allclose(suffix_output, full_output, atol=1e-6)
    assert passes.suffix_agrees(module, delta.numel())


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("continuation", [0, 4])
def test_suffix_passes_optimise_the_same_value_as_full_passes(arch, continuation, monkeypatch):
    model = tiny_model(arch, registry=get_host().registry)
    request = subject_final_requests()[0]
    module = model.adapter.module(model.torch_model, "mlp_out", 0)
    options = settings(kl_continuation_tokens=continuation)
    results = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for split in (False, True):
            monkeypatch.setattr(ForwardPasses, "can_split", property(lambda self, split=split: split and self.prefix is not None))
            values._SUFFIX_PASSES_AGREE.pop(model.torch_model, None)
            results[split] = optimise_value(model, module, located(model, request), options)
    assert values._SUFFIX_PASSES_AGREE[model.torch_model] is True
    assert results[True].delta.abs().max() > 1e-4
    assert torch.allclose(results[True].delta, results[False].delta, atol=1e-6, rtol=1e-5)
    assert abs(results[True].nll - results[False].nll) < 1e-5


def test_each_step_runs_only_the_suffix_tokens():
    model = tiny_model("llama", registry=get_host().registry)
    request = subject_final_requests()[0]
    module = model.adapter.module(model.torch_model, "mlp_out", 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimise_value(model, module, located(model, request), settings(steps=1))  # the once-per-model check
    seen = []
    handle = model.adapter.embed_module(model.torch_model).register_forward_hook(lambda m, a, out: seen.append(out.shape[1]))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optimise_value(model, module, located(model, request), settings(steps=3))
    finally:
        handle.remove()
    full_width = max(len(model.tokenizer(text + " " + request.target_new)["input_ids"]) for text in fill_prefixes(PREFIXES, request.prompt))
    prefix_pass, *steps = seen
    assert len(steps) == 4  # 3 steps and the measuring pass, no separate pass for the reference
    assert all(width < full_width for width in steps)


def test_a_model_whose_suffix_passes_disagree_gets_full_passes(monkeypatch):
    model = tiny_model("llama", registry=get_host().registry)
    request = subject_final_requests()[0]
    module = model.adapter.module(model.torch_model, "mlp_out", 0)
    real_run = ForwardPasses.run

    def wrong_suffix(self, module, delta, *, suffix):
        logits, output = real_run(self, module, delta, suffix=suffix)
        return (logits + 1.0 if suffix else logits), output

    monkeypatch.setattr(ForwardPasses, "run", wrong_suffix)  # a model whose cache misleads
    values._SUFFIX_PASSES_AGREE.pop(model.torch_model, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimise_value(model, module, located(model, request), settings(steps=2))
    assert values._SUFFIX_PASSES_AGREE[model.torch_model] is False
    calls = []
    monkeypatch.setattr(ForwardPasses, "run", lambda self, module, delta, *, suffix: calls.append(suffix) or real_run(self, module, delta, suffix=suffix))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimise_value(model, module, located(model, request), settings(steps=2))
    assert calls == [False, False, False]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_the_key_read_in_the_first_pass_is_the_prefix_averaged_fact_key(arch):
    from easyetcon.locate.keys import fact_keys

    model = tiny_model(arch, registry=get_host().registry)
    request = subject_final_requests()[0]
    module = model.adapter.module(model.torch_model, "mlp_out", 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = optimise_value(model, module, located(model, request), settings(steps=2), key_module=module)
    expected = fact_keys(model, 1, [request], PREFIXES)[0]
    assert value.key.shape == expected.shape
    assert torch.allclose(value.key, expected, atol=1e-6, rtol=1e-5)
