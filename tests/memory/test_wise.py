"""wise: the main weights never change; edits route to the side memory, other prompts to the
main weights bit-identically; merged shards still answer every shard's edits."""

from __future__ import annotations

import pytest
import torch

from easyetcon.chain import EditChain
from easyetcon.errors import ConfigError, JournalError
from easyetcon.plugins import get_host
from easyetcon.testing import tiny_model
from easyetcon.testing.conformance import target_fit
from easyetcon.testing.tiny import tiny_learnable_requests
from easyetcon_memory import Wise, WiseConfig, load_memory, save_memory, ties_merge

OPTIONS = {"layer": -1, "steps": 100, "learning_rate": 50.0, "norm_bound": 100.0, "mask_ratio": 0.5,
           "edit_margin": 2.0, "irrelevant_margin": 0.5, "gap_margin": 1.0}
#: Prompts no edit is about (none of them is among the irrelevant prompts the router trains on).
UNRELATED = ["Apple was founded by Steve Jobs in", "Berlin London Madrid", "The Colosseum is located in the city of"]


def model_(architecture: str = "llama"):
    return tiny_model(architecture, registry=get_host().registry)


def logits_of(model, prompt: str) -> torch.Tensor:
    ids = model.tokenizer(model.format_prompt(prompt), return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model.torch_model(input_ids=ids).logits


def editor_and_store(model, chain):
    return Wise(WiseConfig(**chain.steps[0].config.model_dump())), model.memory_store(chain.steps[0].name)


# On the tiny random GPT-2 and GPT-NeoX these options teach the edits, but the router does
# not keep every unrelated prompt below the threshold (docs/memory.md).
@pytest.mark.parametrize("architecture", ["llama", "gpt-j", "qwen2", "qwen3", "mistral"])
def test_edits_route_to_the_side_memory_and_other_prompts_to_the_untouched_main_weights(architecture):
    model = model_(architecture)
    requests = tiny_learnable_requests()[:2]
    original = model.state_hash()
    before = {p: logits_of(model, p) for p in UNRELATED}
    chain = EditChain([("wise", OPTIONS)])
    for request in requests:
        chain.apply(model, [request])
    assert model.state_hash() == original  # the main memory never changes
    wise, store = editor_and_store(model, chain)
    scores, thresholds = wise.routing(model, store, [r.prompt for r in requests] + UNRELATED)
    assert len(thresholds) == 1
    assert (scores[0, : len(requests)] > thresholds[0]).all(), "an edit prompt does not reach the side memory"
    assert (scores[0, len(requests):] <= thresholds[0]).all(), "an unrelated prompt reaches the side memory"
    assert target_fit(model, requests[-1].prompt, requests[-1].target_new)[1] > 0
    for prompt in UNRELATED:
        assert torch.equal(logits_of(model, prompt), before[prompt]), prompt


def test_generation_answers_with_the_edit_and_batching_does_not_change_routing():
    model = model_()
    request = tiny_learnable_requests()[0]
    alone = model.generate([UNRELATED[0]], max_new_tokens=3)
    EditChain([("wise", OPTIONS)]).apply(model, [request])
    assert model.generate([request.prompt], max_new_tokens=1)[0].strip() == request.target_new
    # left-padded in one batch with a longer edit prompt, an unrelated prompt still decodes as alone
    assert model.generate([UNRELATED[0], request.prompt], max_new_tokens=3)[0] == alone[0]


def test_merged_shards_still_answer_the_edits_of_every_shard():
    model = model_()
    requests = tiny_learnable_requests()[:2]
    options = {**OPTIONS, "edits_per_shard": 1, "shards_per_merge": 2, "merge_density": 1.0, "mask_ratio": 0.3}
    chain = EditChain([("wise", options)])
    for request in requests:
        chain.apply(model, [request])
    wise, store = editor_and_store(model, chain)
    kinds = [entry.data["kind"] for _, entry in store.items()]
    assert kinds == ["merged"]
    assert [e["request_id"] for e in store.items()[0][1].data["edits"]] == [r.request_id for r in requests]
    scores, thresholds = wise.routing(model, store, [r.prompt for r in requests] + UNRELATED)
    assert (scores[0, :2] > thresholds[0]).all() and (scores[0, 2:] <= thresholds[0]).all()
    for request in requests:
        assert target_fit(model, request.prompt, request.target_new)[1] > 0, request.request_id


def test_a_shard_stores_only_its_masked_entries():
    model = model_()
    chain = EditChain([("wise", {**OPTIONS, "mask_ratio": 0.2})])
    chain.apply(model, tiny_learnable_requests()[:1])
    (_, shard), = model.memory_store(chain.steps[0].name).items()
    out_features, in_features = shard.data["shape"]
    assert 0.1 * out_features * in_features < shard.tensors["values"].numel() < 0.3 * out_features * in_features


def test_ties_merge_trims_elects_signs_and_averages_the_agreeing_entries():
    a = torch.tensor([[4.0, -1.0, 2.0, 0.1]])
    b = torch.tensor([[2.0, 3.0, -6.0, 0.0]])
    merged = ties_merge([a, b], density=0.75)
    # a keeps 4, -1, 2; b keeps 2, 3, -6. Signs: +, +, -, (none). Agreeing means: 3, 3, -6, 0.
    assert torch.equal(merged, torch.tensor([[3.0, 3.0, -6.0, 0.0]]))


def test_a_mask_that_draws_differently_is_refused():
    from easyetcon.records import MemoryEntry

    model = model_()
    chain = EditChain([("wise", OPTIONS)])
    chain.apply(model, tiny_learnable_requests()[:1])
    store = model.memory_store(chain.steps[0].name)
    (entry_id, shard), = store.items()
    store.put(entry_id, MemoryEntry({**shard.data, "mask_seed": shard.data["mask_seed"] + 1}, shard.tensors))
    with pytest.raises(JournalError, match="mask of a wise shard"):
        editor_and_store(model, chain)[0].delta_of(store.get(entry_id))


def test_saved_side_memory_reloads_into_a_fresh_model(tmp_path):
    model = model_()
    request = tiny_learnable_requests()[0]
    chain = EditChain([("wise", OPTIONS)])
    chain.apply(model, [request])
    save_memory(tmp_path / "wise", model, chain.steps[0])
    fresh = model_()
    load_memory(tmp_path / "wise", fresh)
    for prompt in [request.prompt, UNRELATED[0]]:
        assert torch.equal(logits_of(fresh, prompt), logits_of(model, prompt))


@pytest.mark.parametrize("bad, field", [
    ({"mask_ratio": 0}, "mask_ratio"), ({"threshold_ratio": 1.5}, "threshold_ratio"),
    ({"irrelevant_prompts": [""]}, "irrelevant_prompts"), ({"shards_per_merge": 0}, "shards_per_merge"),
])
def test_bad_options_are_named(bad, field):
    with pytest.raises(ConfigError, match=field):
        get_host().registry.editor("wise").create({**OPTIONS, **bad})


def test_a_layer_that_does_not_exist_fails_the_step_and_leaves_the_memory_empty():
    from easyetcon.errors import ChainStepError

    model = model_()
    with pytest.raises(ChainStepError, match="layer 7 does not exist"):
        EditChain([("wise", {**OPTIONS, "layer": 7})]).apply(model, tiny_learnable_requests()[:1])
    assert all(len(store) == 0 for store in model.memories.values())
