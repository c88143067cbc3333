"""TPSFT: the trust region holds, EAFT weighting applies, the lifelong schedule fires on time."""

import pytest
import torch

from easyetcon.chain import EditChain
from easyetcon.errors import ChainStepError, ConfigError
from easyetcon.testing import tiny_model, tiny_requests
from easyetcon.text import build_target_batch, target_token_logprobs


def target_probabilities(model, request):
    batch = build_target_batch(model.tokenizer, [request.prompt], [f"{request.target_new}."])
    with torch.no_grad():
        logits = model.torch_model(input_ids=batch.input_ids).logits
    return target_token_logprobs(logits, batch)[0].exp()


@pytest.fixture
def host(easyetcon_host):
    return easyetcon_host


def test_one_round_stops_once_every_token_passes_the_trust_region(host):
    """With p_old fixed, a token's gradient vanishes once p/p_old > 1 + eps; when all have passed,
    more steps change nothing (Adam's momentum carries them a little past the edge)."""
    request = tiny_requests()[0]
    ratios = {}
    for steps in (60, 180):
        model = tiny_model(registry=host.registry)
        before = target_probabilities(model, request)
        options = {"rounds": 1, "steps_per_round": steps, "learning_rate": 2e-3, "epsilon": 0.2,
                   "prompts": {"questions": False}}
        EditChain([("tpsft", options)]).apply(model, [request])
        ratios[steps] = target_probabilities(model, request) / before
    assert ratios[60].min() > 1.2  # every target token reached the edge of the region
    assert ratios[60].max() < 1.2 * 1.3  # and stopped near it
    assert torch.allclose(ratios[60], ratios[180], atol=2e-3)  # three times the steps: no further drift


def test_eaft_changes_the_update(host):
    request = tiny_requests()[1]
    plain, weighted = tiny_model(registry=host.registry), tiny_model(registry=host.registry)
    EditChain([("tpsft", {"rounds": 3})]).apply(plain, [request])
    EditChain([("tpsft", {"rounds": 3, "eaft": {"top_k": 20, "alpha": 1.0}})]).apply(weighted, [request])
    assert plain.state_hash() != weighted.state_hash()


def test_eaft_on_target_or_surrounding_tokens_gives_different_updates(host):
    request = tiny_requests()[1]
    hashes = {}
    for tokens in ("all", "target", "surrounding"):
        model = tiny_model(registry=host.registry)
        EditChain([("tpsft", {"rounds": 3, "eaft": {"tokens": tokens}})]).apply(model, [request])
        hashes[tokens] = model.state_hash()
    assert len(set(hashes.values())) == 3


def test_lifelong_schedule_every_two_over_all_seen(host):
    model = tiny_model(registry=host.registry)
    chain = EditChain([("tpsft", {"rounds": 2, "schedule": {"every": 2, "scope": "all"}})])
    result = chain.apply(model, tiny_requests()[:3], mode="sequential")
    changed = [bool(r.weights.names) for r in result.records]
    assert changed == [False, True, False]
    assert chain.steps[0].editor.state.seen.keys() == {"tiny-0", "tiny-1", "tiny-2"}


def test_schedule_since_last_consolidates_the_requests_of_the_window():
    from easyetcon_consolidation.common import LifelongSchedule, ScheduleState

    state = ScheduleState(LifelongSchedule(every=2, scope="since_last"))
    a, b, c = tiny_requests()
    assert state.advance([a]) is None
    assert [r.request_id for r in state.advance([b])] == [a.request_id, b.request_id]
    assert state.advance([c]) is None
    assert [r.request_id for r in state.advance([a])] == [c.request_id, a.request_id]


def test_layer_out_of_range_is_named_and_the_model_is_untouched(host):
    model = tiny_model(registry=host.registry)
    original = model.state_hash()
    with pytest.raises(ChainStepError, match="option 'layers': layer 9 does not exist"):
        EditChain([("tpsft", {"weights": {"layers": [9]}})]).apply(model, tiny_requests()[:1])
    assert model.state_hash() == original


def test_epsilon_must_be_positive(host):
    with pytest.raises(ConfigError, match="epsilon"):
        host.registry.editor("tpsft").create({"epsilon": 0})
