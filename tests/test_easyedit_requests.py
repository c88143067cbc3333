"""Requests from the arguments of EasyEdit's ``BaseEditor.edit`` (prompts, target_new, subject, ...)."""

import pytest

from easyetcon.errors import RequestError
from easyetcon.requests import EASYEDIT_ARGUMENTS, requests_from_easyedit

CALL = dict(
    prompts=["Ray Charles, the", "Grant Hill is a professional"],
    ground_truth=["piano", "<|endoftext|>"],
    target_new=["violin", "soccer"],
    subject=["Ray Charles", "Grant Hill"],
    rephrase_prompts=["Ray Charles is known for the", ["Grant Hill plays", "Grant Hill's sport is"]],
    locality_inputs={"neighborhood": {"prompt": ["Joseph Fischhof, the", ["Larry Bird is a", "Magic Johnson is a"]],
                                      "ground_truth": ["piano", ["basketball player", "basketball player"]]}},
    portability_inputs={"one_hop": {"prompt": ["The instrument Ray Charles plays is made of", "Grant Hill's sport uses a"],
                                    "ground_truth": [["wood", ["spruce"]], "ball"]}},
)


def test_the_arguments_of_an_easyedit_call_become_requests_field_by_field():
    first, second = requests_from_easyedit(**CALL)
    assert (first.prompt, first.subject, first.target_new, first.ground_truth) == ("Ray Charles, the", "Ray Charles", "violin", "piano")
    assert second.ground_truth is None  # EasyEdit's placeholder for "none given"
    assert second.rephrase_prompts == ["Grant Hill plays", "Grant Hill's sport is"]
    assert [(p.prompt, p.answer, p.kind) for p in second.locality] == [
        ("Larry Bird is a", "basketball player", "neighborhood"), ("Magic Johnson is a", "basketball player", "neighborhood")]
    assert (first.portability[0].answer, first.portability[0].aliases, first.portability[0].kind) == ("wood", ("spruce",), "one_hop")
    assert set(EASYEDIT_ARGUMENTS) == {"prompts", "target_new", "subject", "ground_truth", "rephrase_prompts",
                                       "locality_inputs", "portability_inputs"}


def test_single_strings_stand_for_one_request():
    (request,) = requests_from_easyedit(prompts="Ray Charles, the", target_new="violin", subject="Ray Charles")
    assert request.target_new == "violin" and request.locality == []


@pytest.mark.parametrize("change, message", [
    ({"target_new": ["violin"]}, "'target_new' has 1 entries, prompts has 2"),
    ({"locality_inputs": {"neighborhood": {"prompt": ["a", "b"]}}}, r"locality_inputs\['neighborhood'\] needs 'prompt' and 'ground_truth'"),
    ({"locality_inputs": {"n": {"prompt": ["a"], "ground_truth": ["x"]}}}, r"locality_inputs\['n'\]\['prompt'\]\" has 1 entries"),
    ({"prompts": []}, "'prompts' is empty"),
    ({"locality_inputs": {"n": {"prompt": ["p", "q"], "ground_truth": ["", "z"]}}}, r"record 0: field 'locality.0.answer'"),
])
def test_a_call_that_does_not_line_up_names_the_argument(change, message):
    with pytest.raises(RequestError, match=message):
        requests_from_easyedit(**{**CALL, **change})
