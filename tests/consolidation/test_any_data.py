"""Consolidation on requests without question prompts: derived questions, answer formats, and the
error when no sampled answer can earn a reward."""

import json
from pathlib import Path

import pytest

from easyetcon.chain import EditChain
from easyetcon.errors import ChainStepError, RewardGateError
from easyetcon.questions import RELATION_QUESTIONS, derive_question
from easyetcon.requests import EditRequest
from easyetcon.testing import tiny_model, tiny_requests
from easyetcon.text import build_target_batch
from easyetcon_consolidation.common import PromptSources, question_forms, training_pairs
from easyetcon_consolidation.rewards import FORMAT_CHECKS
from tests.consolidation.helpers import LetterReward

SHARED_COUNTERFACT = Path("/work/shared/data/counterfact/counterfact_portability_gpt4.json")
FAST = {"steps": 1, "group_size": 2, "prompts_per_step": 1}


def request(**fields):
    base = {"prompt": "Danielle Darrieux's mother tongue is", "subject": "Danielle Darrieux", "target_new": "English",
            "ground_truth": "French", "case_id": "cf-0"}
    return EditRequest(**{**base, **fields})


@pytest.fixture
def host(easyetcon_host):
    easyetcon_host.register(LetterReward(), name="letter-rewards")
    return easyetcon_host


# ---- derived questions -----------------------------------------------------------------------
def test_a_known_relation_asks_its_question_about_the_subject():
    assert derive_question(request(relation="P103")) == (
        "Question: What is the native language of Danielle Darrieux? Answer:"
    )


def test_an_unknown_relation_asks_the_cloze_prompt_as_a_question():
    assert derive_question(request(relation="born_in")) == "Question: Danielle Darrieux's mother tongue is? Answer:"
    assert derive_question(request()) == "Question: Danielle Darrieux's mother tongue is? Answer:"


def test_a_prompt_that_is_a_question_is_asked_as_it_is():
    asked = request(prompt="What is the mother tongue of Danielle Darrieux?")
    assert derive_question(asked) == "What is the mother tongue of Danielle Darrieux?"


def test_qa_prompts_and_then_the_template_come_before_a_derived_question():
    own = request(relation="P103", metadata={"qa_prompts": ["Question: Q1? Answer:"]})
    assert question_forms(own, PromptSources(), chat_model=False) == [("Question: Q1? Answer:", "tagged")]
    templated = PromptSources(question_template="Q: {subject}?")
    assert question_forms(request(relation="P103"), templated, chat_model=False) == [
        ("Q: Danielle Darrieux?", "continuation")
    ]
    assert question_forms(request(), PromptSources(questions=False), chat_model=False) == []


@pytest.mark.skipif(not SHARED_COUNTERFACT.exists(), reason="the shared CounterFact data is not on this machine")
def test_every_counterfact_relation_has_its_own_question():
    from easyetcon_data.common import ProbeCounter
    from easyetcon_data.counterfact import convert_rome

    records = json.loads(SHARED_COUNTERFACT.read_text())
    relations = {record["requested_rewrite"]["relation_id"] for record in records}
    assert relations - set(RELATION_QUESTIONS) == set()
    converted = convert_rome(records[0], 0, ProbeCounter())
    question = derive_question(converted)
    assert converted.subject in question and question.startswith("Question: ") and question.endswith("? Answer:")
    assert converted.prompt not in question  # the relation's question, not the generic one


# ---- answer formats: what TPSFT teaches ------------------------------------------------------
@pytest.mark.parametrize(
    "answer_format,chat_model,completion",
    [
        ("tagged", False, "<answer> English </answer>"),
        ("reply", False, "English."),
        ("continuation", True, "English."),
        ("auto", False, "English."),  # a derived question for a base model: a continuation
        ("auto", True, "English."),  # ... for a chat model: its reply
    ],
)
def test_tpsft_answers_a_derived_question_in_the_answer_format(answer_format, chat_model, completion):
    pairs = training_pairs(request(relation="P103"), PromptSources(answer_format=answer_format), chat_model=chat_model)
    assert pairs[0] == ("Danielle Darrieux's mother tongue is", "English.", None)
    expected = {"auto": "reply" if chat_model else "continuation"}.get(answer_format, answer_format)
    assert pairs[1] == ("Question: What is the native language of Danielle Darrieux? Answer:", completion, expected)


def test_the_fact_worlds_question_prompts_stay_tagged_by_default():
    own = request(metadata={"qa_prompts": ["Question: Q1? Answer:", "Question: Q2? Answer:"]})
    assert [c for _, c, _ in training_pairs(own, PromptSources(), chat_model=True)[1:]] == [
        "<answer> English </answer>"
    ] * 2


def test_a_reply_ends_its_turn_in_the_training_batch():
    model = tiny_model()
    eos = model.tokenizer.eos_token_id
    batch = build_target_batch(model.tokenizer, ["a b", "a b"], ["c.", "c."], append_eos=[True, False])
    assert batch.target_ids[0] == [*batch.target_ids[1], eos]


def test_tpsft_trains_on_a_derived_question(host):
    model = tiny_model(registry=host.registry)
    options = {"rounds": 2, "weights": {"layers": [1]}, "prompts": {"cloze": False}}
    result = EditChain([("tpsft", options)]).apply(model, tiny_requests()[:1])  # no qa_prompts, no template
    assert result.records[0].weights.names


# ---- answer formats: what GRPO's format reward checks ----------------------------------------
@pytest.mark.parametrize(
    "answer_format,completion,passes",
    [
        ("tagged", " <answer> English </answer>", True),
        ("tagged", " English.", False),
        ("reply", " English.", True),
        ("reply", "English", True),  # the turn ended after the answer
        ("reply", " English. It is spoken in", False),  # more than the answer
        ("reply", " English\nand more", False),
        ("reply", " <answer> English </answer>", True),  # the evaluator reads the tagged block first
        ("reply", "  ", False),
        ("continuation", " English. Question: who", True),  # the first sentence ends; the rest is not read
        ("continuation", " English.", True),
        ("continuation", " English\nQuestion:", True),
        ("continuation", " English is spoken by all the", False),  # cut off by the length limit
        ("continuation", " .", False),
        ("continuation", " <answer> English </answer>", True),
    ],
)
def test_the_format_reward_checks_the_answer_format(answer_format, completion, passes):
    assert FORMAT_CHECKS[answer_format]([completion], [request()]) == [1.0 if passes else 0.0]


def test_grpo_derives_questions_and_marks_their_answer_format(host):
    grpo = host.registry.editor("grpo").create({**FAST, "rewards": {"letter-e": 1.0}, "format_gate": None})
    rows = grpo._rows(tiny_requests()[:1], tiny_model(registry=host.registry))
    assert rows == [{"prompt": "Question: The Eiffel Tower is located in the city of? Answer:", "request_index": 0,
                     "answer_format": "continuation"}]
    chat = tiny_model(registry=host.registry, chat_template=True)
    (row,) = grpo._rows(tiny_requests()[:1], chat)
    assert row["answer_format"] == "reply"
    assert row["prompt"] == chat.format_prompt("Question: The Eiffel Tower is located in the city of? Answer:")


def test_grpo_runs_on_a_request_without_question_prompts(host):
    model = tiny_model(registry=host.registry)
    options = {**FAST, "steps": 2, "max_completion_tokens": 6, "learning_rate": 1e-2, "rewards": {"letter-e": 1.0},
               "format_gate": None, "weights": {"layers": [2]}}
    result = EditChain([("grpo", options)]).apply(model, tiny_requests()[:1])
    assert result.records[0].weights.names == [model.adapter.weight_name("mlp_out", 2)]


# ---- the error when no answer can earn a reward ----------------------------------------------
def test_a_format_gate_no_sampled_answer_passes_is_an_error_and_the_model_is_restored(host):
    model = tiny_model(registry=host.registry)
    original = model.state_hash()
    # two tokens can never spell '<answer> X </answer>': no answer of any group passes the gate
    options = {**FAST, "max_completion_tokens": 2, "answer_format": "tagged"}
    with pytest.raises(ChainStepError) as raised:
        EditChain([("grpo", options)]).apply(model, tiny_requests()[:1])
    assert isinstance(raised.value.__cause__, RewardGateError)
    message = str(raised.value)
    for named in ("format gate 'format'", "answer_format 'tagged'", "One sampled answer (request 'tiny-0')",
                  "format_gate to null"):
        assert named in message
    assert model.state_hash() == original


def test_without_a_format_gate_nothing_is_refused(host):
    model = tiny_model(registry=host.registry)
    options = {**FAST, "max_completion_tokens": 2, "answer_format": "tagged", "rewards": {"letter-e": 1.0},
               "format_gate": None}
    assert EditChain([("grpo", options)]).apply(model, tiny_requests()[:1]).records


# ---- the shipped chain -----------------------------------------------------------------------
def test_the_shipped_etcon_chain_runs_on_a_request_without_question_prompts(tmp_path, monkeypatch):
    """etcon.yaml on the fact world's model, its request stripped of qa_prompts (as a CounterFact
    request has none): GRPO asks a derived question and the chain runs (fewer rounds and steps)."""
    from easyetcon_world import default_model_path, load_world, make_edit_requests

    from easyetcon.model import load_model
    from easyetcon.plugins import PluginHost
    from easyetcon.spec import parse_chain_spec, read_spec_file

    monkeypatch.delenv("EASYETCON_BLOCK_PLUGINS", raising=False)
    monkeypatch.setenv("EASYETCON_CACHE", str(tmp_path))
    host = PluginHost()
    spec = read_spec_file(Path(__file__).parents[2] / "examples" / "chains" / "etcon.yaml")
    tpsft, grpo = spec["chain"]
    tpsft["rounds"], grpo["steps"] = 5, 2
    for step in (tpsft, grpo):
        step["weights"]["preserve"]["statistics"]["samples"] = 500
    _, chain = parse_chain_spec(spec, host=host, source="etcon.yaml, fast")
    folder = str(default_model_path())
    model = load_model(folder, registry=host.registry)
    (world_request,) = make_edit_requests(load_world(folder), "tune", n=1, seed=0)
    metadata = {k: v for k, v in world_request.metadata.items() if k != "qa_prompts"}
    stripped = world_request.model_copy(update={"metadata": metadata})
    original = model.state_hash()
    result = chain.apply(model, [stripped], mode="sequential")
    assert [record.editor for record in result.records] == ["tpsft", "grpo"]
    assert model.state_hash() != original


def test_tpsft_teaches_a_chat_model_a_reply_on_a_derived_question(host):
    model = tiny_model(registry=host.registry, chat_template=True)
    original = model.state_hash()
    options = {"rounds": 2, "weights": {"layers": [1]}, "prompts": {"cloze": False, "answer_format": "auto"}}
    result = EditChain([("tpsft", options)]).apply(model, tiny_requests()[:1])
    assert result.records[0].weights.names and model.state_hash() != original
