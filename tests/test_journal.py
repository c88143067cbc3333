"""The journal on disk: append-only, checksummed, verified before use, compact, and readable
after the process is gone."""

import json

import pytest
import torch

from easyetcon.chain import EditChain
from easyetcon.errors import ChainStepError, JournalError, UndoError
from easyetcon.journal import INDEX_FILE, Journal, write_json_atomic
from easyetcon.records import EditRecord, MemoryDelta, MemoryEntry, MemoryStore, TensorChange, WeightDelta, tensor_digest
from easyetcon.testing import tiny_model, tiny_requests


@pytest.fixture
def model(toy_host):
    return tiny_model(registry=toy_host.registry)


def weight_name(model, layer=0):
    return model.adapter.weight_name("mlp_out", layer)


def journalled_run(model, tmp_path, steps=("toy-shift",), requests=None, **options):
    chain = EditChain([(name, dict(options)) for name in steps])
    chain.apply(model, requests or tiny_requests(), journal=tmp_path / "j")
    return Journal.open(tmp_path / "j")


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    write_json_atomic(tmp_path / "a.json", {"x": 1})
    write_json_atomic(tmp_path / "a.json", {"x": 2})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_record_with_weights_and_memory_survives_disk(tmp_path):
    before, after = torch.zeros(2, 3), torch.ones(2, 3)
    record = EditRecord(
        step_index=2, step_name="s", editor="e", family="intrinsic", config={"a": 1}, request_ids=["r"],
        weights=WeightDelta({"w": TensorChange(tensor_digest(before), tensor_digest(after), full=after)}),
        memory=MemoryDelta("store", {"m1": None}, {"m1": MemoryEntry({"k": "v"}, {"key": torch.arange(3.0)})}),
        seconds=1.5, editor_state={"keys": torch.arange(4.0)},
    )
    journal = Journal(tmp_path / "j")
    journal.append(record, base={"w": before})
    loaded = Journal.open(tmp_path / "j").record(0)
    assert loaded.config == {"a": 1} and loaded.seconds == 1.5
    assert torch.equal(loaded.weights.changes["w"].full, after)
    assert loaded.memory.before == {"m1": None}
    assert loaded.memory.after["m1"].same_as(record.memory.after["m1"])
    assert torch.equal(loaded.editor_state["keys"], torch.arange(4.0))
    assert torch.equal(Journal.open(tmp_path / "j").base_value("w"), before)


def test_first_change_of_a_weight_needs_its_base_value(tmp_path):
    record = EditRecord(0, "s", "e", "intrinsic", {}, ["r"], weights=WeightDelta({"w": TensorChange("a", "b", full=torch.ones(1))}))
    with pytest.raises(JournalError, match="base"):
        Journal(tmp_path / "j").append(record)


def test_store_tracking_records_only_real_changes():
    store = MemoryStore("s")
    kept = store.add({"a": 1})
    with store.tracking() as delta:
        added = store.add({"b": 2})
        store.put(kept, MemoryEntry({"a": 1}))  # rewritten unchanged
        temporary = store.add({"c": 3})
        store.remove(temporary)
    assert list(delta.after) == [added]
    assert delta.before == {added: None}


# ---- what is read back is verified -----------------------------------------------------------


def test_an_edited_index_line_is_refused(model, tmp_path):
    journal = journalled_run(model, tmp_path)
    lines = journal.index_path.read_text().splitlines()
    lines[-1] = lines[-1].replace('"applied"', '"undone"')
    journal.index_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(JournalError, match="line 5.*checksum"):
        Journal.open(tmp_path / "j")


def test_invalid_utf8_in_the_journal_is_one_clear_error(model, tmp_path):
    journal = journalled_run(model, tmp_path)
    with open(journal.index_path, "ab") as stream:
        stream.write(b"\xff\xfe not json\n")
    with pytest.raises(JournalError, match="damaged at line"):
        Journal.open(tmp_path / "j")


def test_a_line_cut_off_by_a_crash_is_ignored_and_dropped_at_the_next_write(model, tmp_path):
    journal = journalled_run(model, tmp_path)
    intact = journal.index_path.read_bytes()
    with open(journal.index_path, "ab") as stream:
        stream.write(b'{"kind": "status", "positions": [0')
    reopened = Journal.open(tmp_path / "j")
    assert len(reopened) == 3 and all(e["status"] == "applied" for e in reopened.entries())
    reopened.set_status([2], "undone")
    assert journal.index_path.read_bytes().startswith(intact)
    assert Journal.open(tmp_path / "j").entries()[2]["status"] == "undone"


def test_unknown_status_is_refused(model, tmp_path):
    journal = journalled_run(model, tmp_path)
    with pytest.raises(ValueError):
        journal.set_status([0], "half-done")
    from easyetcon.journal import _append_line  # a well-formed line with a status nobody knows

    _append_line(journal.index_path, {"kind": "status", "positions": [0], "status": "half-done"})
    with pytest.raises(JournalError, match="line 6 is invalid.*half-done"):
        Journal.open(tmp_path / "j")


def test_flipped_bytes_in_a_record_are_detected_and_the_model_is_left_as_it_was(model, tmp_path):
    journal = journalled_run(model, tmp_path)
    edited = model.state_hash()
    path = tmp_path / "j" / "records" / "00000" / "base.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(JournalError, match="checksum"):
        Journal.open(tmp_path / "j").rollback(model)
    assert model.state_hash() == edited


def test_a_truncated_record_file_is_detected(model, tmp_path):
    journalled_run(model, tmp_path)
    path = tmp_path / "j" / "records" / "00001" / "full.safetensors"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(JournalError, match="checksum"):
        Journal.open(tmp_path / "j").record(1)


def test_missing_record_files_are_reported(model, tmp_path):
    journalled_run(model, tmp_path)
    (tmp_path / "j" / "records" / "00000" / "full.safetensors").unlink()
    with pytest.raises(JournalError, match="cannot be read"):
        Journal.open(tmp_path / "j").record(0)


def test_record_folders_are_derived_from_positions_not_read_from_the_file(model, tmp_path):
    journal = journalled_run(model, tmp_path)
    text = journal.index_path.read_text()
    assert "../" not in text and '"record"' not in text  # no path in the index that a crafted journal could point elsewhere


def test_previous_format_gives_a_clear_error(tmp_path):
    (tmp_path / "journal.json").write_text(json.dumps({"version": 1, "steps": []}))
    with pytest.raises(JournalError, match="format version 1"):
        Journal.open(tmp_path)


def test_a_foreign_header_version_is_refused(tmp_path):
    from easyetcon.journal import _append_line

    _append_line(tmp_path / INDEX_FILE, {"kind": "header", "version": 99})
    with pytest.raises(JournalError, match="version 99"):
        Journal.open(tmp_path)


def test_opening_a_folder_without_a_journal(tmp_path):
    with pytest.raises(JournalError, match="journal.jsonl is missing"):
        Journal.open(tmp_path)


# ---- the base model and the current state ----------------------------------------------------


def test_replay_refuses_a_model_that_is_not_the_base(model, tmp_path, toy_host):
    journal = journalled_run(model, tmp_path)
    other = tiny_model(registry=toy_host.registry, seed=1)
    with pytest.raises(JournalError, match="not the model this journal started from"):
        journal.replay(other)
    fresh = tiny_model(registry=toy_host.registry)
    journal.replay(fresh)
    assert fresh.state_hash() == model.state_hash()
    journal.check_current(fresh)


def test_rollback_refuses_a_model_in_another_state(model, tmp_path):
    journal = journalled_run(model, tmp_path)
    with torch.no_grad():
        model.parameter(weight_name(model)).add_(1e-3)
    with pytest.raises(UndoError, match="not in the state"):
        journal.rollback(model)


def test_requests_are_written_once_and_an_id_cannot_change_meaning(model, tmp_path):
    journal = journalled_run(model, tmp_path)
    size = (tmp_path / "j" / "requests.jsonl").stat().st_size
    journal.add_requests(tiny_requests())
    assert (tmp_path / "j" / "requests.jsonl").stat().st_size == size
    changed = tiny_requests()[0].model_copy(update={"target_new": "Oslo"})
    with pytest.raises(JournalError, match="tiny-0.*other content"):
        journal.add_requests([changed])


def test_the_index_is_only_appended_to(model, tmp_path):
    journal = journalled_run(model, tmp_path)
    start = journal.index_path.read_bytes()
    EditChain(["toy-shift"]).apply(model, tiny_requests()[:1], journal=journal)
    assert journal.index_path.read_bytes().startswith(start)


# ---- compact and exact -------------------------------------------------------------------------


def test_low_rank_edits_store_their_factors_and_undo_bit_exactly(model, tmp_path):
    original = model.state_hash()
    name = weight_name(model)
    journal = journalled_run(model, tmp_path, low_rank=True)
    rows, cols = model.parameter(name).shape
    record = journal.record(1)
    assert record.weights.changes[name].form == "factors"
    assert record.stored_bytes() == (rows + cols) * 4
    edited = model.state_hash()
    journal.rollback(model, last=2)
    assert [e["status"] for e in journal.entries()] == ["applied", "undone", "undone"]
    journal.rollback(model)
    assert model.state_hash() == original
    fresh_journal = Journal.open(tmp_path / "j")
    assert all(e["status"] == "undone" for e in fresh_journal.entries())
    for position in range(3):
        fresh_journal.record(position).redo(model)
    assert model.state_hash() == edited


def test_checkpoints_bound_the_updates_a_rebuild_replays(model, tmp_path):
    journal = Journal(tmp_path / "j", checkpoint_every=2)
    requests = [r.model_copy(update={"case_id": f"c{i}"}) for i, r in enumerate(tiny_requests() * 2)]
    EditChain([("toy-shift", {"low_rank": True})]).apply(model, requests, journal=journal)
    forms = [e["weights"][weight_name(model)]["form"] for e in journal.entries()]
    assert forms == ["factors", "full", "factors", "full", "factors", "full"]
    states = [journal.state_before(weight_name(model), p) for p in range(6)]
    assert len({tensor_digest(s) for s in states}) == 6


def test_a_nan_weight_can_still_be_undone(model, tmp_path):
    """Bit comparisons: NaN equals NaN, so a model that already held NaN round-trips."""
    name = weight_name(model)
    with torch.no_grad():
        model.parameter(name)[0, 1] = float("nan")
    poisoned = model.state_hash()
    result = EditChain(["toy-shift"]).apply(model, tiny_requests()[:1], journal=tmp_path / "j")
    result.undo(model)
    assert model.state_hash() == poisoned


def test_a_step_that_leaves_non_finite_weights_fails_and_is_restored(model, tmp_path):
    original = model.state_hash()
    with pytest.raises(ChainStepError, match=r"non-finite.*lower the learning rate.*restored") as caught:
        EditChain([("toy-shift", {"poison": float("nan")})]).apply(model, tiny_requests(), journal=tmp_path / "j")
    assert weight_name(model) in str(caught.value)
    assert model.state_hash() == original
    assert Journal.open(tmp_path / "j").entries() == []


def test_an_undeclared_write_fails_the_step_and_says_what_was_not_restored(model):
    with pytest.raises(ChainStepError) as caught:
        EditChain([("toy-shift", {"sneak_layer": 1})]).apply(model, tiny_requests()[:1])
    message = str(caught.value)
    assert weight_name(model, 1) in message and "did not list in weights_to_edit" in message
    assert "could not be" in message and "reload the model" in message
    assert "The model was restored" not in message


def test_result_undo_marks_the_journal(model, tmp_path):
    result = EditChain(["toy-shift"]).apply(model, tiny_requests(), journal=tmp_path / "j")
    result.undo(model)
    assert [e["status"] for e in Journal.open(tmp_path / "j").entries()] == ["undone"] * 3


def test_repeated_request_ids_are_refused_with_their_positions(model):
    from easyetcon.errors import RequestError

    requests = tiny_requests()
    requests[2] = requests[2].model_copy(update={"case_id": "tiny-0"})
    with pytest.raises(RequestError, match="'tiny-0' at records 0, 2"):
        EditChain(["toy-shift"]).apply(model, requests)


def test_a_step_that_blows_a_weight_up_fails_and_is_restored(model):
    original = model.state_hash()
    with pytest.raises(ChainStepError, match="times its own size.*lower the learning rate"):
        EditChain([("toy-shift", {"amount": 1e9})]).apply(model, tiny_requests()[:1])
    assert model.state_hash() == original


def test_with_a_journal_records_release_their_tensors_after_the_hooks_ran(model, tmp_path):
    seen = []

    class Observer:
        from easyetcon.hookspecs import hookimpl

        @hookimpl
        def easyetcon_after_step(self, step, record, seconds):
            seen.append(record.weights.changes[weight_name(model)].full is not None)

    from easyetcon.plugins import get_host

    get_host().register(Observer(), name="observer")
    result = EditChain(["toy-shift"]).apply(model, tiny_requests(), journal=tmp_path / "j")
    assert seen == [True, True, True]  # hooks see the whole record
    change = result.records[0].weights.changes[weight_name(model)]
    assert change.full is None and change.form == "full" and result.records[0].stored_bytes() == 0
    loaded = Journal.open(tmp_path / "j").record(result.positions[0])
    assert loaded.weights.changes[weight_name(model)].after == change.after
    original = result.originals[weight_name(model)].clone()
    result.undo(model)
    assert torch.equal(model.parameter(weight_name(model)).detach(), original)
