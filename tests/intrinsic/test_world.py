"""The editors on the fact world's pretrained model (skipped until the world plugin ships it).

Unlike the tiny random models, this model knows its facts, so ordinary prompts (the subject
first, the relation after it) are edited, as in the benchmarks.
"""

import pytest

from easyetcon.chain import EditChain
from tests.intrinsic.helpers import world_model

STATISTICS = {"source": "world", "samples": 300, "progress": False}
VALUES = {"steps": 60, "weight_decay": 0.0, "clamp_norm_factor": 4.0, "prefixes": 3, "statistics": STATISTICS}
OPTIONS = {
    "ft-m": {"layers": [3], "learning_rate": 0.002, "steps": 40},
    "rome": {**VALUES, "layer": 0, "learning_rate": 0.2},  # the papers' subject token, at the layer tracing finds
    "rome-last": {**VALUES, "layer": "trace", "fact_token": "last", "learning_rate": 0.2},
    "memit": {**VALUES, "layers": [0, 1], "covariance_weight": 100.0, "learning_rate": 0.2},
    "alphaedit": {**VALUES, "layers": [3], "fact_token": "last", "learning_rate": 0.1, "energy_fraction": 0.99},
}


@pytest.fixture(scope="module")
def world():
    model = world_model()
    if model is None:
        pytest.skip("the fact world's shipped model is not available")
    from easyetcon_world import load_world, make_edit_requests

    return model, make_edit_requests(load_world(model.source), "tune", 2, 0)


@pytest.mark.slow
@pytest.mark.parametrize("editor", sorted(OPTIONS))
def test_editor_makes_the_world_model_state_the_new_fact(world, editor):
    model, requests = world
    original = model.state_hash()
    assert not any(model.predicts(r.prompt, r.target_new) for r in requests)
    result = EditChain([(editor.split("-last")[0], OPTIONS[editor])]).apply(model, requests, mode="sequential")
    try:
        assert all(model.predicts(r.prompt, r.target_new) for r in requests)
    finally:
        result.undo(model)
    assert model.state_hash() == original
