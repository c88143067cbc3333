"""NAMET's value options, each defined by what it does, and the ``namet`` editor (MEMIT with them).

``delta_position="left_padded"``: δ sits as many tokens before the fact token as a prompt is
shorter than the longest; ``norm_penalty="linear"``: weight_decay · ‖δ‖/‖v‖; ``residual_at=
"prefixes"``: the residual a MEMIT-style editor writes is the mean over the prefixed prompts.
"""

import warnings

import pytest
import torch

from easyetcon.activations import activations_at
from easyetcon.locate import EditSites, KeyOptions, ValueOptions
from easyetcon.locate.keys import locate_request
from easyetcon.locate.values import left_padded_positions, optimise_value
from easyetcon.plugins import get_host
from easyetcon.testing import tiny_model
from easyetcon.text import build_target_batch
from tests.intrinsic.helpers import subject_final_requests

PREFIXES = ["{}", "Hello there. {}", "A b c d e f g. {}"]


def settings(**changes):
    options = dict(steps=8, learning_rate=0.5, kl_factor=0.0, weight_decay=0.0, clamp_norm_factor=1e4, stop_nll=0.0)
    return ValueOptions(**{**options, **changes})


def quietly(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


@pytest.fixture
def model():
    return tiny_model("llama", registry=get_host().registry)


def located(model, request):
    return locate_request(model.tokenizer, request, PREFIXES, "subject_last")


def row_lengths(model, entry):
    batch = build_target_batch(model.tokenizer, list(entry.texts), [entry.request.target_new] * len(entry.texts))
    return [int(mask.sum()) for mask in batch.attention_mask]


def test_defaults_are_memits_value_optimisation():
    options = ValueOptions()
    assert (options.delta_position, options.norm_penalty, options.residual_at) == ("fact_token", "squared", "prompt")


def test_left_padded_positions_move_each_shorter_row_back_by_its_shortfall():
    rows = [[0] * 5, [0] * 9, [0] * 8]
    positions, reached = left_padded_positions(rows, [2, 6, 5])
    # shortfalls 4, 0, 1: row 0's index would land before its first token (on padding in NAMET)
    assert positions == [2, 6, 4] and reached == [False, True, True]
    assert left_padded_positions(rows, [2, 6, 5]) == (positions, reached)  # no randomness: the texts decide


def test_left_padded_delta_is_added_where_the_shifted_index_points(model):
    request = subject_final_requests()[0]
    entry = located(model, request)
    block = model.adapter.blocks(model.torch_model)[1]
    value = quietly(optimise_value, model, block, entry, settings(delta_position="left_padded"))
    lengths = row_lengths(model, entry)
    shifted = [p - (max(lengths) - n) for p, n in zip(entry.positions, lengths)]
    assert shifted != list(entry.positions)
    where = [s if s >= 0 else p for s, p in zip(shifted, entry.positions)]
    # the anchors are the unedited outputs at those tokens, not at the fact tokens
    expected = activations_at(model, block, list(entry.texts), where, which="output")
    assert torch.allclose(value.originals, expected, atol=1e-5)
    at_fact = activations_at(model, block, list(entry.texts), list(entry.positions), which="output")
    moved = [i for i, (s, p) in enumerate(zip(where, entry.positions)) if s != p]
    assert not torch.allclose(value.originals[moved], at_fact[moved], atol=1e-5)


def test_the_fact_token_default_anchors_every_prompt_at_its_fact_token(model):
    entry = located(model, subject_final_requests()[0])
    block = model.adapter.blocks(model.torch_model)[1]
    value = quietly(optimise_value, model, block, entry, settings())
    expected = activations_at(model, block, list(entry.texts), list(entry.positions), which="output")
    assert torch.allclose(value.originals, expected, atol=1e-5)
    assert torch.equal(value.original, value.originals[0])


def test_the_linear_norm_anchor_keeps_delta_smaller_relative_to_the_output(model):
    entry = located(model, subject_final_requests()[0])
    block = model.adapter.blocks(model.torch_model)[1]
    steps = dict(steps=20, learning_rate=0.2)
    free = quietly(optimise_value, model, block, entry, settings(**steps))
    anchored = quietly(optimise_value, model, block, entry, settings(**steps, norm_penalty="linear", weight_decay=5.0))
    ratio = lambda value: float(value.delta.norm() / value.originals.norm(dim=-1).pow(2).mean().sqrt())  # noqa: E731
    assert ratio(anchored) < 0.5 * ratio(free)
    # the option changes the penalty only: without weight it is the default optimisation, bit for bit
    unweighted = quietly(optimise_value, model, block, entry, settings(**steps, norm_penalty="linear"))
    assert torch.equal(unweighted.delta, free.delta)


def sites_for(model, requests):
    return EditSites(model, requests, [0, 1], PREFIXES, KeyOptions(prefixes=2))


def test_per_prefix_targets_have_one_row_per_prefixed_prompt(model):
    requests = subject_final_requests()
    sites = sites_for(model, requests)
    assert quietly(sites.hidden_targets, settings()).shape[:1] == (len(requests),)
    targets = quietly(sites.hidden_targets, settings(residual_at="prefixes"))
    assert targets.shape[:2] == (len(requests), len(PREFIXES) - 1)


def test_the_per_prefix_residual_is_the_mean_over_the_prefixed_prompts(model):
    requests = subject_final_requests()
    sites = sites_for(model, requests)
    options = settings(residual_at="prefixes", delta_position="left_padded")
    targets = quietly(sites.hidden_targets, options)
    layer, keys, residuals = next(sites.spread(targets))
    texts = [text for entry in sites.located for text in entry.texts[1:]]
    positions = [p for entry in sites.located for p in entry.positions[1:]]
    current = activations_at(model, sites.last_block, texts, positions, which="output").view(targets.shape)
    assert torch.allclose(residuals, (targets - current).mean(dim=1) / 2, atol=1e-5)
    assert keys.shape[0] == len(requests)  # the keys stay MEMIT's, averaged over the prefixes


def test_with_delta_at_the_fact_token_the_per_prefix_residual_starts_as_delta(model):
    """Before any layer is written each prompt's output is its anchor, so the residual is δ / layers, as MEMIT's."""
    requests = subject_final_requests()
    sites = sites_for(model, requests)
    targets = quietly(sites.hidden_targets, settings(residual_at="prefixes"))
    plain = quietly(sites.hidden_targets, settings())
    _, _, residuals = next(sites.spread(targets))
    _, _, memit_residuals = next(sites.spread(plain))
    assert torch.allclose(residuals, memit_residuals, atol=1e-5)


def test_without_prefixes_the_per_prefix_residual_is_the_bare_prompts(model):
    requests = subject_final_requests()
    sites = EditSites(model, requests, [0, 1], ["{}"], KeyOptions(prefixes=0))
    assert quietly(sites.hidden_targets, settings(residual_at="prefixes")).dim() == 2


def test_namet_is_memit_with_namets_value_options():
    registry = get_host().registry
    namet, memit = registry.editor("namet").create({}), registry.editor("memit").create({})
    assert type(namet) is type(memit)  # the same algorithm
    value = namet.config.value
    assert (value.delta_position, value.norm_penalty, value.residual_at, value.weight_decay) == ("left_padded", "linear", "prefixes", 0.5)
    assert namet.config.covariance_weight == memit.config.covariance_weight and namet.config.key == memit.config.key
    # each option declared once: the namet section's field is the shared one with another default
    assert type(value).model_fields["delta_position"].description == ValueOptions.model_fields["delta_position"].description


def test_every_memit_style_editor_takes_namets_options():
    registry = get_host().registry
    for name in ("memit", "alphaedit", "emmet", "rome"):
        editor = registry.editor(name).create({"value": {"delta_position": "left_padded", "norm_penalty": "linear", "residual_at": "prefixes"}})
        assert editor.config.value.delta_position == "left_padded"
