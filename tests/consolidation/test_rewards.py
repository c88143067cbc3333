"""The edit rewards and their weighted, format-gated combination."""

import pytest

from easyetcon.errors import ConfigError, PluginError
from easyetcon.requests import EditRequest
from easyetcon_consolidation.rewards import (
    DEFAULT_WEIGHTS,
    BUILTIN_REWARDS,
    answer_format,
    cleanliness,
    combine_rewards,
    consistency,
    correctness,
)

REQUEST = EditRequest(
    prompt="Zarvik lives in", subject="Zarvik", target_new="New Pelmora", ground_truth="Ostrin",
    target_aliases=("Pelmora City",),
)


def score(function, completion):
    return function([completion], [REQUEST])[0]


@pytest.mark.parametrize(
    "completion,expected",
    [
        (" <answer> New Pelmora </answer>", 1.0),
        (" <answer> the new pelmora! </answer>", 1.0),
        (" <answer> Pelmora City </answer>", 1.0),
        (" <answer> He lives in New Pelmora now </answer>", 0.5),
        (" <answer> not New Pelmora </answer>", 0.0),
        (" <answer> Ostrin </answer>", 0.0),
        (" New Pelmora.", 1.0),
    ],
)
def test_correctness(completion, expected):
    assert score(correctness, completion) == expected


@pytest.mark.parametrize(
    "completion,expected",
    [
        (" Zarvik moved. <answer> X </answer>", 1.0),
        (" <answer> X </answer> <answer> Y </answer>", 0.0),
        (" </answer> X <answer>", 0.0),
        (" <answer>  </answer>", 0.0),
        (" X", 0.0),
    ],
)
def test_format_wants_exactly_one_answer_block(completion, expected):
    assert score(answer_format, completion) == expected


def test_cleanliness_penalises_trailing_text_repetition_and_length():
    assert score(cleanliness, " <answer> X </answer>") == 1.0
    assert score(cleanliness, " <answer> X </answer> and more") == 0.5
    assert score(cleanliness, " go far now go far now <answer> X </answer>") == pytest.approx(0.7)
    assert score(cleanliness, " " + " ".join(f"w{i}" for i in range(60)) + " <answer> X </answer>") == pytest.approx(0.8)


def test_consistency_catches_the_old_fact():
    assert score(consistency, " <answer> New Pelmora </answer>") == 1.0
    assert score(consistency, " Zarvik lived in Ostrin. <answer> New Pelmora </answer>") == 0.0
    assert consistency([" Ostrin"], [REQUEST.model_copy(update={"ground_truth": None})]) == [1.0]


def test_combination_uses_weights_and_the_format_gate():
    lookup = {name: fn for name, (fn, _) in BUILTIN_REWARDS.items()}.__getitem__
    total = combine_rewards(DEFAULT_WEIGHTS, lookup)
    perfect, unformatted = total([" <answer> New Pelmora </answer>", " New Pelmora."], [REQUEST, REQUEST])
    assert perfect == pytest.approx(1.0)
    assert unformatted == 0.0  # correct, but a failed format zeroes the total
    ungated = combine_rewards(DEFAULT_WEIGHTS, lookup, format_gate=None)
    assert ungated([" New Pelmora."], [REQUEST])[0] == pytest.approx(0.70 + 0.15 + 0.10)


def test_bad_weights_and_broken_rewards():
    lookup = {name: fn for name, (fn, _) in BUILTIN_REWARDS.items()}.__getitem__
    with pytest.raises(ConfigError, match="sum to zero"):
        combine_rewards({"correctness": 0.0}, lookup)
    with pytest.raises(ConfigError, match="non-negative"):
        combine_rewards({"correctness": -1.0, "format": 2.0}, lookup)

    def broken(completions, requests):
        raise ZeroDivisionError("oops")

    total = combine_rewards({"broken": 1.0}, {"broken": broken, "format": answer_format}.__getitem__)
    with pytest.raises(PluginError, match="reward 'broken' raised ZeroDivisionError"):
        total([" x"], [REQUEST])
    short = combine_rewards({"short": 1.0}, {"short": lambda c, r: [1.0], "format": answer_format}.__getitem__)
    with pytest.raises(PluginError, match="returned 1 scores for 2"):
        short([" a", " b"], [REQUEST, REQUEST])
