"""The editors on the fact world's pretrained models (skipped when the world plugin does not ship them).

Unlike the tiny random models, this model knows its facts, so ordinary prompts (the subject
first, the relation after it) are edited, as in the benchmarks.
"""

import pytest

from easyetcon.chain import EditChain
from tests.intrinsic.helpers import sectioned, world_model

STATISTICS = {"source": "world", "samples": 300, "progress": False}
VALUES = {"steps": 60, "weight_decay": 0.0, "clamp_norm_factor": 4.0, "prefixes": 3, "statistics": STATISTICS}
OPTIONS = {
    "ft-m": {"layers": [3], "learning_rate": 0.002, "steps": 40},
    "rome": sectioned({**VALUES, "layer": 0, "learning_rate": 0.2}),  # the papers' subject token, at the layer tracing finds
    "rome-last": sectioned({**VALUES, "layer": "trace", "fact_token": "last", "learning_rate": 0.2}),
    "memit": sectioned({**VALUES, "layers": [0, 1], "covariance_weight": 100.0, "learning_rate": 0.2}),
    "alphaedit": sectioned({**VALUES, "layers": [3], "fact_token": "last", "learning_rate": 0.1, "energy_fraction": 0.99}),
    "emmet": sectioned({**VALUES, "layers": [0, 1], "learning_rate": 0.2}),
}


# The wide model's residual stream is about 8x larger: value vectors need a larger step
# (benchmarks/intrinsic_configs_wide.json; docs/world.md, "The wide model").
WIDE_VALUES = {**VALUES, "fact_token": "last", "learning_rate": 1.0}
WIDE_OPTIONS = {
    "ft-m": {"layers": [3], "learning_rate": 0.001, "steps": 40, "stop_loss": 0.05},
    "rome": sectioned({**WIDE_VALUES, "layer": 3}),
    "memit": sectioned({**WIDE_VALUES, "layers": [3], "covariance_weight": 100.0}),
    "alphaedit": sectioned({**WIDE_VALUES, "layers": [3], "energy_fraction": 0.99}),
    "emmet": sectioned({**WIDE_VALUES, "layers": [3]}),
}


def shipped_world(name: str):
    model = world_model(name)
    if model is None:
        pytest.skip(f"the fact world's shipped model {name!r} is not available")
    from easyetcon_world import load_world, make_edit_requests

    return model, make_edit_requests(load_world(model.source), "tune", 2, 0)


@pytest.fixture(scope="module")
def world():
    return shipped_world("default")


@pytest.fixture(scope="module")
def wide_world():
    return shipped_world("wide")


def edit_states_new_fact_and_undoes(model, requests, editor: str, options: dict) -> None:
    original = model.state_hash()
    assert not any(model.predicts(r.prompt, r.target_new) for r in requests)
    result = EditChain([(editor, options)]).apply(model, requests, mode="sequential")
    try:
        assert all(model.predicts(r.prompt, r.target_new) for r in requests)
    finally:
        result.undo(model)
    assert model.state_hash() == original


@pytest.mark.slow
@pytest.mark.parametrize("editor", sorted(OPTIONS))
def test_editor_makes_the_world_model_state_the_new_fact(world, editor):
    edit_states_new_fact_and_undoes(*world, editor.split("-last")[0], OPTIONS[editor])


@pytest.mark.slow
@pytest.mark.parametrize("editor", sorted(WIDE_OPTIONS))
def test_editor_makes_the_wide_world_model_state_the_new_fact(wide_world, editor):
    edit_states_new_fact_and_undoes(*wide_world, editor, WIDE_OPTIONS[editor])
