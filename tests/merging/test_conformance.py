"""easyetcon's conformance suite for lora-merge, on every tiny architecture."""

from easyetcon.testing import EditorConformance

FAST = {"steps": 60, "learning_rate": 0.05, "rank": 4}


class TestLoraMergeLinear(EditorConformance):
    editor = "lora-merge"
    options = FAST
    invalid_options = [
        {"rank": 0}, {"steps": 0}, {"strategy": "svd"}, {"density": 1.5}, {"density": 0.5},  # density needs a pruning strategy
        {"merge_every": 0}, {"modules": []}, {"merge_space": "weights"},
    ]


class TestLoraMergeTiesWindow(EditorConformance):
    editor = "lora-merge"
    options = {**FAST, "strategy": "ties", "density": 0.9, "merge_every": 2}
    invalid_options = [{"density": 0}]
    mode = "batch"
