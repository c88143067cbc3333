"""easyetcon's conformance suite for the external-memory editors, on every tiny architecture."""

import pytest

from easyetcon.testing import EditorConformance
from tests.memory.helpers import serac_classifier_file, world_model, world_requests


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


class TestIkeConformance(EditorConformance):
    """IKE changes no weight; like the retrieval memory its target check needs a model trained
    to use a fact stated before the question, so it runs on the fact world's shipped model, in
    the corpus's own form (the fact sentence, then the question) and with k = 0, the value the
    tune split picks for that model (its corpus has one stated sentence per context, and more
    demonstrations lower its reliability: docs/memory.md); the other checks run on every tiny
    architecture with demonstrations and the paper's templates."""

    editor = "ike"
    options = {"retriever": "tfidf", "k": 4}
    invalid_options = [{"k": -1}, {"retriever": "bm25"}, {"query_template": "{prompt}"},
                       {"demonstration_template": "{fact} {prompt}"}, {"max_context_tokens": 0}]

    def test_edit_makes_model_predict_target(self):
        model = world_model()
        if model is None:
            pytest.skip("needs the fact world's shipped model (plugins/easyetcon_world/assets/default)")
        self.options = {**self.options, **WORLD_OPTIONS}  # this test's instance only
        self.assert_edit_predicts_targets(model, world_requests(3), where="the fact world's shipped model")


#: IKE's options for the fact world's shipped model (its corpus form: a stated fact, then the prompt).
WORLD_OPTIONS = {"fact_template": "{prompt} {target}.", "demonstration_template": "{prompt} {answer}. ",
                 "query_template": "{fact} {prompt}", "k": 0}


class TestSeracConformance(EditorConformance):
    """SERAC changes no weight; its counterfactual model is the base model asked with the edit
    stated in front, so, like the retrieval memory, the target check runs on the fact world's
    shipped model and the other checks on every tiny architecture. The scope classifier is
    trained once per session on the fact world's tune split (TF-IDF features, in a second)."""

    editor = "serac"
    invalid_options = [{"threshold": -0.1}, {"threshold": 1.5}, {"context_template": "{prompt}"},
                       {"fact_template": "{prompt}"}, {"classifier": "/no/such/classifier.safetensors"}]

    @property
    def options(self):  # a path made at first use: the suite (and half precision) read it per instance
        return {"classifier": serac_classifier_file()}

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
