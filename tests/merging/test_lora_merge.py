"""lora-merge: PEFT training leaves a plain model, each merge strategy, windows and undo."""

from __future__ import annotations

import pytest
import torch

from easyetcon.chain import EditChain
from easyetcon.errors import ConfigError
from easyetcon.plugins import get_host
from easyetcon.testing import tiny_model, tiny_requests
from easyetcon_merging import LoraAdapter, LoraMergeConfig, MergeError, merge_adapters, train_lora_adapter

FAST = {"steps": 60, "learning_rate": 0.05, "rank": 4}


def model_(arch="llama"):
    return tiny_model(arch, registry=get_host().registry)


def adapter(rank: int, seed: int, modules=("m",), shape=(6, 5)) -> LoraAdapter:
    generator = torch.Generator().manual_seed(seed)
    out_features, in_features = shape
    return LoraAdapter(
        {m: torch.randn(rank, in_features, generator=generator) for m in modules},
        {m: torch.randn(out_features, rank, generator=generator) for m in modules},
        scaling=0.5,
    )


# ---- training leaves a plain model --------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_training_an_adapter_leaves_the_model_exactly_as_it_was(arch):
    model = model_(arch)
    model.torch_model.lm_head.weight.requires_grad_(False)  # a flag PEFT would otherwise reset
    names = [n for n, _ in model.torch_model.named_parameters()]
    flags = {n: p.requires_grad for n, p in model.torch_model.named_parameters()}
    original = model.state_hash()
    modules = [model.adapter.module_name("mlp_out", 1)]
    trained = train_lora_adapter(model, modules, tiny_requests()[:1], LoraMergeConfig(**FAST), seed=0)
    assert model.state_hash() == original
    assert [n for n, _ in model.torch_model.named_parameters()] == names
    assert {n: p.requires_grad for n, p in model.torch_model.named_parameters()} == flags
    assert not any("lora" in n for n, _ in model.torch_model.named_modules())
    weight = model.parameter(f"{modules[0]}.weight")
    assert trained.delta(modules[0]).shape == weight.shape  # GPT-2's Conv1D: (in, out)
    assert trained.rank == 4 and trained.final_loss is not None


def test_edit_changes_exactly_the_declared_weights_and_names_never_change():
    model = model_()
    chain = EditChain([("lora-merge", {**FAST, "layers": [1], "modules": ["mlp_out", "mlp_in"]})])
    declared = chain.steps[0].editor.weights_to_edit(model, [])
    assert declared == ["model.layers.1.mlp.down_proj.weight", "model.layers.1.mlp.up_proj.weight"]
    before = {n: p.detach().clone() for n, p in model.torch_model.named_parameters()}
    chain.apply(model, tiny_requests()[:1])
    changed = {n for n, p in model.torch_model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == set(declared)


# ---- merge strategies -------------------------------------------------------------------------------------


def test_linear_is_task_arithmetic_of_the_weight_changes():
    adapters = [adapter(2, 0), adapter(2, 1)]
    merged = merge_adapters(adapters, strategy="linear", weights=[1.0, 0.5])
    assert torch.allclose(merged["m"], adapters[0].delta("m") + 0.5 * adapters[1].delta("m"), atol=1e-6)


def test_magnitude_prune_keeps_the_largest_share_of_values():
    single = adapter(2, 0)
    merged = merge_adapters([single], strategy="magnitude_prune", density=0.4)["m"]
    delta = single.delta("m")
    kept = merged != 0
    assert int(kept.sum()) == int(0.4 * delta.numel())
    assert torch.equal(merged[kept], delta[kept])
    assert delta[kept].abs().min() >= delta[~kept].abs().max()


def test_dare_rescales_kept_values_by_one_over_density():
    single = adapter(2, 0, shape=(40, 50))
    merged = merge_adapters([single], strategy="dare_linear", density=0.25, seed=3)["m"]
    delta = single.delta("m")
    kept = merged != 0
    assert 0.15 < kept.float().mean() < 0.35  # random drop keeps about a density's share
    assert torch.allclose(merged[kept], delta[kept] / 0.25, rtol=1e-5)
    again = merge_adapters([single], strategy="dare_linear", density=0.25, seed=3)["m"]
    assert torch.equal(merged, again)  # reproducible from the seed


@pytest.mark.filterwarnings("ignore:The density")
def test_ties_keeps_only_values_agreeing_with_the_elected_sign():
    plus = LoraAdapter({"m": torch.ones(1, 2)}, {"m": torch.ones(2, 1)}, scaling=1.0)  # all +1
    minus = LoraAdapter({"m": torch.ones(1, 2)}, {"m": -3 * torch.ones(2, 1)}, scaling=1.0)  # all -3
    merged = merge_adapters([plus, minus], strategy="ties", density=1.0)["m"]
    assert torch.allclose(merged, -3 * torch.ones(2, 2))  # -3 outweighs +1; the +1 is dropped, not averaged in
    frequency = merge_adapters([plus, plus, minus], strategy="ties", density=1.0, majority_sign_method="frequency")
    assert torch.allclose(frequency["m"], torch.ones(2, 2))


@pytest.mark.parametrize("strategy", ["linear", "ties", "dare_linear", "dare_ties", "magnitude_prune"])
def test_adapters_of_different_ranks_merge_as_weight_changes_but_not_as_factors(strategy):
    density = None if strategy == "linear" else 0.5
    mixed = [adapter(2, 0), adapter(3, 1)]
    merged = merge_adapters(mixed, strategy=strategy, density=density)
    assert merged["m"].shape == (6, 5)
    with pytest.raises(MergeError, match=r"different ranks \[2, 3\].*needs one rank"):
        merge_adapters(mixed, strategy=strategy, density=density, space="factors", model=model_())


def test_factor_merge_uses_peft_add_weighted_adapter():
    model = model_()
    modules = [model.adapter.module_name("mlp_out", 0)]
    trained = [train_lora_adapter(model, modules, [r], LoraMergeConfig(**FAST), seed=i) for i, r in enumerate(tiny_requests()[:2])]
    original = model.state_hash()
    single = merge_adapters(trained[:1], strategy="linear", space="factors", model=model)
    assert torch.allclose(single[modules[0]], trained[0].delta(modules[0]), atol=1e-5)
    pair = merge_adapters(trained, strategy="linear", space="factors", model=model)[modules[0]]
    # PEFT merges A and B separately: (B0 + B1)(A0 + A1) s, not the sum of the weight changes
    a = trained[0].lora_A[modules[0]] + trained[1].lora_A[modules[0]]
    b = trained[0].lora_B[modules[0]] + trained[1].lora_B[modules[0]]
    assert torch.allclose(pair, trained[0].scaling * b @ a, atol=1e-5)
    assert model.state_hash() == original


def test_merge_input_errors_are_clear():
    with pytest.raises(MergeError, match="no adapters"):
        merge_adapters([], strategy="linear")
    with pytest.raises(MergeError, match="needs a density"):
        merge_adapters([adapter(2, 0)], strategy="ties")
    with pytest.raises(MergeError, match="targets"):
        merge_adapters([adapter(2, 0), adapter(2, 1, modules=("other",))], strategy="linear")
    with pytest.raises(MergeError, match="needs the model"):
        merge_adapters([adapter(2, 0)], strategy="linear", space="factors")


def test_density_only_with_pruning_strategies():
    with pytest.raises(ConfigError, match="density applies to"):
        get_host().registry.editor("lora-merge").create({"density": 0.5})
    assert get_host().registry.editor("lora-merge").create({"strategy": "ties"}).config.effective_density == 0.5


# ---- windows of merge_every adapters, and undo -------------------------------------------------------


def test_window_merges_its_adapters_together_then_closes():
    model = model_()
    chain = EditChain([("lora-merge", {**FAST, "merge_every": 3, "layers": [1]})])
    editor = chain.steps[0].editor
    name = "model.layers.1.mlp.down_proj.weight"
    start = model.parameter(name).detach().clone()
    for count, request in enumerate(tiny_requests()[:2], start=1):
        chain.apply(model, [request])
        assert len(editor.window.adapters) == count
    expected = start + editor.window.adapters[0].delta("model.layers.1.mlp.down_proj") + editor.window.adapters[1].delta(
        "model.layers.1.mlp.down_proj"
    )
    assert torch.allclose(model.parameter(name), expected, atol=1e-6)  # linear: the sum of both changes
    chain.apply(model, tiny_requests()[2:])
    assert editor.window.adapters == []  # the third adapter closed the window
    assert torch.equal(editor.window.base[name], model.parameter(name).detach())


def test_undo_inside_a_window_drops_the_undone_adapter():
    model = model_()
    chain = EditChain([("lora-merge", {**FAST, "merge_every": 5, "layers": [1]})])
    editor = chain.steps[0].editor
    requests = tiny_requests()
    chain.apply(model, requests[:1])
    after_first = model.state_hash()
    second = chain.apply(model, requests[1:2])
    second.undo(model)
    assert model.state_hash() == after_first
    chain.apply(model, requests[2:3])
    assert len(editor.window.adapters) == 2
    assert [a.request_ids for a in editor.window.adapters] == [[requests[0].request_id], [requests[2].request_id]]


def test_a_change_from_elsewhere_starts_a_new_window():
    model = model_()
    chain = EditChain([("lora-merge", {**FAST, "merge_every": 5, "layers": [1]})])
    editor = chain.steps[0].editor
    chain.apply(model, tiny_requests()[:1])
    with torch.no_grad():
        model.parameter("model.layers.1.mlp.down_proj.weight").add_(0.01)
    chain.apply(model, tiny_requests()[1:2])
    assert len(editor.window.adapters) == 1


@pytest.mark.parametrize("strategy", ["ties", "dare_ties", "magnitude_prune", "dare_linear"])
def test_every_strategy_undoes_bit_exactly(strategy):
    model = model_()
    original = model.state_hash()
    options = {**FAST, "strategy": strategy, "density": 0.6, "merge_every": 2}
    result = EditChain([("lora-merge", options)]).apply(model, tiny_requests(), mode="sequential")
    assert model.state_hash() != original
    result.undo(model)
    assert model.state_hash() == original


def test_a_failing_edit_leaves_model_and_window_untouched(monkeypatch):
    import easyetcon_merging.lora_merge as lora_merge

    model = model_()
    chain = EditChain([("lora-merge", {**FAST, "merge_every": 4, "layers": [1]})])
    editor = chain.steps[0].editor
    chain.apply(model, tiny_requests()[:1])
    state, window = model.state_hash(), editor.window

    def broken(*args, **kwargs):
        raise RuntimeError("merge exploded")

    monkeypatch.setattr(lora_merge, "merge_adapters", broken)
    with pytest.raises(Exception, match="merge exploded"):
        chain.apply(model, tiny_requests()[1:2])
    assert model.state_hash() == state and editor.window is window


def test_lora_merge_on_the_world_model():
    from tests.memory.helpers import world_model, world_requests

    model = world_model()
    if model is None:
        pytest.skip("needs the fact world's shipped model (plugins/easyetcon_world/assets/default)")
    requests = world_requests(2)
    original = model.state_hash()
    options = {"rank": 4, "steps": 100, "learning_rate": 0.01, "stop_loss": 0.05, "layers": [-1], "merge_every": 2}
    result = EditChain([("lora-merge", options)]).apply(model, requests)
    assert all(model.predicts(r.prompt, r.target_new) for r in requests)
    result.undo(model)
    assert model.state_hash() == original
