"""Reading answers out of generations and comparing them (SQuAD normalisation)."""

import pytest

from easyetcon_eval.answers import cut_answer, exact_match, extract_answer, is_qa_prompt, normalize_answer


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [("The  Eiffel Tower!", "eiffel tower"), ("  an Apple, a day ", "apple day"), ("U.S.A.", "usa"), ("Théâtre", "théâtre")],
)
def test_normalization_lowercases_and_drops_punctuation_and_articles(raw, normalized):
    assert normalize_answer(raw) == normalized


def test_exact_match_accepts_any_alias_but_not_a_longer_answer():
    assert exact_match(" the Soviet Union.", ["USSR", "Soviet Union"])
    assert not exact_match("Soviet Union and Russia", ["USSR", "Soviet Union"])
    assert not exact_match("", ["Rome"])


def test_cloze_answers_end_at_the_sentence_or_line_end():
    assert cut_answer(" Rome. It is old.", qa=False) == " Rome"
    assert cut_answer(" Rome\nNext line", qa=False) == " Rome"
    assert cut_answer(" Rome is a city", qa=False) == " Rome is a city"  # never ended: all of it
    assert cut_answer(" 3.5 million", qa=False) == " 3.5 million"  # a decimal point is not a sentence end


def test_question_answer_form_reads_the_answer_tags_and_keeps_reasoning_periods():
    generated = " X is in Y. Y speaks Z. <answer> Zedish </answer> Question: more"
    cut = cut_answer(generated, qa=True)
    assert cut.endswith("</answer>") and "Question" not in cut
    assert extract_answer(cut) == "Zedish"
    assert extract_answer(" <answer> Zedish") == "Zedish"  # cut off by the length cap
    assert extract_answer(" plain answer ") == "plain answer"
    assert is_qa_prompt("Question: Where is X? Answer:") and not is_qa_prompt("X is located in")
