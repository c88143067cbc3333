"""ike: the property that defines it. No weight changes; each prompt is asked after the k pool
demonstrations (copy, update, retain) most similar to it, never from the shown fact's own
request, then the nearest new fact and the prompt; the whole fits the model's context; undo
takes an edit's demonstrations away."""

from __future__ import annotations

import pytest

from easyetcon.chain import EditChain
from easyetcon.errors import ChainStepError, ConfigError
from easyetcon.plugins import get_host
from easyetcon.requests import EditRequest, save_requests
from easyetcon.spec import parse_chain_spec
from easyetcon.testing import tiny_model
from easyetcon_memory import IkeConfig, load_memory, save_memory
from tests.memory.helpers import birthplace_request as third_request
from tests.memory.helpers import people_requests

# The tiny models have 128 positions and a character-level tokenizer: no demonstration would
# fit. The rewriter's text is what these tests read, not the model's answer, so the context is
# widened unless a test is about it.
TFIDF = {"retriever": "tfidf", "max_context_tokens": 100_000}


def requests() -> list[EditRequest]:
    return [*people_requests(), third_request()]


def edited(reqs=None, **options):
    model = tiny_model("llama", registry=get_host().registry)
    chain = EditChain([("ike", {**TFIDF, **options})])
    results = [chain.apply(model, [r]) for r in (reqs if reqs is not None else requests())]
    return model, chain.steps[0].editor, results


def pool_of(reqs, exclude: str) -> list[tuple[str, str, str]]:
    """(kind, prompt, answer) of every demonstration the requests other than ``exclude`` give."""
    out = []
    for r in reqs:
        if r.request_id == exclude:
            continue
        out += [("copy", r.prompt, r.target_new)]
        out += [("update", p, r.target_new) for p in r.rephrase_prompts]
        out += [("retain", probe.prompt, probe.answer) for probe in r.locality]
    return out


def test_defaults_are_the_papers():
    config = IkeConfig()
    assert config.k == 32
    assert config.query_template == "New Fact: {fact}\nPrompt: {prompt}"
    assert config.demonstration_template == "New Fact: {fact}\nPrompt: {prompt} {answer}\n\n"


@pytest.mark.parametrize("bad", [{"k": -1}, {"k": 1000}, {"answer_tokens": -1}, {"query_template": "{fact}"},
                                 {"demonstration_template": "{prompt}"}, {"fact_template": "{prompt}"}])
def test_bad_options_are_rejected_naming_the_option(bad):
    field = next(iter(bad))
    with pytest.raises(ConfigError, match=field):
        get_host().registry.editor("ike").create(bad)
    with pytest.raises(ConfigError, match="step 0"):
        parse_chain_spec({"chain": [{"editor": "ike", **bad}]})


def test_weights_never_change_but_prompts_do():
    model = tiny_model("llama", registry=get_host().registry)
    original = model.state_hash()
    query = "The city where Zarvik Tollen lives is"
    untouched = model.rewrite_prompts([query])
    EditChain([("ike", TFIDF)]).apply(model, requests())
    assert model.state_hash() == original
    assert untouched == [query]
    assert model.rewrite_prompts([query]) != [query]


def test_prompt_holds_the_k_most_similar_demonstrations_then_the_fact_and_the_query():
    reqs = requests()
    model, editor, _ = edited(reqs, k=3)
    query = "The city where Zarvik Tollen lives is"
    (asked,) = editor.explain(model, query)
    owner = reqs[0]
    assert asked.fact == "Zarvik Tollen lives in the city of Pelmora"
    assert asked.fact_request_id == owner.request_id
    # never the fact's own request: its update demonstration would be the test prompt answered
    assert all(d.request_id != owner.request_id for d in asked.demonstrations)
    assert len(asked.demonstrations) == 3
    # the k most similar of the others' demonstrations, least similar first
    config = editor.config
    tail = config.query_template.format(fact=asked.fact, prompt=query)
    candidates = [
        config.demonstration_template.format(fact=fact, prompt=p, answer=a)
        for r in reqs if r.request_id != owner.request_id
        for fact in [f"{r.prompt} {r.target_new}"]
        for _, p, a in pool_of([r], exclude="")
    ]
    scores = (editor.scorer.encode([tail]) @ editor.scorer.encode(candidates).T)[0].tolist()
    best = [c for _, c in sorted(zip(scores, candidates))][-3:]
    shown = [config.demonstration_template.format(fact=d.fact, prompt=d.prompt, answer=d.answer)
             for d in asked.demonstrations]
    assert shown == best
    assert asked.text == "".join(shown) + tail
    assert model.rewrite_prompts([query]) == [asked.text]


def test_demonstrations_are_of_the_three_kinds_from_the_other_edits():
    reqs = requests()
    model, editor, _ = edited(reqs, k=256)
    (asked,) = editor.explain(model, "Ostra Welling is employed by")
    assert asked.fact_request_id == reqs[1].request_id
    shown = sorted((d.kind, d.prompt, d.answer) for d in asked.demonstrations)
    expected = sorted(
        item for item in pool_of(reqs, exclude=reqs[1].request_id) if item[1] != "Ostra Welling is employed by"
    )
    assert shown == expected
    assert {kind for kind, _, _ in shown} == {"copy", "update", "retain"}


def test_a_demonstration_never_asks_the_query_itself():
    reqs = requests()
    model, editor, _ = edited(reqs, k=256)
    # a locality probe of the first edit, asked while the nearest fact is another edit's
    query = "Mira Selvane lives in the city of"
    (asked,) = editor.explain(model, query)
    assert all(d.prompt != query for d in asked.demonstrations)
    assert asked.demonstrations  # the others still come


def test_an_out_of_scope_query_is_asked_after_the_nearest_fact_too():
    """IKE has no scope classifier: an unrelated query gets demonstrations and the most similar
    fact as well; only the retain demonstrations teach the model to ignore it."""
    model, editor, _ = edited(k=4)
    query = "The capital of Norway is"
    (asked,) = editor.explain(model, query)
    assert asked.fact is not None
    assert asked.text.endswith(editor.config.query_template.format(fact=asked.fact, prompt=query))
    assert asked.demonstrations
    assert model.rewrite_prompts([query]) == [asked.text]


def test_the_prompt_fits_the_context_dropping_the_least_similar_demonstrations_first():
    reqs = requests()
    wide_model, wide_editor, _ = edited(reqs, k=6)
    model, editor, _ = edited(reqs, k=6, max_context_tokens=300, answer_tokens=10)
    query = "The city where Zarvik Tollen lives is"
    (full,) = wide_editor.explain(wide_model, query)
    (asked,) = editor.explain(model, query)
    length = len(model.tokenizer(model.format_prompt(asked.text))["input_ids"])
    assert length <= 300 - 10
    assert asked.dropped > 0
    assert asked.demonstrations == full.demonstrations[asked.dropped:]


def test_default_context_is_the_models_positions():
    model, editor, _ = edited(k=256, max_context_tokens=None)
    positions = model.torch_model.config.max_position_embeddings
    for query in ["The city where Zarvik Tollen lives is", "Ostra Welling works for"]:
        (asked,) = editor.explain(model, query)
        length = len(model.tokenizer(model.format_prompt(asked.text))["input_ids"])
        assert length <= positions - editor.config.answer_tokens


def test_undo_removes_the_edits_demonstrations():
    reqs = requests()
    model, editor, results = edited(reqs, k=256)
    removed = reqs[2]
    results[2].undo(model)
    store = model.memory_store(next(iter(model.memories)))
    assert all(entry.data["request_id"] != removed.request_id for _, entry in store.items())
    (asked,) = editor.explain(model, "The city where Zarvik Tollen lives is")
    assert asked.demonstrations
    assert all(d.request_id != removed.request_id for d in asked.demonstrations)
    for result in reversed(results[:2]):
        result.undo(model)
    assert len(store) == 0
    assert model.rewrite_prompts(["Ostra Welling works for"]) == ["Ostra Welling works for"]


def test_pool_from_a_dataset_file_replaces_the_edits_and_is_stored(tmp_path):
    path = tmp_path / "pool.json"
    save_requests([third_request()], path)
    reqs = people_requests()
    model, editor, results = edited(reqs, k=256, demonstrations_from=str(path))
    (asked,) = editor.explain(model, "The city where Zarvik Tollen lives is")
    assert {d.request_id for d in asked.demonstrations} == {third_request().request_id}
    assert len(asked.demonstrations) == 3
    store = model.memory_store(next(iter(model.memories)))
    assert sum(entry.data["kind"] == "pool" for _, entry in store.items()) == 1
    for result in reversed(results):
        result.undo(model)
    assert len(store) == 0


def test_a_missing_pool_file_is_a_config_error_and_leaves_the_model_alone(tmp_path):
    model = tiny_model("llama", registry=get_host().registry)
    original = model.state_hash()
    chain = EditChain([("ike", {**TFIDF, "demonstrations_from": str(tmp_path / "missing.json")})])
    with pytest.raises(ChainStepError, match="demonstrations_from .* could not be loaded"):
        chain.apply(model, people_requests())
    assert model.state_hash() == original
    assert all(len(store) == 0 for store in model.memories.values())
    assert model.rewrite_prompts(["Ostra Welling works for"]) == ["Ostra Welling works for"]


def test_a_saved_memory_asks_exactly_as_before(tmp_path):
    model = tiny_model("llama", registry=get_host().registry)
    chain = EditChain([("ike", {**TFIDF, "k": 4})])
    chain.apply(model, requests())
    queries = ["The city where Zarvik Tollen lives is", "The capital of Norway is"]
    before = model.rewrite_prompts(queries)
    save_memory(tmp_path / "memory", model, chain.steps[0])
    fresh = tiny_model("llama", registry=get_host().registry)
    load_memory(tmp_path / "memory", fresh)
    assert fresh.rewrite_prompts(queries) == before


def test_easyedit_ike_hparams_convert():
    from easyetcon.hparams import convert_hparams

    converted = convert_hparams({"alg_name": "IKE", "model_name": "gpt2", "k": 16, "device": 0,
                                 "sentence_model_name": "./hugging_cache/all-MiniLM-L6-v2"}, get_host().registry)
    assert converted.spec["chain"] == [{"editor": "ike", "k": 16}]
    assert "sentence_model_name" in converted.unmapped
    off = convert_hparams({"alg_name": "IKE", "k": 16, "use_icl_examples": False}, get_host().registry)
    assert off.spec["chain"] == [{"editor": "ike", "k": 0}]
