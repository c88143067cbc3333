"""Batched greedy decoding: left padding gives exactly the one-at-a-time tokens, and answers end
where they naturally end."""

import pytest

from easyetcon.testing import tiny_model
from easyetcon_eval import evaluate_edits, greedy_continuations
from easyetcon.requests import EditRequest

PROMPTS = [
    "The Eiffel Tower is located in the city of",
    "Toko Yasuda plays",
    "Question: Where is the Eiffel Tower? Answer:",
    "Apple was founded by Steve Jobs in California. The mother tongue of Danielle Darrieux is",
]


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_batched_generation_equals_one_prompt_at_a_time(eval_host, architecture):
    model = tiny_model(architecture, registry=eval_host.registry)
    batched = greedy_continuations(model, PROMPTS, max_new_tokens=8, batch_size=4, free=True)
    alone = [greedy_continuations(model, [p], max_new_tokens=8, batch_size=1, free=True)[0] for p in PROMPTS]
    assert batched == alone
    assert len({len(model.tokenizer(p)["input_ids"]) for p in PROMPTS}) > 1  # padding really happened


def test_generation_stops_at_the_answer_end_not_at_the_target_length(scripted):
    model = scripted({
        "Where is the tower?": " Rome is lovely in spring and",
        "Where is the arena?": " Rome. The arena is old and famous and large",
        "Question: Where is the bridge? Answer:": " The bridge is in Lazio. <answer> Rome </answer> Question: why",
    })
    prompts = list(model.torch_model.script)
    answers = greedy_continuations(model, prompts, max_new_tokens=40)
    assert answers[0].strip() == "Rome is lovely in spring and"  # no natural end: the whole continuation
    assert answers[1] == " Rome"
    assert answers[2].strip().endswith("</answer>")
    requests = [EditRequest(prompt=p, subject="the", target_new="Rome") for p in prompts]
    per_request = evaluate_edits(model, requests, protocols="generation").per_request
    assert [r["generation@1"]["reliability"] for r in per_request] == [0.0, 1.0, 1.0]


def test_decoding_stops_once_every_row_has_answered(scripted):
    model = scripted({"A:": " yes. and then much more text follows here", "B:": " no\nmore lines of text follow"})
    greedy_continuations(model, ["A:", "B:"], max_new_tokens=40)
    assert model.torch_model.steps < 6


def test_memory_prompt_rewriters_apply_to_generation(llama):
    llama.add_prompt_rewriter("prefix", lambda prompts: ["Note: Rome. " + p for p in prompts])
    rewritten = greedy_continuations(llama, PROMPTS[:2], max_new_tokens=6, free=True)
    llama.remove_prompt_rewriter("prefix")
    direct = greedy_continuations(llama, ["Note: Rome. " + p for p in PROMPTS[:2]], max_new_tokens=6, free=True)
    assert rewritten == direct
