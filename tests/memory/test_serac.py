"""serac: the property that defines it. No weight changes; the trained scope classifier scores
every stored edit against a query; when the best score is above ``threshold`` the query is asked
with that edit's fact in front (the counterfactual model), otherwise it reaches the base model
exactly as it was. The classifier is trained in its own step, deterministically for a seed,
and read back only when its file verifies; undo takes an edit out of the memory."""

from __future__ import annotations

import json

import pytest
import torch

from easyetcon.chain import EditChain
from easyetcon.errors import ConfigError
from easyetcon.plugins import get_host
from easyetcon.requests import EditRequest
from easyetcon.spec import parse_chain_spec
from easyetcon.testing import tiny_model
from easyetcon_memory import (
    ScopeClassifier,
    SeracConfig,
    load_memory,
    read_serac_classifier,
    save_memory,
    scope_examples,
    train_serac_classifier,
)
from tests.memory.helpers import birthplace_request as third_request
from tests.memory.helpers import people_requests


def requests() -> list[EditRequest]:
    return [*people_requests(), third_request()]


def train(seed: int = 0, **options):
    return train_serac_classifier(requests(), retriever="tfidf", epochs=150, hidden=16, seed=seed, **options)


@pytest.fixture(scope="module")
def classifier_file(tmp_path_factory):
    return str(train().save(tmp_path_factory.mktemp("serac") / "classifier.safetensors"))


def edited(classifier_file, reqs=None, **options):
    model = tiny_model("llama", registry=get_host().registry)
    chain = EditChain([("serac", {"classifier": classifier_file, **options})])
    results = [chain.apply(model, [r]) for r in (reqs if reqs is not None else requests())]
    return model, chain.steps[0].editor, results


def fact_of(request: EditRequest) -> str:
    return f"{request.prompt} {request.target_new}."


def test_the_classifier_is_required_and_the_threshold_is_the_papers():
    assert SeracConfig(classifier="c.safetensors").threshold == 0.5
    with pytest.raises(ConfigError, match="classifier"):
        get_host().registry.editor("serac").create({})


def test_weights_never_change(classifier_file):
    model = tiny_model("llama", registry=get_host().registry)
    original = model.state_hash()
    EditChain([("serac", {"classifier": classifier_file})]).apply(model, requests())
    assert model.state_hash() == original


def test_in_scope_rephrases_go_to_the_counterfactual_and_the_rest_is_untouched(classifier_file):
    model, editor, _ = edited(classifier_file)
    for request in requests():
        for rephrase in request.rephrase_prompts:
            assert model.rewrite_prompts([rephrase]) == [f"{fact_of(request)} {rephrase}"]
        for probe in request.locality:
            assert model.rewrite_prompts([probe.prompt]) == [probe.prompt]  # exactly as it was
    (decision,) = editor.lookup(model, "The birthplace of Lira Montague is")
    assert decision.in_scope and decision.request_id == third_request().request_id and decision.score > 0.5


def test_the_classifiers_score_against_the_threshold_decides(classifier_file):
    queries = [p for r in requests() for p in (*r.rephrase_prompts, *(probe.prompt for probe in r.locality))]
    model, editor, _ = edited(classifier_file)
    scores = [d.score for d in editor.lookup(model, queries)]
    middle = sorted(scores)[len(scores) // 2]
    for threshold in (0.0, middle, 1.0):
        model, editor, _ = edited(classifier_file, threshold=threshold)
        decisions = editor.lookup(model, queries)
        assert [d.in_scope for d in decisions] == [s > threshold for s in scores]
        rewritten = model.rewrite_prompts(queries)
        assert [r != q for r, q in zip(rewritten, queries)] == [s > threshold for s in scores]
    # the score is the trained classifier's, for the best stored edit
    direct = editor.classifier.score([r.prompt for r in requests()], queries).max(dim=1).values
    assert torch.allclose(torch.tensor(scores), direct)


def test_training_is_deterministic_for_a_seed_and_reports_its_cost():
    first, again, other = train(seed=3), train(seed=3), train(seed=4)
    assert all(torch.equal(first.weights[n], again.weights[n]) for n in first.weights)
    assert not torch.equal(first.weights["hidden.weight"], other.weights["hidden.weight"])
    cost = first.training
    assert cost["examples"] == len(scope_examples(requests())) == cost["positives"] + cost["negatives"]
    assert cost["seconds"] >= 0 and cost["requests"] == 3


def test_scope_examples_are_own_prompts_and_rephrases_against_locality_and_other_edits():
    reqs = requests()
    examples = scope_examples(reqs, other_negatives=1)
    zarvik = [(q, label) for e, q, label in examples if e == reqs[0].prompt]
    assert sorted(q for q, label in zarvik if label == 1.0) == sorted([reqs[0].prompt, *reqs[0].rephrase_prompts])
    negatives = [q for q, label in zarvik if label == 0.0]
    assert negatives[:2] == [probe.prompt for probe in reqs[0].locality]
    assert len(negatives) == 3 and negatives[2] in {r.prompt for r in reqs[1:]}


def test_training_needs_both_kinds_of_pairs():
    lone = EditRequest(prompt="Zarvik Tollen lives in the city of", subject="Zarvik Tollen", target_new="Pelmora")
    with pytest.raises(ConfigError, match="out-of-scope"):
        train_serac_classifier([lone], retriever="tfidf")


def test_the_artefact_round_trips(classifier_file):
    classifier = read_serac_classifier(classifier_file)
    trained = train()
    assert all(torch.equal(classifier.weights[n], trained.weights[n]) for n in trained.weights)
    assert classifier.training["examples"] == trained.training["examples"]
    queries = ["The birthplace of Lira Montague is", "Bruno Kasset works for"]
    edits = [r.prompt for r in requests()]
    assert torch.equal(classifier.score(edits, queries), trained.score(edits, queries))


def test_a_tampered_or_missing_artefact_is_refused_naming_the_option(classifier_file, tmp_path):
    data = bytearray(open(classifier_file, "rb").read())
    header = int.from_bytes(data[:8], "little")
    flipped = bytearray(data)
    flipped[8 + header + 10] ^= 0xFF  # a bit of a weight
    (tmp_path / "weights.safetensors").write_bytes(flipped)
    metadata = json.loads(data[8 : 8 + header])
    metadata["__metadata__"]["easyetcon.serac"] = metadata["__metadata__"]["easyetcon.serac"].replace(
        '"seed":0', '"seed":1'
    )
    text = json.dumps(metadata).encode()
    text += b" " * (-len(text) % 8)
    (tmp_path / "metadata.safetensors").write_bytes(len(text).to_bytes(8, "little") + text + data[8 + header :])
    (tmp_path / "garbage.safetensors").write_bytes(b"not a classifier")
    for name, message in [("weights", "does not match its digest"), ("metadata", "does not match its checksum"),
                          ("garbage", "cannot be read"), ("absent", "is not a file")]:
        path = str(tmp_path / f"{name}.safetensors")
        with pytest.raises(ConfigError, match=f"option 'classifier'.*{message}"):
            get_host().registry.editor("serac").create({"classifier": path})
        with pytest.raises(ConfigError, match="step 0"):
            parse_chain_spec({"chain": [{"editor": "serac", "classifier": path}]})


def test_undo_removes_the_edit(classifier_file):
    model, editor, results = edited(classifier_file)
    rephrase = "The birthplace of Lira Montague is"
    assert model.rewrite_prompts([rephrase]) != [rephrase]
    results[2].undo(model)
    store = model.memory_store(next(iter(model.memories)))
    assert all(entry.data["request_id"] != third_request().request_id for _, entry in store.items())
    assert all(d.request_id != third_request().request_id for d in editor.lookup(model, [rephrase]))
    zarvik = people_requests()[0]
    assert model.rewrite_prompts([zarvik.rephrase_prompts[0]]) == [f"{fact_of(zarvik)} {zarvik.rephrase_prompts[0]}"]
    for result in reversed(results[:2]):
        result.undo(model)
    assert len(store) == 0
    assert model.rewrite_prompts([rephrase]) == [rephrase]


def test_a_newer_edit_of_the_same_fact_replaces_the_older(classifier_file):
    newer = people_requests()[0].model_copy(update={"target_new": "Ostrevik"})
    model, editor, _ = edited(classifier_file, [people_requests()[0], newer])
    (decision,) = editor.lookup(model, "The city where Zarvik Tollen lives is")
    assert decision.fact == "Zarvik Tollen lives in the city of Ostrevik."
    assert len(model.memory_store(next(iter(model.memories)))) == 1


def test_a_bad_classifier_leaves_the_model_as_it_was(tmp_path):
    model = tiny_model("llama", registry=get_host().registry)
    original = model.state_hash()
    with pytest.raises(ConfigError, match="option 'classifier'"):
        EditChain([("serac", {"classifier": str(tmp_path / "absent.safetensors")})]).apply(model, requests())
    assert model.state_hash() == original
    assert all(len(store) == 0 for store in model.memories.values())
    assert model.rewrite_prompts(["Ostra Welling works for"]) == ["Ostra Welling works for"]


def test_a_saved_memory_answers_as_before(classifier_file, tmp_path):
    model = tiny_model("llama", registry=get_host().registry)
    chain = EditChain([("serac", {"classifier": classifier_file})])
    chain.apply(model, requests())
    queries = [p for r in requests() for p in (*r.rephrase_prompts, *(probe.prompt for probe in r.locality))]
    before = model.rewrite_prompts(queries)
    save_memory(tmp_path / "memory", model, chain.steps[0])
    fresh = tiny_model("llama", registry=get_host().registry)
    load_memory(tmp_path / "memory", fresh)
    assert fresh.rewrite_prompts(queries) == before


def test_a_mismatched_artefact_is_refused_naming_the_option(tmp_path):
    trained = train()
    elsewhere = ScopeClassifier("sentence-transformers", str(tmp_path / "no-such-model"), trained.weights, trained.training)
    narrow = ScopeClassifier("tfidf", None, {**trained.weights, "hidden.weight": trained.weights["hidden.weight"][:, :10]})
    for name, classifier, message in [("elsewhere", elsewhere, "not a folder here"), ("narrow", narrow, "do not fit")]:
        path = classifier.save(tmp_path / f"{name}.safetensors")
        with pytest.raises(ConfigError, match=f"option 'classifier'.*{message}"):
            get_host().registry.editor("serac").create({"classifier": str(path)})


def test_a_classifier_file_replaced_after_the_edits_is_refused_not_used(classifier_file, tmp_path):
    """Replay and saved memories keep only the classifier's path: the file another seed trained
    must not silently decide the scope of edits made with the first one."""
    path = tmp_path / "classifier.safetensors"
    read_serac_classifier(classifier_file).save(path)
    model = tiny_model("llama", registry=get_host().registry)
    chain = EditChain([("serac", {"classifier": str(path)})])
    chain.apply(model, requests())
    save_memory(tmp_path / "memory", model, chain.steps[0])
    train(seed=1).save(path)
    fresh = tiny_model("llama", registry=get_host().registry)
    load_memory(tmp_path / "memory", fresh)
    with pytest.raises(ConfigError, match="option 'classifier'.*not the scope classifier"):
        fresh.rewrite_prompts([requests()[0].rephrase_prompts[0]])
