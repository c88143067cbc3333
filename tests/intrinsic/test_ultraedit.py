"""UltraEdit's parts, each against its definition, and its lifelong state through a journal."""

import pytest
import torch
from easyetcon_intrinsic.ultraedit import Moments, NoUpdateWarning, keys_and_gradients, ridge_factors

from easyetcon.chain import EditChain
from easyetcon.errors import JournalError
from easyetcon.plugins import get_host
from easyetcon.testing import tiny_model
from easyetcon.testing.tiny import tiny_learnable_requests
from easyetcon.text import build_target_batch
from easyetcon.training import masked_token_nll

OPTIONS = {"learning_rate": 0.01, "layers": [0, 1, 2]}


def make(arch="llama"):
    return tiny_model(arch, registry=get_host().registry)


def test_moments_merged_batch_by_batch_are_the_moments_of_all_rows():
    rows = torch.randn(50, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3 + 1
    merged = Moments.of(rows[:10]).merge(Moments.of(rows[10:11])).merge(Moments.of(rows[11:]))
    whole = Moments.of(rows)
    assert float(merged.count) == 50
    assert torch.allclose(merged.mean, rows.mean(0), atol=1e-12) and torch.allclose(merged.m2, whole.m2, atol=1e-10)
    normalised = merged.normalise(rows)
    assert torch.allclose(normalised.mean(0), torch.zeros(7, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(normalised.std(0), torch.ones(7, dtype=torch.float64), atol=1e-6)


def test_the_update_is_the_ridge_regression_of_the_values_on_the_keys():
    keys = torch.randn(5, 12, dtype=torch.float64)
    values = torch.randn(5, 8, dtype=torch.float64)
    left, right = ridge_factors(keys, values, ridge=0.5)
    assert left.shape == (8, 5) and right.shape == (5, 12)  # rank = rows, never in × out
    lam = 0.5 * float((keys**2).mean())
    dense = torch.linalg.solve(keys.T @ keys + lam * torch.eye(12, dtype=torch.float64), keys.T @ values)  # (in, out)
    assert torch.allclose((left @ right).T, dense, atol=1e-10)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_the_probed_gradients_are_the_loss_gradients_at_the_module_outputs(arch):
    model = make(arch)
    request = tiny_learnable_requests()[0]
    batch = build_target_batch(model.tokenizer, [request.prompt], [request.target_new])
    modules = {layer: model.adapter.module(model.torch_model, "mlp_in", layer) for layer in (0, 1)}
    read = keys_and_gradients(model, modules, batch, "all")
    # the reference: outputs kept in the graph with retain_grad, every path through later layers intact
    outputs = {}
    handles = [m.register_forward_hook(lambda _m, _a, out, layer=layer: outputs.__setitem__(layer, out)) for layer, m in modules.items()]
    try:
        for parameter in model.torch_model.parameters():
            parameter.requires_grad_(True)
        model.torch_model.eval()
        logits = model.torch_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        for out in outputs.values():
            out.retain_grad()
        masked_token_nll(logits, batch.labels).backward()
    finally:
        for handle in handles:
            handle.remove()
    for layer in modules:
        assert torch.allclose(read[layer][1], outputs[layer].grad[0].float(), atol=1e-8)
        assert read[layer][0].shape == (batch.input_ids.shape[1], model.adapter.in_out_features(modules[layer])[0])


def test_the_normaliser_carries_every_earlier_edit():
    model = make()
    chain = EditChain([("ultraedit", OPTIONS)])
    editor = chain.steps[0].editor
    first, second = tiny_learnable_requests()[:2]
    chain.apply(model, [first])
    count_after_first = float(editor._moments[model.torch_model][0].count)
    chain.apply(model, [second])
    assert float(editor._moments[model.torch_model][0].count) > count_after_first


def weights(model):
    return {name: tensor.detach().clone() for name, tensor in model.torch_model.state_dict().items()}


def test_a_resumed_editor_makes_the_next_edit_bit_for_bit_and_refuses_damaged_state():
    first, second = tiny_learnable_requests()[:2]
    straight, editor = make(), get_host().registry.editor("ultraedit").create(OPTIONS)
    editor.edit(straight, [first])
    after_first = weights(straight)
    state = {key: value.clone() for key, value in editor.journal_state(straight, [first]).items()}
    editor.edit(straight, [second])
    expected = weights(straight)

    def resumed_edit(restore: bool):
        resumed, fresh = make(), get_host().registry.editor("ultraedit").create(OPTIONS)
        fresh.prepare(resumed, [first])
        resumed.torch_model.load_state_dict(after_first)  # the first step's recorded weights
        if restore:
            fresh.restore_state(resumed, [first], state)
        fresh.edit(resumed, [second])
        return weights(resumed), fresh, resumed

    replayed, fresh, resumed = resumed_edit(restore=True)
    assert all(torch.equal(replayed[name], expected[name]) for name in expected)
    without, _, _ = resumed_edit(restore=False)  # the normaliser is state: leave it out and the edit differs
    assert any(not torch.equal(without[name], expected[name]) for name in expected)
    with pytest.raises(JournalError, match="moments.0 .* is damaged"):
        fresh.restore_state(resumed, [first], {**state, "moments.0.mean": state["moments.0.mean"][:3]})
    with pytest.raises(JournalError, match="expected"):
        fresh.restore_state(resumed, [first], {"moments.9.count": state["moments.0.count"]})


def test_a_first_edit_with_a_single_row_says_it_changes_nothing():
    model = make()
    before = model.state_hash()
    chain = EditChain([("ultraedit", {**OPTIONS, "positions": "target"})])  # one-token target: one row
    with pytest.warns(NoUpdateWarning, match="changes nothing"):
        chain.apply(model, tiny_learnable_requests()[:1])
    assert model.state_hash() == before
