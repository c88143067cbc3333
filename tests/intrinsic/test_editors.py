"""Properties of the editors beyond the conformance suite."""

import pytest
import torch
from easyetcon.activations import capture_input
from easyetcon.locate.keys import fact_keys

from easyetcon.chain import EditChain
from easyetcon.errors import ChainStepError
from easyetcon.plugins import get_host
from easyetcon.requests import EditRequest
from easyetcon.testing import tiny_model, tiny_requests
from easyetcon.testing.tiny import TINY_CORPUS
from tests.intrinsic.helpers import STRONG_VALUES, sectioned, subject_final_requests


def make(arch="llama", dtype=None):
    model = tiny_model(arch, registry=get_host().registry)
    if dtype is not None:
        model.torch_model.to(dtype)
    return model


def out_in(model, layer):
    module = model.adapter.module(model.torch_model, "mlp_out", layer)
    return model.adapter.out_in_weight(module).detach().double().clone()


def preserved_keys(model, layer, texts):
    module = model.adapter.module(model.torch_model, "mlp_out", layer)
    keys = []
    for text in texts:
        with torch.no_grad(), capture_input(module) as captured:
            model.torch_model(input_ids=model.tokenizer(text, return_tensors="pt")["input_ids"])
        keys.append(captured[0][0].double())
    return torch.cat(keys)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_rome_update_has_rank_one(arch):
    model = make(arch)
    before = out_in(model, 1)
    EditChain([("rome", sectioned({**STRONG_VALUES, "layer": 1}))]).apply(model, subject_final_requests()[:1])
    singular = torch.linalg.svdvals(out_in(model, 1) - before)
    assert singular[0] > 1e-3
    assert singular[1] / singular[0] < 1e-5


def test_rome_sequential_edits_undo_bit_exactly_and_keep_the_first_edit():
    model = make()
    original = model.state_hash()
    first, second = subject_final_requests()
    result = EditChain([("rome", sectioned({**STRONG_VALUES, "layer": 0}))]).apply(model, [first, second], mode="sequential")
    assert len(result.records) == 2
    assert model.predicts(first.prompt, first.target_new) and model.predicts(second.prompt, second.target_new)
    result.undo(model)
    assert model.state_hash() == original


def relative_leak(change, keys):
    """‖Δ K₀‖ / (‖Δ‖ ‖K₀‖): 0 when the update ignores the keys, ~0.1 for an unconstrained one."""
    return float((change @ keys.T).norm() / (change.norm() * keys.norm()))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_alphaedit_leaves_preserved_keys_outputs_unchanged(arch):
    preserved = TINY_CORPUS[:3]  # ~40 tokens: their keys span a subspace, the rest is null space
    leaks = {}
    for editor, options, layers in [
        ("alphaedit", {"layers": [0, 1], "learning_rate": 0.5, "energy_fraction": 0.999999, "l2": 1e-6}, (0, 1)),
        ("rome", {"layer": 1, "use_covariance": False}, (1,)),  # an unprojected update, for contrast
    ]:
        model = make(arch)
        chain = EditChain([(editor, sectioned({**STRONG_VALUES, **options}))])
        chain.steps[0].editor.statistics.use_texts(preserved)
        keys = {layer: preserved_keys(model, layer, preserved) for layer in layers}
        before = {layer: out_in(model, layer) for layer in layers}
        chain.apply(model, subject_final_requests()[:1])
        changes = {layer: out_in(model, layer) - before[layer] for layer in layers}
        assert all(change.abs().max() > 1e-3 for change in changes.values())  # the edit happened
        leaks[editor] = max(relative_leak(changes[layer], keys[layer]) for layer in layers)
    assert leaks["alphaedit"] < 1e-5  # fp32 statistics: numerical precision
    assert leaks["rome"] > 1e-2


def test_alphaedit_accumulates_edited_keys_and_protects_earlier_edits():
    model = make()
    options = sectioned({**STRONG_VALUES, "layers": [0, 1], "learning_rate": 0.5, "l2": 1e-4})
    chain = EditChain([("alphaedit", options)])
    editor = chain.steps[0].editor
    first, second = subject_final_requests()
    chain.apply(model, [first])
    assert editor.solver(model, 1).edited_keys == 1
    key_first = fact_keys(model, 1, [first], editor.prefixes(model))[0].double()
    before = out_in(model, 1)
    chain.apply(model, [second])
    assert editor.solver(model, 1).edited_keys == 2
    change = out_in(model, 1) - before
    assert change.abs().max() > 1e-3
    assert (change @ key_first).norm() < 0.05 * (change.norm() * key_first.norm())
    assert model.predicts(first.prompt, first.target_new) and model.predicts(second.prompt, second.target_new)


def test_fine_tuning_respects_the_linf_bound_on_every_declared_weight():
    model = make()
    options = {"steps": 10, "learning_rate": 0.05, "max_change": 1e-3, "layers": [1], "modules": ["mlp_in", "mlp_out"]}
    before = {n: p.detach().clone() for n, p in model.torch_model.named_parameters()}
    result = EditChain([("ft-m", options)]).apply(model, tiny_requests()[:1])
    names = result.records[0].weights.names
    assert sorted(names) == sorted([model.adapter.weight_name("mlp_in", 1), model.adapter.weight_name("mlp_out", 1)])
    for name in names:
        moved = (model.parameter(name).detach() - before[name]).abs().max()
        assert 5e-4 < moved <= 1e-3 + 1e-7


def test_ft_m_eaft_option_weights_the_loss_and_still_edits():
    request = tiny_requests()[0]
    results = {}
    for name, extra in (("plain", {}), ("eaft", {"eaft": {"top_k": 20}}), ("surrounding", {"eaft": {"tokens": "surrounding"}})):
        model = make()
        EditChain([("ft-m", {"steps": 20, "learning_rate": 0.02, "layers": [1], **extra})]).apply(model, [request])
        results[name] = model
    assert results["eaft"].state_hash() != results["plain"].state_hash()
    # FT-M's completion is the target alone, so weighting only the surrounding tokens changes nothing
    assert results["surrounding"].state_hash() == results["plain"].state_hash()
    assert results["eaft"].predicts(request.prompt, request.target_new)


def test_ft_l_and_ft_m_agree_on_one_token_targets():
    requests = subject_final_requests()  # one-token targets: FT-L's last-position loss is FT-M's loss
    models = {}
    for name in ("ft-l", "ft-m"):
        models[name] = make()
        EditChain([(name, {"steps": 5, "learning_rate": 0.01, "layers": [2]})]).apply(models[name], requests, mode="batch")
    weight = models["ft-l"].adapter.weight_name("mlp_out", 2)
    assert torch.allclose(models["ft-l"].parameter(weight), models["ft-m"].parameter(weight), atol=1e-6)
    assert not torch.equal(models["ft-l"].parameter(weight), make().parameter(weight))


@pytest.mark.parametrize("editor,options", [
    ("rome", sectioned({**STRONG_VALUES, "layer": 0})),
    ("memit", sectioned({**STRONG_VALUES, "layers": [0, 1], "covariance_weight": 1.0})),
    ("alphaedit", sectioned({**STRONG_VALUES, "layers": [0, 1], "learning_rate": 0.5})),
])
def test_bfloat16_models_are_edited_in_fp64_and_stay_bfloat16(editor, options):
    model = make("llama", torch.bfloat16)
    before = {n: p.detach().clone() for n, p in model.torch_model.named_parameters()}
    result = EditChain([(editor, options)]).apply(model, subject_final_requests()[:1])
    changed = [n for n, p in model.torch_model.named_parameters() if not torch.equal(p, before[n])]
    assert changed and set(changed) == set(result.records[0].weights.names)
    assert all(model.parameter(n).dtype == torch.bfloat16 and torch.isfinite(model.parameter(n)).all() for n in changed)


@pytest.mark.parametrize("editor", ["rome", "memit", "alphaedit"])
def test_missing_subject_names_the_record_and_leaves_the_model(editor):
    model = make()
    original = model.state_hash()
    bad = EditRequest(prompt="The tower is located in", subject="Colosseum", target_new="Paris", case_id="no-subject-3")
    with pytest.raises(ChainStepError, match="no-subject-3.*Colosseum"):
        EditChain([(editor, sectioned(STRONG_VALUES))]).apply(model, [subject_final_requests()[0], bad], mode="batch")
    assert model.state_hash() == original


def test_layer_beyond_the_model_is_reported_with_the_option():
    model = make()
    with pytest.raises(ChainStepError, match="option 'layer'.*3 layers"):
        EditChain([("rome", sectioned({**STRONG_VALUES, "layer": 7}))]).apply(model, subject_final_requests()[:1])


def test_traced_layer_is_chosen_once_and_declared():
    model = make()
    chain = EditChain([("rome", sectioned({**STRONG_VALUES, "layer": "trace"}))])
    result = chain.apply(model, subject_final_requests(), mode="sequential")
    layer = chain.steps[0].editor.layer(model, [])
    assert {n for r in result.records for n in r.weights.names} == {model.adapter.weight_name("mlp_out", layer)}
