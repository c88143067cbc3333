"""Chains: modes, lifecycle hooks, veto, restore on failure, memory editors, undo."""

import pytest
import torch

from easyetcon.chain import EditChain
from easyetcon.errors import ChainStepError, ConfigError, UndoError
from easyetcon.journal import Journal
from easyetcon.records import tensor_digest
from easyetcon.testing import tiny_model, tiny_requests
from tests.toy_plugins import EventLog


@pytest.fixture
def model(toy_host):
    return tiny_model(registry=toy_host.registry)


def weight(model, layer=0):
    return model.parameter(model.adapter.weight_name("mlp_out", layer)).detach().clone()


def test_sequential_mode_runs_every_step_per_request(toy_host, model):
    chain = EditChain(["toy-shift", {"editor": "toy-notes"}])
    result = chain.apply(model, tiny_requests(), mode="sequential")
    assert [(r.step_name, r.request_ids) for r in result.records] == [
        ("toy-shift", ["tiny-0"]), ("toy-notes", ["tiny-0"]),
        ("toy-shift", ["tiny-1"]), ("toy-notes", ["tiny-1"]),
        ("toy-shift", ["tiny-2"]), ("toy-notes", ["tiny-2"]),
    ]


def test_batch_mode_runs_each_step_once_on_all_requests(toy_host, model):
    result = EditChain(["toy-shift", "toy-notes"]).apply(model, tiny_requests(), mode="batch")
    assert [(r.step_name, len(r.request_ids)) for r in result.records] == [("toy-shift", 3), ("toy-notes", 3)]


def test_sequential_batches_of_two(toy_host, model):
    result = EditChain(["toy-shift"]).apply(model, tiny_requests(), batch_size=2)
    assert [r.request_ids for r in result.records] == [["tiny-0", "tiny-1"], ["tiny-2"]]


def test_weight_record_holds_exact_before_and_after(toy_host, model):
    original = weight(model)
    result = EditChain([("toy-shift", {"amount": 0.25})]).apply(model, tiny_requests()[:1])
    (record,) = result.records
    name = model.adapter.weight_name("mlp_out", 0)
    assert record.weights.names == [name]
    change = record.weights.changes[name]
    assert change.before == tensor_digest(original)
    assert torch.equal(change.full, original + 0.25) and change.after == tensor_digest(original + 0.25)
    assert torch.equal(result.originals[name], original)


def test_release_tensors_keeps_digests_and_undo_without_a_journal(toy_host, model):
    """What a second process of accelerate launch, which keeps no journal, runs with."""
    original = weight(model)
    result = EditChain([("toy-shift", {"amount": 0.25})]).apply(model, tiny_requests(), release_tensors=True)
    name = model.adapter.weight_name("mlp_out", 0)
    assert all(r.weights.changes[name].full is None and r.stored_bytes() == 0 for r in result.records)
    assert result.records[-1].weights.changes[name].after == tensor_digest(weight(model))
    result.undo(model)
    assert torch.equal(weight(model), original)


def test_failure_restores_the_model_and_names_step_and_request(toy_host, model, tmp_path):
    original = model.state_hash()
    chain = EditChain(["toy-notes", ("toy-shift", {"fail_on": "tiny-1"})])
    with pytest.raises(ChainStepError) as caught:
        chain.apply(model, tiny_requests(), journal=tmp_path / "journal")
    error = caught.value
    assert error.step_index == 1 and error.editor == "toy-shift" and error.request_ids == ["tiny-1"]
    assert "step 1" in str(error) and "tiny-1" in str(error) and "toy failure" in str(error)
    assert model.state_hash() == original
    assert len(model.memory_store("toy-notes")) == 0
    statuses = {e["status"] for e in Journal.open(tmp_path / "journal").entries()}
    assert statuses == {"rolled-back"}


def test_a_failing_step_undoes_its_own_partial_change(toy_host, model):
    original = model.state_hash()
    with pytest.raises(ChainStepError):
        EditChain([("toy-shift", {"fail_on": "tiny-1"})]).apply(model, tiny_requests()[:2], mode="batch")
    assert model.state_hash() == original


def test_lifecycle_hooks_see_each_step_and_can_veto(toy_host, model):
    log = EventLog()
    toy_host.register(log, name="event-log")
    EditChain(["toy-shift"], host=toy_host).apply(model, tiny_requests()[:2])
    assert log.events == [
        ("before", 0, "toy-shift", ["tiny-0"]), ("after", 0, "toy-shift", True),
        ("before", 0, "toy-shift", ["tiny-1"]), ("after", 0, "toy-shift", True),
    ]

    original = model.state_hash()
    vetoing = EventLog(veto_step="second")
    toy_host.register(vetoing, name="veto")
    chain = EditChain(["toy-shift", {"editor": "toy-shift", "label": "second"}], host=toy_host)
    with pytest.raises(ChainStepError, match="vetoed.*second is not allowed"):
        chain.apply(model, tiny_requests()[:1])
    assert ("error", 1, "second", "StepVetoed") in vetoing.events
    assert model.state_hash() == original


def test_memory_editor_rewrites_prompts_and_undo_empties_it(toy_host, model):
    requests = tiny_requests()
    result = EditChain(["toy-notes"]).apply(model, requests)
    store = model.memory_store("toy-notes")
    assert len(store) == 3
    rewritten = model.rewrite_prompts([requests[0].prompt, "Unrelated prompt"])
    assert rewritten[0].startswith("Note: The Eiffel Tower -> Rome.")
    assert rewritten[1] == "Unrelated prompt"
    result.undo(model)
    assert len(store) == 0
    assert model.rewrite_prompts([requests[0].prompt]) == [requests[0].prompt]


def test_newest_memory_edit_wins_and_undo_brings_the_old_one_back(toy_host, model):
    first = tiny_requests()[0]
    second = first.model_copy(update={"target_new": "Berlin", "case_id": "again"})
    chain = EditChain(["toy-notes"])
    chain.apply(model, [first])
    later = chain.apply(model, [second])
    assert "-> Berlin" in model.rewrite_prompts([first.prompt])[0]
    later.undo(model)
    assert "-> Rome" in model.rewrite_prompts([first.prompt])[0]


def test_undo_out_of_order_is_refused(toy_host, model):
    chain = EditChain(["toy-shift"])
    first = chain.apply(model, tiny_requests()[:1])
    chain.apply(model, tiny_requests()[1:2])
    with pytest.raises(UndoError, match="undo later steps first"):
        first.undo(model)


def test_hybrid_memory_in_front_of_weights_round_trips_through_the_journal(toy_host, model, tmp_path):
    original = model.state_hash()
    chain = EditChain(["toy-notes", "toy-shift"])
    chain.apply(model, tiny_requests(), journal=tmp_path / "j")
    edited = model.state_hash()
    journal = Journal.open(tmp_path / "j")
    assert set(journal.requests()) == {"tiny-0", "tiny-1", "tiny-2"}

    # A fresh copy of the base model gets the run back from disk: weights and memory.
    fresh = tiny_model(registry=toy_host.registry)
    journal.replay(fresh)
    journal.restore_memories(fresh, toy_host.registry)
    assert fresh.state_hash() == edited
    assert fresh.rewrite_prompts(["Toko Yasuda plays the instrument"])[0].startswith("Note: Toko Yasuda -> piano.")

    journal.rollback(model)
    assert model.state_hash() == original


def test_chain_construction_errors(toy_host):
    with pytest.raises(ConfigError, match="step 1.*unknown editor 'nope'"):
        EditChain(["toy-shift", "nope"])
    with pytest.raises(ConfigError, match="repeated: toy-shift"):
        EditChain(["toy-shift", "toy-shift"])
    with pytest.raises(ConfigError, match="at least one step"):
        EditChain([])


def test_bad_apply_arguments(toy_host, model):
    chain = EditChain(["toy-shift"])
    with pytest.raises(ConfigError, match="batch_size"):
        chain.apply(model, tiny_requests(), batch_size=0)
    with pytest.raises(ConfigError, match="mode"):
        chain.apply(model, tiny_requests(), mode="parallel")


def test_an_interrupt_rolls_back_every_step_already_applied(toy_host, model, monkeypatch):
    from tests.toy_plugins import ShiftEditor

    original = model.state_hash()
    calls = []

    def interrupt_on_third(self, model, requests):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        with torch.no_grad():
            model.parameter(self.weights_to_edit(model, requests)[0]).add_(1.0)

    monkeypatch.setattr(ShiftEditor, "edit", interrupt_on_third)
    with pytest.raises(KeyboardInterrupt):
        EditChain(["toy-shift"]).apply(model, tiny_requests())
    assert len(calls) == 3 and model.state_hash() == original
