"""Worlds built from edit-dataset files: the corpus teaches each record's old fact."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from easyetcon.errors import RequestError
from easyetcon_world import (
    TrainConfig,
    WorldRecordError,
    load_pretrained,
    load_world,
    measure_knowledge,
    pretrain,
    world_from_dataset,
)
from easyetcon_world.corpus import CorpusConfig, epoch_documents

DATA = Path(os.environ.get("EASYETCON_TEST_DATA", "/work/shared/data"))


def data_file(relative: str) -> Path:
    path = DATA / relative
    if not path.is_file():
        pytest.skip(f"{path} is not available")
    return path


def write_records(tmp_path: Path, records: list[dict]) -> Path:
    path = tmp_path / "records.json"
    path.write_text(json.dumps(records))
    return path


RECORDS = [
    {
        "subject": "Zarvik Tollen",
        "prompt": "Zarvik Tollen lives in",
        "target_new": "Dorvane",
        "ground_truth": "Pelmora",
        "rephrase_prompt": "The home of Zarvik Tollen is",
        "locality": {
            "Relation_Specificity": [
                {"prompt": "Zarvik Tollen works for", "ground_truth": ["Keltor Group"]}
            ]
        },
        "portability": {
            "Reasoning": [
                {"prompt": "Zarvik Tollen lives in the country of", "ground_truth": "Vastria"}
            ]
        },
    },
    {"subject": "Mira Sand", "prompt": "Mira Sand lives in", "target_new": "Pelmora"},
    {
        "subject": "Oska Bel",
        "prompt": "Oska Bel lives in",
        "target_new": "Pelmora",
        "ground_truth": [["Dorvane"]],
    },
]


def test_record_without_ground_truth_is_an_error_naming_its_index(tmp_path):
    path = write_records(tmp_path, RECORDS)
    with pytest.raises(WorldRecordError, match="record 1") as error:
        world_from_dataset(path)
    assert isinstance(error.value, RequestError) and "skip_missing" in str(error.value)


def test_records_without_ground_truth_are_skipped_and_counted_on_request(tmp_path):
    world = world_from_dataset(write_records(tmp_path, RECORDS), skip_missing=True)
    assert world.skipped == [1]
    assert [r.subject for r in world.requests] == ["Zarvik Tollen", "Oska Bel"]
    taught = {(s.prompt, s.answer, s.role) for s in world.statements}
    assert ("Zarvik Tollen lives in", "Pelmora", "prompt") in taught
    assert ("The home of Zarvik Tollen is", "Pelmora", "rephrase") in taught
    assert ("Zarvik Tollen works for", "Keltor Group", "locality") in taught
    assert ("Oska Bel lives in", "Dorvane", "prompt") in taught  # nested alias list: first answer
    assert not any(s.prompt.startswith("Mira Sand") for s in world.statements)
    # the new (post-edit) portability answers are never taught
    assert not any(s.answer == "Vastria" for s in world.statements)
    documents = epoch_documents(world, 0, CorpusConfig())
    assert "Zarvik Tollen lives in Pelmora" in documents


def test_dataset_world_pretrains_and_saves_its_world(tmp_path, monkeypatch):
    monkeypatch.setenv("EASYETCON_CACHE", str(tmp_path / "cache"))
    world = world_from_dataset(write_records(tmp_path, RECORDS), skip_missing=True)
    quick = TrainConfig(
        hidden_size=32,
        layers=1,
        heads=2,
        intermediate_size=64,
        vocab_size=300,
        block_size=64,
        batch_size=2,
        epochs=1,
        max_steps=1,
        warmup_steps=0,
    )
    directory = pretrain(world, quick, progress=False)
    assert load_world(directory).fingerprint() == world.fingerprint()
    model, tokenizer, _ = load_pretrained(directory)
    numbers = measure_knowledge(model, tokenizer, world)
    assert numbers["statements"]["n"] == len(world.statements)


def test_knowedit_file_with_one_missing_ground_truth():
    path = data_file("knowedit/train_cf.json")
    with pytest.raises(WorldRecordError, match="record 630"):
        world_from_dataset(path)
    world = world_from_dataset(path, skip_missing=True)
    assert world.skipped == [630]
    records = json.loads(path.read_text())
    first = world.requests[0]
    assert (
        first.ground_truth == records[0]["ground_truth"]
        and first.target_new == records[0]["target_new"]
    )
    assert any(
        s.prompt == records[0]["prompt"] and s.answer == records[0]["ground_truth"]
        for s in world.statements
    )


def test_file_without_any_ground_truth_has_nothing_to_teach():
    path = data_file("knowedit/recent_train.json")
    with pytest.raises(WorldRecordError, match="record 0"):
        world_from_dataset(path)
    with pytest.raises(WorldRecordError, match="no usable records"):
        world_from_dataset(path, skip_missing=True)


def test_counterfact_neighbours_are_taught_the_true_object():
    path = data_file("counterfact/counterfact_portability_gpt4.json")
    world = world_from_dataset(path, limit=20)
    assert len(world.requests) == 20
    record = json.loads(path.read_text())[0]
    truth = record["requested_rewrite"]["target_true"]["str"]
    prompts = {s.prompt: s.answer for s in world.statements}
    assert prompts[record["neighborhood_prompts"][0]] == truth
    assert prompts[record["paraphrase_prompts"][0]] == truth
    assert world.requests[0].portability[0].answer == record["portability"]["New Answer"]


def test_zsre_questions_are_taught_their_answer():
    path = data_file("zsre/zsre_mend_eval_portability_gpt4.json")
    world = world_from_dataset(path, limit=10)
    record = json.loads(path.read_text())[0]
    assert (
        world.requests[0].prompt == record["src"] and world.requests[0].target_new == record["alt"]
    )
    assert {s.prompt: s.answer for s in world.statements}[record["rephrase"]] == record["answers"][
        0
    ]
