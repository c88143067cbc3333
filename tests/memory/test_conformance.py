"""easyetcon's conformance suite for the external-memory editors, on every tiny architecture."""

import pytest

from easyetcon.testing import EditorConformance
from tests.memory.helpers import world_model, world_requests


class TestGraceConformance(EditorConformance):
    editor = "grace"
    options = {"layer": -1, "steps": 60, "learning_rate": 0.5, "initial_radius": 0.01}
    invalid_options = [{"initial_radius": 0}, {"steps": 0}, {"learning_rate": -1.0}, {"module": "lm_head"}]


class TestRetrievalMemoryConformance(EditorConformance):
    """Putting a fact in front of the prompt makes only a trained model answer with it, so the
    target check runs once, on the fact world's shipped model (its corpus teaches it to use a
    fact stated before the question); the other checks run on every tiny architecture."""

    editor = "retrieval-memory"
    options = {"retriever": "tfidf", "threshold": 0.5}
    invalid_options = [{"threshold": -0.1}, {"threshold": 1.5}, {"retriever": "bm25"},
                       {"context_template": "{prompt}"}, {"relation_examples": {"lives_in": ["lives in"]}}]

    def test_edit_makes_model_predict_target(self):
        model = world_model()
        if model is None:
            pytest.skip("needs the fact world's shipped model (plugins/easyetcon_world/assets/default)")
        self.assert_edit_predicts_targets(model, world_requests(3), where="the fact world's shipped model")


class TestWiseConformance(EditorConformance):
    editor = "wise"
    options = {"layer": -1, "steps": 100, "learning_rate": 50.0, "norm_bound": 100.0, "mask_ratio": 0.5,
               "edit_margin": 2.0, "irrelevant_margin": 0.5, "gap_margin": 1.0}
    invalid_options = [{"mask_ratio": 0}, {"mask_ratio": 1.5}, {"steps": 0}, {"learning_rate": -1.0},
                       {"threshold_ratio": 0}, {"irrelevant_prompts": []}, {"irrelevant_prompts": [" "]},
                       {"edits_per_shard": 0}, {"merge_density": 0}]
