"""grace: the codebook rule (add, expand, split, replace), the forward hook, undo and persistence."""

from __future__ import annotations

import pytest
import torch

from easyetcon.chain import EditChain
from easyetcon.errors import ChainStepError
from easyetcon.journal import Journal
from easyetcon.plugins import get_host
from easyetcon.records import MemoryStore
from easyetcon.testing import tiny_model, tiny_requests
from easyetcon_memory import Grace, GraceConfig, load_memory, save_memory

OPTIONS = {"layer": -1, "steps": 60, "learning_rate": 0.5, "initial_radius": 0.01}


def model_():
    return tiny_model("llama", registry=get_host().registry)


def entry_data(label: int, target: str | None = None) -> dict:
    return {"label": label, "token": str(label), "target": target or str(label), "target_token_index": 0,
            "subject": "s", "request_id": f"r{label}"}


def radii(store: MemoryStore) -> list[float]:
    return [round(float(entry.tensors["radius"]), 6) for _, entry in store.items()]


# ---- the codebook rule ----------------------------------------------------------------------


def test_far_keys_get_their_own_entry_with_the_initial_radius():
    grace, store = Grace(GraceConfig(initial_radius=1.0)), MemoryStore("grace")
    grace.add_to_codebook(store, torch.tensor([0.0, 0.0]), torch.zeros(3), entry_data(7))
    grace.add_to_codebook(store, torch.tensor([5.0, 0.0]), torch.zeros(3), entry_data(8))
    assert len(store) == 2 and radii(store) == [1.0, 1.0]


def test_an_agreeing_edit_expands_the_radius_to_cover_its_key():
    grace, store = Grace(GraceConfig(initial_radius=1.0)), MemoryStore("grace")
    grace.add_to_codebook(store, torch.tensor([0.0, 0.0]), torch.zeros(3), entry_data(7))
    grace.add_to_codebook(store, torch.tensor([1.5, 0.0]), torch.ones(3), entry_data(7))
    assert len(store) == 1
    assert radii(store) == [2.5]  # distance 1.5 + initial radius 1.0
    value = next(e for _, e in store.items()).tensors["value"]
    assert torch.equal(value, torch.zeros(3))  # the existing value is kept


def test_a_conflicting_edit_splits_both_radii_to_half_the_distance():
    grace, store = Grace(GraceConfig(initial_radius=1.0)), MemoryStore("grace")
    grace.add_to_codebook(store, torch.tensor([0.0, 0.0]), torch.zeros(3), entry_data(7))
    grace.add_to_codebook(store, torch.tensor([1.5, 0.0]), torch.ones(3), entry_data(9))
    assert len(store) == 2 and radii(store) == [0.75, 0.75]
    assert [e.data["label"] for _, e in store.items()] == [7, 9]


def test_a_shared_token_of_different_targets_is_no_agreement():
    grace, store = Grace(GraceConfig(initial_radius=1.0)), MemoryStore("grace")
    grace.add_to_codebook(store, torch.tensor([0.0, 0.0]), torch.zeros(3), entry_data(7, "Draiport"))
    grace.add_to_codebook(store, torch.tensor([1.5, 0.0]), torch.ones(3), entry_data(7, "Heport"))
    assert len(store) == 2 and radii(store) == [0.75, 0.75]


def test_the_same_key_with_a_new_label_replaces_the_old_entry():
    grace, store = Grace(GraceConfig(initial_radius=1.0)), MemoryStore("grace")
    grace.add_to_codebook(store, torch.tensor([0.0, 0.0]), torch.zeros(3), entry_data(7))
    grace.add_to_codebook(store, torch.tensor([0.0, 0.0]), torch.ones(3), entry_data(9))
    assert len(store) == 1 and [e.data["label"] for _, e in store.items()] == [9]


# ---- the hook -------------------------------------------------------------------------------------


def test_only_prompts_whose_keys_are_in_radius_are_changed():
    model = model_()
    request = tiny_requests()[0]
    other = "Toko Yasuda plays the instrument"
    ids = model.tokenizer(other, return_tensors="pt")["input_ids"]
    before = model.torch_model(input_ids=ids).logits
    chain = EditChain([("grace", OPTIONS)])
    result = chain.apply(model, [request])
    assert model.predicts(request.prompt, request.target_new)
    assert torch.equal(model.torch_model(input_ids=ids).logits, before)
    result.undo(model)
    assert not model.predicts(request.prompt, request.target_new)


def test_a_radius_covering_every_key_changes_every_prompt():
    model = model_()
    ids = model.tokenizer("Toko Yasuda plays the instrument", return_tensors="pt")["input_ids"]
    before = model.torch_model(input_ids=ids).logits
    EditChain([("grace", {**OPTIONS, "initial_radius": 1e6})]).apply(model, tiny_requests()[:1])
    assert not torch.equal(model.torch_model(input_ids=ids).logits, before)


def test_attach_is_idempotent():
    model = model_()
    grace = Grace(GraceConfig(**OPTIONS))
    store = model.memory_store("grace")
    module = model.adapter.module(model.torch_model, "mlp_out", 2)
    grace.attach(model, store)
    grace.attach(model, store)
    Grace(GraceConfig(**OPTIONS)).attach(model, store)  # e.g. a journal restoring the memory
    assert len(module._forward_hooks) == 1


def test_each_target_token_gets_an_entry_and_generation_follows_them():
    model = model_()
    request = tiny_requests()[1]  # " English" is several tokens for the tiny tokenizer
    EditChain([("grace", OPTIONS)]).apply(model, [request])
    tokens = model.encode_answer(request.target_new)
    store = model.memory_store("grace")
    assert len(store) == len(tokens) > 1
    assert [e.data["label"] for _, e in store.items()] == tokens
    assert model.generate([request.prompt], max_new_tokens=len(tokens))[0] == " " + request.target_new


def test_a_layer_that_does_not_exist_fails_the_step_and_leaves_the_memory_empty():
    model = model_()
    with pytest.raises(ChainStepError, match="layer 7 does not exist"):
        EditChain([("grace", {**OPTIONS, "layer": 7})]).apply(model, tiny_requests()[:1])
    assert len(model.memory_store("grace")) == 0


# ---- persistence -------------------------------------------------------------------------------------


def test_saved_codebook_reloads_into_a_fresh_model(tmp_path):
    model = model_()
    requests = tiny_requests()
    chain = EditChain([("grace", OPTIONS)])
    chain.apply(model, requests)
    save_memory(tmp_path / "grace", model, chain.steps[0])
    fresh = model_()
    assert not fresh.predicts(requests[0].prompt, requests[0].target_new)
    load_memory(tmp_path / "grace", fresh)
    assert [fresh.predicts(r.prompt, r.target_new) for r in requests] == [
        model.predicts(r.prompt, r.target_new) for r in requests
    ]
    ids = model.tokenizer(requests[0].prompt, return_tensors="pt")["input_ids"]
    assert torch.equal(fresh.torch_model(input_ids=ids).logits, model.torch_model(input_ids=ids).logits)


def test_journal_restores_the_codebook(tmp_path):
    model = model_()
    request = tiny_requests()[0]
    EditChain([("grace", OPTIONS)]).apply(model, [request], journal=tmp_path / "journal")
    fresh = model_()
    Journal.open(tmp_path / "journal").restore_memories(fresh, get_host().registry)
    assert fresh.predicts(request.prompt, request.target_new)


# ---- calibration -------------------------------------------------------------------------------------


def test_calibrated_radius_covers_exact_rephrases_and_excludes_other_prompts():
    from easyetcon.requests import Probe
    from easyetcon_memory import calibrate_radius
    from easyetcon_memory.grace import last_token_keys

    model = model_()
    requests = [
        r.model_copy(update={"rephrase_prompts": [r.prompt], "locality": [Probe(prompt=p, answer="x")]})
        for r, p in zip(tiny_requests(), ["Apple was founded by", "Berlin London Madrid", "The Colosseum is located in the city of"])
    ]
    original = model.state_hash()
    report = calibrate_radius(model, requests, {"layer": -1})
    assert model.state_hash() == original
    assert report.recall == 1.0 and report.specificity == 1.0 and report.precision == 1.0
    module = model.adapter.module(model.torch_model, "mlp_out", 2)
    edits = last_token_keys(model, module, [r.prompt for r in requests])
    others = last_token_keys(model, module, [r.locality[0].prompt for r in requests])
    assert 0 < report.radius < float(torch.cdist(others, edits).min())


def test_radius_calibration_rejects_requests_without_probes():
    from easyetcon.errors import ConfigError
    from easyetcon_memory import calibrate_radius

    with pytest.raises(ConfigError, match="rephrase prompts and locality"):
        calibrate_radius(model_(), tiny_requests()[1:], {"layer": -1})


# ---- on the fact world's trained model ------------------------------------------------------------------


def test_grace_on_the_world_model_edits_and_leaves_other_facts_alone():
    from tests.memory.helpers import world_model, world_requests

    model = world_model()
    if model is None:
        pytest.skip("needs the fact world's shipped model (plugins/easyetcon_world/assets/default)")
    requests = world_requests(3)
    probes = [p for r in requests for p in r.locality]
    before = [model.target_token_predictions(p.prompt, p.answer)[1] for p in probes]
    assert not any(model.predicts(r.prompt, r.target_new) for r in requests)
    result = EditChain([("grace", {"layer": -1, "initial_radius": 1.0})]).apply(model, requests)
    assert all(model.predicts(r.prompt, r.target_new) for r in requests)
    assert [model.target_token_predictions(p.prompt, p.answer)[1] for p in probes] == before
    result.undo(model)
    assert not any(model.predicts(r.prompt, r.target_new) for r in requests)
