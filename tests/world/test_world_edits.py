"""Counterfactual edit requests, their KnowEdit export, and the plugin's dataset and commands."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from easyetcon.requests import EditRequest, load_requests
from easyetcon_world import (
    RELATIONS,
    TWO_HOPS,
    WorldConfigError,
    build_world,
    make_edit_requests,
    split_of,
    to_knowedit,
    world_from_dataset,
)
from easyetcon_world.corpus import CorpusConfig, world_documents
from easyetcon_world.plugin import (
    FactWorldDatasetConfig,
    easyetcon_register_commands,
    easyetcon_register_datasets,
    load_fact_world,
    world_group,
)


@pytest.fixture(scope="module")
def world():
    return build_world("small", seed=0)


@pytest.fixture(scope="module")
def requests(world):
    return make_edit_requests(world, "test", n=120, seed=0)


def test_tune_and_test_splits_are_disjoint_by_subject(world):
    tune = make_edit_requests(world, "tune", seed=0)
    test = make_edit_requests(world, "test", seed=0)
    assert tune and test
    assert not {r.subject for r in tune} & {r.subject for r in test}
    assert all(split_of(world, r.subject) == "test" for r in test)


def test_requests_are_deterministic_from_the_seed(world, requests):
    again = make_edit_requests(world, "test", n=120, seed=0)
    assert [r.model_dump() for r in again] == [r.model_dump() for r in requests]
    other = make_edit_requests(world, "test", n=120, seed=1)
    assert [(r.case_id, r.target_new) for r in other] != [
        (r.case_id, r.target_new) for r in requests
    ]


def test_each_request_is_a_distinct_fact_with_a_new_object_of_the_same_kind(world, requests):
    assert len({r.case_id for r in requests}) == len(requests)
    for r in requests:
        fact = world.fact(r.subject, r.relation)
        assert r.ground_truth == fact.object
        assert r.target_new != r.ground_truth
        assert world.kind_of(r.target_new) == RELATIONS[r.relation].object_kind
        assert r.prompt == fact.prompt(0) and r.subject in r.prompt


def test_rephrase_prompts_are_the_heldout_templates_unseen_in_pretraining(world, requests):
    corpus = "\n".join(world_documents(world, 0, CorpusConfig()))
    for r in requests:
        fact = world.fact(r.subject, r.relation)
        assert r.rephrase_prompts == [fact.prompt(t) for t in fact.heldout_templates]
        assert all(p not in corpus for p in r.rephrase_prompts)


def test_locality_probes_avoid_every_fact_edited_by_the_set(world, requests):
    edited = {(r.subject, r.relation) for r in requests}
    kinds = set()
    for r in requests:
        for probe in r.locality:
            kinds.add(probe.kind)
            fact = next(f for f in world.facts if f.prompt(0) == probe.prompt)
            assert (fact.subject, fact.relation) not in edited
            assert probe.answer == fact.object
            assert (fact.subject == r.subject) == (probe.kind == "same-subject")
    assert kinds == {"same-subject", "other-subject"}


def test_portability_answers_follow_the_new_fact(world, requests):
    checked = 0
    everything = make_edit_requests(world, "test", seed=0, relations=list(RELATIONS))
    assert {r.relation for r in everything} == set(RELATIONS)
    for r in requests + everything:
        for probe in r.portability:
            kind = next(
                k
                for k, t in TWO_HOPS.items()
                if r.subject in probe.prompt
                and (
                    probe.prompt == t.plain.format(s=r.subject)
                    or t.question.format(s=r.subject) in probe.prompt
                )
            )
            new_answer = world.follow(
                r.subject, TWO_HOPS[kind].chain, {(r.subject, r.relation): r.target_new}
            )[-1].object
            assert probe.answer == new_answer
            assert probe.kind in ("two-hop", "two-hop-reasoning")
            checked += 1
        if (
            r.relation == "lives_in"
        ):  # the world has countries enough that the answer really changes
            assert (
                r.portability[0].answer
                != r.metadata["old_multi_hop_answers"]["country_of_residence"]
            )
    assert checked > len(requests) + len(everything)


def test_default_edits_are_person_facts_so_no_edit_changes_another_edits_chain(world, requests):
    assert {r.relation for r in requests} == {"lives_in", "born_in", "works_for"}
    assert {world.kind_of(r.subject) for r in requests} == {"person"}


def test_default_preset_offers_500_distinct_sequential_edits():
    default = build_world("default", seed=0)
    requests = make_edit_requests(default, "test", n=500, seed=0)
    assert len({(r.subject, r.relation) for r in requests}) == 500


def test_asking_for_more_edits_than_the_split_has_names_the_limit(world):
    with pytest.raises(WorldConfigError, match="editable facts"):
        make_edit_requests(world, "tune", n=10_000)
    with pytest.raises(WorldConfigError, match="split"):
        make_edit_requests(world, "validation")


def test_knowedit_export_round_trips_through_the_dataset_reader(requests, tmp_path):
    path = tmp_path / "edits.json"
    path.write_text(json.dumps(to_knowedit(requests)))
    world = world_from_dataset(path)
    assert [r.target_new for r in world.requests] == [r.target_new for r in requests]
    assert [r.ground_truth for r in world.requests] == [r.ground_truth for r in requests]
    taught = {(s.prompt, s.answer) for s in world.statements}
    assert (requests[0].prompt, requests[0].ground_truth) in taught


def test_plugin_registers_the_dataset_and_its_loader_validates_options():
    registered = {}
    easyetcon_register_datasets(lambda name, loader, **kw: registered.update({name: (loader, kw)}))
    loader, options = registered["fact-world"]
    assert options["config"] is FactWorldDatasetConfig and options["summary"]
    requests = loader(FactWorldDatasetConfig(preset="tiny", n=5, split="tune"))
    assert len(requests) == 5 and all(isinstance(r, EditRequest) for r in requests)
    with pytest.raises(ValidationError, match="tiny"):
        FactWorldDatasetConfig(preset="enormous")
    with pytest.raises(ValidationError):
        FactWorldDatasetConfig(preset="tiny", colour="red")
    with pytest.raises(ValidationError, match="lives_in"):
        FactWorldDatasetConfig(relations=["owns_pet"])
    assert {
        r.relation
        for r in load_fact_world(FactWorldDatasetConfig(preset="tiny", relations=["works_for"]))
    } == {"works_for"}


def test_world_commands_info_and_export(tmp_path):
    import click

    cli = click.Group("easyetcon")
    easyetcon_register_commands(cli)
    assert cli.commands["world"] is world_group
    runner = CliRunner()
    info = runner.invoke(cli, ["world", "info", "--preset", "tiny"], env={"COLUMNS": "80"})
    assert info.exit_code == 0, info.output
    assert "facts" in info.output and "shipped model" in info.output and "--model wide" in info.output
    # at 80 columns every path is folded onto more lines, never cut
    from easyetcon_world.shipped import shipped_model_path

    cells = "".join(line.split("│")[2].strip() for line in info.output.splitlines() if line.count("│") == 3)
    assert str(shipped_model_path("wide")) in cells
    out = tmp_path / "tiny.json"
    export = runner.invoke(
        cli,
        [
            "world",
            "export",
            "--preset",
            "tiny",
            "--split",
            "test",
            "--n",
            "7",
            "--relation",
            "works_for",
            "--out",
            str(out),
        ],
    )
    assert export.exit_code == 0, export.output
    exported = load_requests(out)
    assert len(exported) == 7 and {r.relation for r in exported} == {"works_for"}
    knowedit = tmp_path / "tiny-knowedit.json"
    runner.invoke(
        cli, ["world", "export", "--preset", "tiny", "--format", "knowedit", "--out", str(knowedit)]
    )
    records = json.loads(knowedit.read_text())
    assert records and {"prompt", "target_new", "ground_truth", "locality", "portability"} <= set(
        records[0]
    )
    bad = runner.invoke(cli, ["world", "info", "--preset", "gigantic"])
    assert bad.exit_code != 0 and "tiny" in bad.output


def test_long_form_targets_state_the_new_object_then_what_the_world_says_about_it(world, requests):
    from easyetcon_world.relations import statement

    long = make_edit_requests(world, "test", n=120, seed=0, long_form=2)
    assert [r.request_id for r in long] == [r.request_id for r in requests]  # the same facts, the same objects
    for short, request in zip(requests, long):
        obj = short.target_new
        assert request.metadata["target_object"] == obj and request.ground_truth == short.ground_truth
        assert request.target_new.startswith(f"{obj}. ")
        # every sentence after the object is a fact of the world, the first about the object itself
        sentences = [s.strip() + "." for s in request.target_new[len(obj) + 2 :].split(".") if s.strip()]
        facts = {statement(f.relation, 0, f.subject, f.object) for f in world.facts}
        assert len(sentences) == 2 and set(sentences) <= facts and sentences[0].startswith(obj)
    assert "target_object" not in requests[0].metadata
    with pytest.raises(WorldConfigError, match="long_form"):
        make_edit_requests(world, "test", n=2, long_form=-1)
    assert FactWorldDatasetConfig(long_form=3).long_form == 3
    with pytest.raises(ValidationError):
        FactWorldDatasetConfig(long_form=-1)
