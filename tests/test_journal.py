"""The journal on disk: atomic, versioned, and readable after the process is gone."""

import json

import pytest
import torch

from easyetcon.errors import JournalError
from easyetcon.journal import Journal, write_json_atomic
from easyetcon.records import EditRecord, MemoryDelta, MemoryEntry, MemoryStore, WeightDelta


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    write_json_atomic(tmp_path / "a.json", {"x": 1})
    write_json_atomic(tmp_path / "a.json", {"x": 2})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_record_with_weights_and_memory_survives_disk(tmp_path):
    record = EditRecord(
        step_index=2, step_name="s", editor="e", family="intrinsic", config={"a": 1}, request_ids=["r"],
        weights=WeightDelta({"w": torch.zeros(2, 3)}, {"w": torch.ones(2, 3)}),
        memory=MemoryDelta("store", {"m1": None}, {"m1": MemoryEntry({"k": "v"}, {"key": torch.arange(3.0)})}),
        seconds=1.5,
    )
    journal = Journal(tmp_path / "j")
    journal.append(record)
    loaded = Journal.open(tmp_path / "j").record(0)
    assert loaded.config == {"a": 1} and loaded.seconds == 1.5
    assert torch.equal(loaded.weights.after["w"], torch.ones(2, 3))
    assert loaded.memory.before == {"m1": None}
    assert loaded.memory.after["m1"].same_as(record.memory.after["m1"])


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


@pytest.mark.parametrize(
    "content,message",
    [("{broken", "unreadable"), ('{"version": 99, "steps": []}', "version 99")],
)
def test_corrupted_or_foreign_journals_are_refused(tmp_path, content, message):
    (tmp_path / "journal.json").write_text(content)
    with pytest.raises(JournalError, match=message):
        Journal.open(tmp_path)


def test_opening_a_folder_without_a_journal(tmp_path):
    with pytest.raises(JournalError, match="journal.json is missing"):
        Journal.open(tmp_path)


def test_missing_record_files_are_reported(tmp_path):
    journal = Journal(tmp_path / "j")
    journal.append(EditRecord(0, "s", "e", "intrinsic", {}, ["r"], weights=WeightDelta({"w": torch.zeros(1)}, {"w": torch.ones(1)})))
    (tmp_path / "j" / "records" / "00000" / "weights_before.safetensors").unlink()
    with pytest.raises(JournalError, match="unreadable"):
        Journal.open(tmp_path / "j").record(0)
