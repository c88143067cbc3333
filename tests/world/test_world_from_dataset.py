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
from easyetcon_world.corpus import CorpusConfig, context_documents, epoch_documents
from easyetcon_world.from_dataset import DatasetWorldOptions

# A few optimizer steps: plumbing, not knowledge.
QUICK = TrainConfig(
    hidden_size=32, layers=1, heads=2, intermediate_size=64, vocab_size=300, block_size=64,
    batch_size=2, epochs=1, max_steps=1, warmup_steps=0,
)

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
        world_from_dataset(path, format="knowedit")
    assert isinstance(error.value, RequestError) and "skip_missing" in str(error.value)


def test_records_without_ground_truth_are_skipped_and_counted_on_request(tmp_path):
    world = world_from_dataset(write_records(tmp_path, RECORDS), format="knowedit", skip_missing=True)
    assert world.skipped == [1]
    assert [r.subject for r in world.requests] == ["Zarvik Tollen", "Oska Bel"]
    taught = {(s.prompt, s.answer, s.role) for s in world.taught}
    held_out = {(s.prompt, s.answer, s.role) for s in world.statements if not s.taught}
    assert ("Zarvik Tollen lives in", "Pelmora", "prompt") in taught
    # paraphrases are held out like the fact world's held-out templates: generalization is measured
    assert ("The home of Zarvik Tollen is", "Pelmora", "rephrase") in held_out
    assert ("Zarvik Tollen works for", "Keltor Group", "locality") in taught | held_out
    assert ("Oska Bel lives in", "Dorvane", "prompt") in taught  # nested alias list: first answer
    assert not any(s.prompt.startswith("Mira Sand") for s in world.statements)
    # the new (post-edit) portability answers are never taught
    assert not any(s.answer == "Vastria" for s in world.statements)
    documents = epoch_documents(world, 0, CorpusConfig())
    assert "Zarvik Tollen lives in Pelmora" in documents
    assert not any("The home of Zarvik Tollen" in d for d in documents)


def test_dataset_world_pretrains_and_saves_its_world(tmp_path, monkeypatch):
    monkeypatch.setenv("EASYETCON_CACHE", str(tmp_path / "cache"))
    world = world_from_dataset(write_records(tmp_path, RECORDS), format="knowedit", skip_missing=True)
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
    assert numbers["statements"]["n"] == sum(s.role == "prompt" and s.taught for s in world.statements)


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
    assert prompts[record["paraphrase_prompts"][0]] == truth  # held out, measured
    assert world.requests[0].relation == record["requested_rewrite"]["relation_id"]
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


# --- fairness: what every editor family needs from a dataset world ---------------------------

FLAT_COUNTERFACT = [  # EasyEdit's flattened CounterFact schema
    {
        "case_id": 7,
        "prompt": "Zarvik Tollen lives in",
        "subject": "Zarvik Tollen",
        "target_new": "Dorvane",
        "ground_truth": "Pelmora",
        "rephrase_prompt": "The home of Zarvik Tollen is",
        "locality_prompt": "Mira Sand lives in",
        "locality_ground_truth": "Pelmora",
    },
    {
        "case_id": 8,
        "prompt": "Oska Bel works for",
        "subject": "Oska Bel",
        "target_new": "Keltor Group",
        "ground_truth": "Varn Labs",
        "rephrase_prompt": "The employer of Oska Bel is",
        "locality_prompt": "Tovi Rask works for",
        "locality_ground_truth": "Varn Labs",
    },
]


def test_flattened_locality_fields_become_locality_probes_and_facts(tmp_path):
    world = world_from_dataset(write_records(tmp_path, FLAT_COUNTERFACT))
    assert world.dataset_format == "counterfact-easyedit"
    first = world.requests[0]
    assert [(p.prompt, p.answer) for p in first.locality] == [("Mira Sand lives in", "Pelmora")]
    assert any(s.prompt == "Mira Sand lives in" and s.role == "locality" for s in world.statements)


def test_every_target_is_the_answer_of_a_taught_fact_fillers_when_needed(tmp_path):
    world = world_from_dataset(write_records(tmp_path, FLAT_COUNTERFACT))
    taught_answers = {s.answer for s in world.taught}
    assert all(r.target_new in taught_answers for r in world.requests)
    # "Dorvane" and "Keltor Group" are nobody's answer in the file: each gets statements about invented subjects
    fillers = [s for s in world.statements if s.role in ("filler", "filler-question")]
    assert {s.answer for s in fillers} == {"Dorvane", "Keltor Group"}
    assert len(fillers) == 2 * 2 * 2  # 2 targets x fillers_per_target x (cloze + question)
    subjects = {r.subject for r in world.requests}
    assert not any(subject in s.prompt for s in fillers for subject in subjects)
    assert world.summary()["filler statements"] == 8
    none = world_from_dataset(write_records(tmp_path, FLAT_COUNTERFACT), options=DatasetWorldOptions(fillers_per_target=0))
    assert not any(s.role.startswith("filler") for s in none.statements)


def test_held_out_statements_never_reach_the_corpus_and_the_choice_is_seeded():
    path = data_file("counterfact/counterfact_portability_gpt4.json")
    world = world_from_dataset(path, limit=60)
    held_out = [s for s in world.statements if not s.taught]
    locality = [s for s in world.statements if s.role == "locality"]
    share = sum(not s.taught for s in locality) / len(locality)
    assert 0.15 < share < 0.35  # heldout_locality 0.25
    assert all(not s.taught for s in world.statements if s.role == "rephrase")
    corpus = " ".join(epoch_documents(world, 0, CorpusConfig())) + " ".join(
        text for pair in context_documents(world, 0, CorpusConfig()) for text in pair
    )
    taught_prompts = {s.prompt for s in world.taught}
    leaked = [s.prompt for s in held_out if s.prompt in corpus and not any(s.prompt in t for t in taught_prompts)]
    assert leaked == []
    again = world_from_dataset(path, limit=60)
    assert again.fingerprint() == world.fingerprint()
    other = world_from_dataset(path, limit=60, options=DatasetWorldOptions(seed=1))
    assert {s.prompt for s in other.statements if not s.taught} != {s.prompt for s in held_out}


def test_questions_with_answer_tags_are_taught_and_given_to_the_requests(tmp_path):
    world = world_from_dataset(write_records(tmp_path, FLAT_COUNTERFACT))
    request = world.requests[0]
    (question,) = request.metadata["qa_prompts"]
    assert question == "Question: Zarvik Tollen lives in? Answer:"
    assert f"{question} <answer> Pelmora </answer>" in epoch_documents(world, 0, CorpusConfig())
    path = data_file("counterfact/counterfact_portability_gpt4.json")
    counterfact = world_from_dataset(path, limit=5)
    subject = counterfact.requests[0].subject
    assert counterfact.requests[0].metadata["qa_prompts"] == [f"Question: Where was {subject} born? Answer:"]
    plain = world_from_dataset(write_records(tmp_path, FLAT_COUNTERFACT), options=DatasetWorldOptions(questions=False))
    assert "qa_prompts" not in plain.requests[0].metadata
    assert not any(s.role == "question" for s in plain.statements)


def test_in_context_updates_state_another_answer_as_context_only(tmp_path):
    path = data_file("counterfact/counterfact_portability_gpt4.json")
    world = world_from_dataset(path, limit=40)
    pairs = context_documents(world, 0, CorpusConfig())
    assert len(pairs) > 40  # about two per fact with context_updates 1.0
    facts = {s.prompt: s.answer for s in world.taught if s.role == "prompt"}
    overrides = 0
    for context, text in pairs:
        prompt = next((p for p in facts if context.startswith(p + " ")), None)
        assert prompt is not None  # every context states a record's fact
        stated = context[len(prompt) + 1 : -1]
        if text.startswith(prompt) or f"<answer> {stated} </answer>" in text:  # the fact re-asked
            overrides += 1
            assert stated != facts[prompt] and stated in text
    assert overrides >= len(pairs) // 3
    assert context_documents(world, 0, CorpusConfig(context_updates=0.0)) == []


def test_a_world_file_of_the_old_format_is_refused_with_the_rebuild_command(tmp_path):
    world = world_from_dataset(write_records(tmp_path, FLAT_COUNTERFACT))
    data = json.loads(world.model_dump_json())
    data["format"] = "easyetcon-dataset-world/1"
    (tmp_path / "world.json").write_text(json.dumps(data))
    with pytest.raises(Exception, match="world build --from-dataset"):
        load_world(tmp_path / "world.json")


def test_dataset_world_knowledge_has_its_own_measures_and_floors(tmp_path, monkeypatch):
    from easyetcon_world.knowledge import DATASET_FLOORS, below_floors, headline

    monkeypatch.setenv("EASYETCON_CACHE", str(tmp_path / "cache"))
    world = world_from_dataset(write_records(tmp_path, FLAT_COUNTERFACT))
    model, tokenizer, _ = load_pretrained(pretrain(world, QUICK, progress=False))
    numbers = measure_knowledge(model, tokenizer, world)
    values = headline(numbers)
    assert set(DATASET_FLOORS) <= set(values)
    assert numbers["paraphrases_heldout"]["n"] == 2 and numbers["in_context"]["n"] == 2
    assert set(below_floors(numbers)) == set(DATASET_FLOORS)  # two training steps learn nothing


def test_world_build_from_a_dataset_file_exports_its_requests(tmp_path, monkeypatch):
    from click.testing import CliRunner

    import easyetcon_world.pretraining as pretraining
    from easyetcon.requests import load_requests
    from easyetcon_world.plugin import world_group

    monkeypatch.setattr(pretraining, "dataset_train_config", lambda: QUICK)
    path = write_records(tmp_path, FLAT_COUNTERFACT)
    out = tmp_path / "requests.json"
    result = CliRunner().invoke(world_group, [
        "build", "--from-dataset", str(path), "--cache-dir", str(tmp_path / "c"), "--export-requests", str(out),
    ])
    assert result.exit_code == 0, result.output
    assert "filler statements" in result.output and "in_context_override" in result.output
    assert "below the floor" in result.output
    exported = load_requests(out)
    assert [r.case_id for r in exported] == ["7", "8"] and exported[0].metadata["qa_prompts"]
    (built,) = (tmp_path / "c").iterdir()
    assert load_world(built).fingerprint() == world_from_dataset(path).fingerprint()
    misuse = CliRunner().invoke(world_group, ["build", "--preset", "tiny", "--limit", "3"])
    assert misuse.exit_code != 0 and "--limit only apply with --from-dataset" in misuse.output
    from easyetcon.cli import cli
    from easyetcon.plugins import get_host

    get_host().register_commands(cli)  # what `easyetcon` does at start-up
    missing = CliRunner().invoke(cli, ["world", "build", "--from-dataset", str(tmp_path / "nope.json")])
    assert missing.exit_code != 0 and "nope.json" in missing.output and "Traceback" not in missing.output
