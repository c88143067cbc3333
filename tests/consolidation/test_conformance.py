"""easyetcon's conformance suite for the consolidators, on every tiny architecture."""

import pytest

from easyetcon.testing import EditorConformance
from tests.consolidation.helpers import LetterReward


class TestTPSFTConformance(EditorConformance):
    editor = "tpsft"
    options = {"rounds": 30, "learning_rate": 1e-2, "weights": {"layers": [1, 2]}}
    invalid_options = [{"epsilon": 0}, {"epsilon": -0.1}, {"rounds": 0}, {"weights": {"modules": "attention"}}]


class TestGRPOConformance(EditorConformance):
    editor = "grpo"
    # A random model never earns the edit rewards, so every answer of a group would score alike
    # and leave the weights where they were: the letter-e reward gives the group a spread.
    options = {
        "steps": 2, "group_size": 2, "prompts_per_step": 1, "max_completion_tokens": 6, "learning_rate": 1e-2,
        "rewards": {"letter-e": 1.0}, "format_gate": None, "weights": {"layers": [-1]},
        "question_template": "Question: {prompt}? Answer:",
    }
    # (an unknown reward name is refused when the editor is built, not by the chain spec's
    # config validation: tests/consolidation/test_grpo.py covers it)
    invalid_options = [
        {"group_size": 1}, {"epsilon": 0}, {"steps": 0}, {"rewards": {}}, {"rewards": {"letter-e": -1.0}},
        {"weights": {"layers": [1], "modules": "attn"}},
    ]
    target_exemption = (
        "GRPO consolidates what an edit stage taught: it reinforces sampled answers that beat their group's "
        "mean reward. A random tiny model samples a given token about once in 400 draws, so the edit rewards "
        "never see the target (this class trains on the letter-e reward, to have any spread) and a few steps "
        "cannot make it the argmax"
    )

    @pytest.fixture(autouse=True)
    def letter_reward(self, easyetcon_host):
        easyetcon_host.register(LetterReward(), name="letter-rewards")
