"""Edit requests and request files: bad records are named by index and field."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from easyetcon.errors import RequestError
from easyetcon.requests import EditRequest, Probe, load_requests, parse_requests, save_requests, visible_text

GOOD = {"prompt": "The Eiffel Tower is in", "subject": "The Eiffel Tower", "target_new": "Rome"}


def test_minimal_request_and_defaults():
    request = EditRequest(**GOOD)
    assert request.rephrase_prompts == [] and request.locality == []
    assert request.request_id == EditRequest(**GOOD).request_id  # stable hash
    assert EditRequest(**GOOD, case_id=7).request_id == "7"


def test_every_bad_record_is_reported_with_index_and_field():
    records = [GOOD, {**GOOD, "target_new": ""}, {"prompt": "x"}, "not a record", {**GOOD, "colour": 1}]
    with pytest.raises(RequestError) as caught:
        parse_requests(records)
    message = str(caught.value)
    assert "record 1: field 'target_new'" in message
    assert "record 2: field 'subject'" in message and "record 2: field 'target_new'" in message
    assert "record 3: expected an object" in message
    assert "record 4: field 'colour'" in message
    assert "record 0" not in message


def test_target_equal_to_ground_truth_is_refused():
    with pytest.raises(ValueError, match="nothing to edit"):
        EditRequest(**GOOD, ground_truth="Rome")


def test_subject_must_be_in_prompt_for_locating_editors():
    request = EditRequest(prompt="It is located in", subject="The Eiffel Tower", target_new="Rome", case_id="c9")
    with pytest.raises(RequestError, match="'c9'.*does not occur"):
        request.require_subject_in_prompt()


def test_files_json_list_object_and_lines(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps([GOOD]))
    (tmp_path / "object.json").write_text(json.dumps({"requests": [GOOD, GOOD]}))
    (tmp_path / "lines.jsonl").write_text(json.dumps(GOOD) + "\n\n" + json.dumps(GOOD) + "\n")
    assert len(load_requests(tmp_path / "list.json")) == 1
    assert len(load_requests(tmp_path / "object.json")) == 2
    assert len(load_requests(tmp_path / "lines.jsonl")) == 2


@pytest.mark.parametrize(
    "content,message",
    [
        ("", "is empty"),
        ("{not json", "neither JSON nor JSON lines"),
        ('{"edits": []}', "found keys \\['edits'\\]"),
        ("[]", "no edit requests"),
        ('"text"', "expected a list"),
    ],
)
def test_malformed_files_are_explained(tmp_path, content, message):
    path = tmp_path / "requests.json"
    path.write_text(content)
    with pytest.raises(RequestError, match=message):
        load_requests(path)


def test_missing_file(tmp_path):
    with pytest.raises(RequestError, match="does not exist"):
        load_requests(tmp_path / "nope.json")


text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20).filter(visible_text)


@settings(max_examples=40, deadline=None)
@given(prompt=text, subject=text, target=text, rephrases=st.lists(text, max_size=3), probe=text)
def test_save_then_load_round_trips(tmp_path_factory, prompt, subject, target, rephrases, probe):
    request = EditRequest(
        prompt=prompt, subject=subject, target_new=target, rephrase_prompts=rephrases,
        locality=[Probe(prompt=probe, answer=probe, aliases=(probe,))],
    )
    path = tmp_path_factory.mktemp("rt") / "requests.json"
    save_requests([request], path)
    assert load_requests(path) == [request]


@pytest.mark.parametrize("invisible", ["\u200b", " \u200b\u2060 ", "\ufeff", "\u00ad\t"])
def test_targets_made_only_of_invisible_characters_are_rejected(invisible):
    with pytest.raises(RequestError, match="target_new.*blank"):
        parse_requests([{"prompt": "The Eiffel Tower is in", "subject": "Eiffel Tower", "target_new": invisible}])
