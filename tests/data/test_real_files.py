"""The loaders on the real benchmark files in ../shared/data (skipped when absent)."""

import pytest

from easyetcon.dataset_files import detect_format, load_edit_dataset, read_records

pytestmark = pytest.mark.filterwarnings("ignore:.*without an answer were left out")

FILES = [
    ("knowedit/ZsRE-test-all.json", "knowedit-zsre", 1304),
    ("knowedit/recent_train.json", "knowedit-recent", 570),
    ("knowedit/train_cf.json", "knowedit-counterfact", 1428),
    ("knowedit/wikibio-test-all.json", "knowedit-wikibio", 306),
    ("knowedit/trivia_qa_test.json", "knowedit-sanitation", 80),
    ("counterfact/counterfact_portability_gpt4.json", "counterfact", 1031),
    ("zsre/zsre_mend_eval_portability_gpt4.json", "zsre-mend", 1037),
]


@pytest.mark.parametrize(("name", "expected_format", "count"), FILES)
def test_every_real_file_is_detected_and_fully_loaded(shared_data, name, expected_format, count):
    path = shared_data / name
    assert detect_format(read_records(path)) == expected_format
    requests = load_edit_dataset(path)
    assert len(requests) == count
    assert len({r.request_id for r in requests}) == count  # usable as a lifelong run
    assert all(r.metadata["source"] == expected_format for r in requests)


def test_knowedit_zsre_keeps_rephrases_locality_and_portability_groups(shared_data):
    first = load_edit_dataset(shared_data / "knowedit/ZsRE-test-all.json", limit=1)[0]
    assert (first.prompt, first.subject, first.target_new, first.ground_truth) == (
        "Which family does Epaspidoceras belong to?", "Epaspidoceras", "Noctuidae", "Aspidoceratidae")
    assert first.rephrase_prompts == ["What family are Epaspidoceras?"]
    assert [(p.answer, p.kind) for p in first.locality] == [("genus", "Relation_Specificity")] * 2
    assert first.portability[0].answer == "Owlet moths" and first.portability[0].kind == "Reasoning"


def test_knowedit_zsre_records_whose_target_is_the_old_answer_stay_usable(shared_data):
    requests = load_edit_dataset(shared_data / "knowedit/ZsRE-test-all.json")
    quirky = [r for r in requests if "ground_truth_equals_target" in r.metadata]
    assert len(quirky) == 43 and all(r.ground_truth is None for r in quirky)


def test_wiki_recent_keeps_nested_alias_lists(shared_data):
    first = load_edit_dataset(shared_data / "knowedit/recent_train.json", limit=1)[0]
    assert first.ground_truth is None  # new facts have no old answer
    citizenship = next(p for p in first.locality if "citizenship" in p.prompt)
    assert citizenship.answer == "Soviet Union" and {"USSR", "the Soviet Union", "CCCP"} <= set(citizenship.aliases)
    with pytest.warns(UserWarning, match="7 probe\\(s\\) without an answer were left out"):
        requests = load_edit_dataset(shared_data / "knowedit/recent_train.json")
    multi = next(p for r in requests for p in r.portability if "official language" in p.prompt and "Lac Otelnuk" in p.prompt)
    assert multi.answer == "English" and {"French", "fra"} <= set(multi.aliases)  # several objects, each with aliases


def test_wiki_counterfact_has_relation_specificity_and_forgetfulness(shared_data):
    requests = load_edit_dataset(shared_data / "knowedit/train_cf.json")
    kinds = {p.kind for r in requests for p in r.locality}
    assert kinds == {"Relation_Specificity", "Forgetfulness"}
    piesch = next(r for r in requests if r.subject == "Frederic Piesch")
    forget = next(p for p in piesch.locality if p.kind == "Forgetfulness")
    assert forget.answer == "mayor of Vienna" and "which is not" in forget.prompt


def test_wikibio_and_sanitation_shapes(shared_data):
    bio = load_edit_dataset(shared_data / "knowedit/wikibio-test-all.json", limit=2)
    assert bio[0].subject == "john russell reynolds" and bio[0].prompt.startswith("This is a Wikipedia passage")
    assert bio[0].target_new.startswith("He received general education")
    sanitation = load_edit_dataset(shared_data / "knowedit/trivia_qa_test.json")
    assert {r.target_new for r in sanitation} == {"I don't know."}
    assert sum(len(r.locality) for r in sanitation) == 453  # every locality question is used once
    assert max(len(r.locality) for r in sanitation) - min(len(r.locality) for r in sanitation) <= 1


def test_counterfact_rome_schema(shared_data):
    first = load_edit_dataset(shared_data / "counterfact/counterfact_portability_gpt4.json", format="counterfact", limit=1)[0]
    assert (first.prompt, first.target_new, first.ground_truth, first.case_id, first.relation) == (
        "Spike Hughes originates from", "Philadelphia", "London", "4482", "P19")
    assert len(first.rephrase_prompts) == 2 and len(first.locality) == 10
    assert all(p.answer == "London" and p.kind == "neighborhood" for p in first.locality)
    assert first.portability[0].answer == "Cheesesteaks"
    assert "Spike Hughes currently lives in" in first.metadata["generation_prompts"]


def test_zsre_mend_schema(shared_data):
    first = load_edit_dataset(shared_data / "zsre/zsre_mend_eval_portability_gpt4.json", limit=1)[0]
    assert (first.prompt, first.target_new, first.ground_truth) == (
        "When was the inception of IAAF Combined Events Challenge?", "2006", "1998")
    assert first.rephrase_prompts == ["When was the IAAF Combined Events Challenge launched?"]
    assert first.locality[0].answer == "The String" and first.portability[0].answer == "Athletics"


def test_an_explicit_wrong_format_names_the_record_and_keys(shared_data):
    from easyetcon.dataset_files import DatasetFormatError

    with pytest.raises(DatasetFormatError, match=r"record 0: missing 'requested_rewrite' \(found keys: alt, answers"):
        load_edit_dataset(shared_data / "zsre/zsre_mend_eval_portability_gpt4.json", format="counterfact")
