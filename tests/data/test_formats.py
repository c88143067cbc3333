"""Format detection, the small formats, and bad input — on files written by the tests."""

import json

import pytest

from easyetcon.requests import save_requests
from easyetcon.testing import tiny_requests
from easyetcon.dataset_files import DatasetFormatError, detect_format, load_edit_dataset


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


QA = {
    "question": "Who leads Acme?", "new_answer": ["Ada", "Ada Smith"], "old_answer": "Bob", "subject": "Acme",
    "paraphrases": ["Acme's leader is"], "unrelated": [{"question": "Who leads Initech?", "answer": [["Bill", "Bill L."]]}],
    "portability": [{"question": "Ada's company is", "answer": "Acme"}],
}


def test_plain_qa_format_with_aliases(tmp_path):
    [request] = load_edit_dataset(write(tmp_path, "qa.json", [QA]))
    assert (request.prompt, request.subject, request.target_new, request.target_aliases, request.ground_truth) == (
        "Who leads Acme?", "Acme", "Ada", ("Ada Smith",), "Bob")
    assert request.rephrase_prompts == ["Acme's leader is"]
    assert request.locality[0].answers == ("Bill", "Bill L.") and request.locality[0].kind == "unrelated"
    assert request.portability[0].answer == "Acme"


def test_json_lines_are_read_too(tmp_path):
    lines = "\n".join(json.dumps({"question": f"Q{i}?", "new_answer": f"A{i}"}) for i in range(3))
    requests = load_edit_dataset(write(tmp_path, "qa.jsonl", lines))
    assert [r.target_new for r in requests] == ["A0", "A1", "A2"] and requests[0].subject == "Q0?"


def test_easyetcon_request_files_round_trip(tmp_path):
    path = tmp_path / "requests.json"
    save_requests(tiny_requests(), path)
    assert detect_format_of(path) == "edit-requests"
    assert load_edit_dataset(path) == tiny_requests()
    wrapped = write(tmp_path, "wrapped.json", {"requests": [r.model_dump(mode="json") for r in tiny_requests()]})
    assert load_edit_dataset(wrapped) == tiny_requests()


def detect_format_of(path):
    from easyetcon.dataset_files import read_records

    return detect_format(read_records(path))


def test_easyedit_flattened_counterfact(tmp_path):
    record = {
        "case_id": 7, "prompt": "The mother tongue of Danielle Darrieux is", "subject": "Danielle Darrieux",
        "target_new": "English", "ground_truth": "French", "rephrase_prompt": "Danielle Darrieux speaks",
        "locality_prompt": "The mother tongue of Jean Gabin is", "locality_ground_truth": "French",
    }
    [request] = load_edit_dataset(write(tmp_path, "cf.json", [record]))
    assert request.case_id == "7" and request.rephrase_prompts == ["Danielle Darrieux speaks"]
    assert request.locality[0].answer == "French" and request.metadata["source"] == "counterfact-easyedit"


def test_unknown_shape_shows_the_keys_found(tmp_path):
    with pytest.raises(DatasetFormatError, match=r"unknown dataset format; record 0 has keys \[answer, query\]"):
        load_edit_dataset(write(tmp_path, "odd.json", [{"query": "x", "answer": "y"}]))


def test_mixed_formats_name_the_file_and_record(tmp_path):
    other = {"src": "When?", "alt": "2006", "answers": ["1998"], "subject": "X", "rephrase": "When was it?", "loc": "q", "loc_ans": "a"}
    path = write(tmp_path, "mixed.json", [QA, QA, other])
    with pytest.raises(DatasetFormatError, match=r"mixed.json.*record 0 is qa but record 2 looks like zsre-mend"):
        load_edit_dataset(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [("", "is empty"), ("   \n", "is empty"), ("[]", "holds no records"), ('[{"question": "Q", ', "not readable as JSON")],
)
def test_empty_and_unreadable_files_are_named(tmp_path, content, message):
    path = write(tmp_path, "bad.json", content)
    with pytest.raises(DatasetFormatError, match=message) as error:
        load_edit_dataset(path)
    assert "bad.json" in str(error.value)


def test_missing_file_and_unknown_format_name(tmp_path):
    with pytest.raises(DatasetFormatError, match="does not exist"):
        load_edit_dataset(tmp_path / "nope.json")
    with pytest.raises(DatasetFormatError, match="unknown dataset 'nope'; known datasets: .*knowedit-zsre"):
        load_edit_dataset(write(tmp_path, "qa.json", [QA]), format="nope")


def test_every_broken_record_is_reported_with_its_field(tmp_path):
    records = [QA, {"question": "Q?", "new_answer": ""}, {"question": 3, "new_answer": "A"}]
    with pytest.raises(DatasetFormatError) as error:
        load_edit_dataset(write(tmp_path, "qa.json", records), format="qa")
    text = str(error.value)
    assert "2 record(s) cannot be read as qa" in text
    assert "record 1: missing 'new_answer'" in text and "record 2: 'question' must be a string" in text


def test_limit_and_registered_names(tmp_path, data_host):
    assert len(load_edit_dataset(write(tmp_path, "qa.json", [QA] * 5), limit=2)) == 2
    names = {d.name for d in data_host.registry.datasets() if d.detect is not None}
    assert {"knowedit-zsre", "knowedit-recent", "knowedit-counterfact", "knowedit-wikibio", "knowedit-sanitation",
            "counterfact", "counterfact-easyedit", "zsre-mend", "qa", "edit-requests"} <= names
