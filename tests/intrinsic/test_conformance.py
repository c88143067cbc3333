"""easyetcon's conformance suite for every intrinsic editor, on every tiny architecture."""

from easyetcon.testing import EditorConformance
from tests.intrinsic.helpers import STRONG_VALUES, TINY_STATISTICS


class TestFTL(EditorConformance):
    editor = "ft-l"
    options = {"steps": 30, "learning_rate": 0.05}
    invalid_options = [{"steps": 0}, {"learning_rate": 0}, {"max_change": -1.0}, {"layers": []}, {"modules": ["attn"]}]


class TestFTM(EditorConformance):
    editor = "ft-m"
    options = {"steps": 40, "learning_rate": 0.05, "layers": [-1]}
    invalid_options = [{"eaft": {"top_k": 1}}, {"layers": "trace"}, {"stop_loss": 0}]


class TestRome(EditorConformance):
    editor = "rome"
    options = {**STRONG_VALUES, "layer": 0}
    invalid_options = [
        {"layer": "middle"}, {"kl_prompts": ["is a"]}, {"clamp_norm_factor": 0},
        {"statistics": {"source": "wikipedia"}}, {"statistics": {**TINY_STATISTICS, "samples": 0}},
    ]


class TestMemit(EditorConformance):
    editor = "memit"
    options = {**STRONG_VALUES, "layers": [0, 1], "covariance_weight": 1.0}
    invalid_options = [{"layers": []}, {"covariance_weight": -1.0}, {"prefix_source": "web"}, {"fact_token": "first"}]
    mode = "batch"


class TestAlphaEdit(EditorConformance):
    editor = "alphaedit"
    options = {**STRONG_VALUES, "layers": [0, 1], "learning_rate": 0.5}
    invalid_options = [
        {"nullspace_rule": "rank"}, {"energy_fraction": 0.0}, {"energy_fraction": 1.5}, {"l2": 0},
    ]
    mode = "batch"
