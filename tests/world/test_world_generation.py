"""The generated world: determinism, relations and templates, held-out phrasings, multi-hop chains."""

from __future__ import annotations

import pytest

from easyetcon.errors import ConfigError
from easyetcon_world import RELATIONS, TWO_HOPS, WorldConfigError, build_world
from easyetcon_world.corpus import CorpusConfig, world_documents
from easyetcon_world.relations import continuation_matches, extract_answer


@pytest.fixture(scope="module")
def tiny():
    return build_world("tiny", seed=0)


def test_same_seed_gives_the_same_world_and_another_seed_another(tiny):
    assert build_world("tiny", seed=0).fingerprint() == tiny.fingerprint()
    other = build_world("tiny", seed=1)
    assert other.fingerprint() != tiny.fingerprint()
    assert other.entities["person"] != tiny.entities["person"]


def test_presets_grow_and_default_has_room_for_500_edits():
    sizes = {p: build_world(p).summary() for p in ("tiny", "small", "default")}
    assert sizes["tiny"]["facts"] < sizes["small"]["facts"] < sizes["default"]["facts"]
    assert sizes["default"]["entities"]["person"] >= 300
    assert sizes["default"]["facts"] >= 500


def test_at_least_six_relations_with_six_templates_each_ending_before_the_object():
    assert len(RELATIONS) >= 6
    for name, relation in RELATIONS.items():
        assert len(relation.templates) >= 6, name
        assert len(set(relation.templates)) == len(relation.templates), name
        for template in relation.templates:
            assert "{s}" in template and not template.endswith((" ", "{s}", ".")), template


def test_relations_chain_so_multi_hop_questions_exist(tiny):
    for spec in TWO_HOPS.values():
        for left, right in zip(spec.chain, spec.chain[1:]):
            assert RELATIONS[left].object_kind == RELATIONS[right].subject_kind
    assert any(len(spec.chain) >= 3 for spec in TWO_HOPS.values())
    questions = tiny.multi_hop_questions()
    assert questions and any(q.trained for q in questions) and any(not q.trained for q in questions)


def test_names_are_unique_and_never_a_word_of_another_name(tiny):
    names = [n for kind, names in tiny.entities.items() if kind != "industry" for n in names]
    assert len(names) == len(set(names))
    single_words = {n for n in names if " " not in n}
    for name in names:
        if " " in name:
            assert not set(name.split()) & single_words, name


def test_unknown_preset_is_a_config_error_listing_the_choices():
    with pytest.raises(WorldConfigError) as error:
        build_world("huge")
    assert isinstance(error.value, ConfigError)
    for preset in ("tiny", "default", "large"):
        assert preset in str(error.value)


def test_negative_size_and_unknown_option_are_reported_together():
    with pytest.raises(WorldConfigError) as error:
        build_world("tiny", people=-3, colour=2)
    assert any("people" in p for p in error.value.problems)
    assert any("colour" in p for p in error.value.problems)


def test_heldout_templates_never_meet_their_subject_but_appear_with_others(tiny):
    corpus = " \n ".join(
        doc for epoch in range(3) for doc in world_documents(tiny, epoch, CorpusConfig())
    )
    for fact in tiny.facts:
        assert fact.heldout_templates and 0 not in fact.heldout_templates
        for t in fact.heldout_templates:
            assert fact.prompt(t) not in corpus, (fact, t)
            others = [
                f for f in tiny.facts if f.relation == fact.relation and t in f.trained_templates
            ]
            assert any(f"{f.prompt(t)} {f.object}." in corpus for f in others), (fact.relation, t)
        for t in fact.trained_templates:
            assert f"{fact.prompt(t)} {fact.object}." in corpus


def test_multi_hop_answer_follows_an_edited_fact(tiny):
    person = tiny.entities["person"][0]
    chain = TWO_HOPS["country_of_residence"].chain
    old_city, old_country = (h.object for h in tiny.follow(person, chain))
    new_city = next(
        c for c in tiny.entities["city"] if tiny.object_of(c, "in_country") != old_country
    )
    edited = tiny.follow(person, chain, {(person, "lives_in"): new_city})
    assert edited[0].object == new_city
    assert edited[1].object == tiny.object_of(new_city, "in_country") != old_country


def test_corpus_changes_between_epochs_but_not_between_runs(tiny):
    first = world_documents(tiny, 0, CorpusConfig())
    assert first == world_documents(tiny, 0, CorpusConfig())
    assert first != world_documents(tiny, 1, CorpusConfig())
    assert sorted(first) != sorted(world_documents(tiny, 1, CorpusConfig()))  # groupings differ too


def test_answer_extraction_and_whole_word_matching():
    assert extract_answer(" <answer> Pelmora </answer>") == "Pelmora"
    assert extract_answer(" Pelmora is nice") is None
    assert continuation_matches(" Pelmora.", "Pelmora")
    assert not continuation_matches(" Pelmoraton.", "Pelmora")


def test_context_documents_answer_from_the_stated_fact_only_for_its_subject(tiny):
    from easyetcon_world.corpus import context_documents

    pairs = context_documents(tiny, 0, CorpusConfig())
    truth = {(f.subject, f.relation): f.object for f in tiny.facts}
    by_prompt = {f.prompt(0): f for f in tiny.facts}
    assert len(pairs) > len(tiny.facts)  # every fact's update, and most of their distractors
    overrides = distractors = 0
    for context, text in pairs:
        stated_about = next(f for p, f in by_prompt.items() if context.startswith(p + " "))
        stated = context[len(stated_about.prompt(0)) + 1 : -1]
        asked = next(f for f in tiny.facts if f.subject in text and f.relation == stated_about.relation)
        answer = truth[(asked.subject, asked.relation)]
        said = text.removesuffix(" </answer>").removesuffix(".")
        if asked.subject == stated_about.subject:
            assert stated != answer and said.endswith(stated)
            overrides += 1
        else:
            assert said.endswith(answer)
            distractors += 1
        assert all(asked.prompt(t) not in text for t in asked.heldout_templates)
    assert overrides and distractors
    assert context_documents(tiny, 0, CorpusConfig(context_updates=0)) == []


def test_pretraining_puts_no_loss_on_stated_context(tiny):
    from easyetcon_world.pretraining import _epoch_blocks, default_train_config, train_tokenizer
    from easyetcon_world.corpus import epoch_documents

    config = default_train_config("tiny")
    tokenizer = train_tokenizer(epoch_documents(tiny, 0, config.corpus), config.vocab_size)
    ids, labels = _epoch_blocks(tiny, 0, config, tokenizer)
    without, plain_labels = _epoch_blocks(tiny, 0, config.model_copy(update={"corpus": CorpusConfig(context_updates=0)}), tokenizer)
    untrained = ((labels == -100) & (ids != tokenizer.pad_token_id)).sum()
    assert untrained > 0  # the stated sentences are in the blocks but carry no loss
    assert ((plain_labels == -100) & (without != tokenizer.pad_token_id)).sum() == 0
