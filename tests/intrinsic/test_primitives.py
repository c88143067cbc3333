"""The shared primitives: keys at the subject, update solvers, layer choice."""

import pytest
import torch
from easyetcon.activations import capture_input
from easyetcon.locate.keys import fact_keys, fill_prefixes, make_prefixes
from easyetcon.locate.layers import best_window, default_layers, default_span_size, resolve_layers, trace_mlp_effects
from easyetcon.locate.solve import (
    add_to_weight,
    least_squares_update,
    nullspace_projector,
    projected_update,
    rank_one_update,
)

from easyetcon.errors import ConfigError, RequestError
from easyetcon.plugins import get_host
from easyetcon.requests import EditRequest
from easyetcon.testing import tiny_model
from easyetcon.text import locate_subject_tokens
from tests.intrinsic.helpers import subject_final_requests


def make(arch="llama"):
    return tiny_model(arch, registry=get_host().registry)


# ---- keys ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_subject_key_is_the_mlp_out_input_at_the_subjects_last_token(arch):
    model = make(arch)
    request = EditRequest(prompt="The Eiffel Tower is located in the city of", subject="Eiffel Tower", target_new="Rome")
    ids = model.tokenizer(request.prompt)["input_ids"]
    last = locate_subject_tokens(model.tokenizer, request.prompt, request.subject)[-1]
    assert model.tokenizer.decode(ids[last]).endswith("Tower")
    module = model.adapter.module(model.torch_model, "mlp_out", 1)
    with torch.no_grad(), capture_input(module) as captured:
        model.torch_model(input_ids=torch.tensor([ids]))
    expected = captured[0][0, last].float()
    key = fact_keys(model, 1, [request])[0]
    assert torch.allclose(key, expected, atol=1e-6)
    assert key.shape == (model.adapter.in_out_features(module)[0],)


def test_last_token_keys_read_the_prompts_final_token():
    model = make()
    request = EditRequest(prompt="The Eiffel Tower is located in the city of", subject="Eiffel Tower", target_new="Rome")
    ids = model.tokenizer(request.prompt)["input_ids"]
    module = model.adapter.module(model.torch_model, "mlp_out", 2)
    with torch.no_grad(), capture_input(module) as captured:
        model.torch_model(input_ids=torch.tensor([ids]))
    assert torch.allclose(fact_keys(model, 2, [request], fact_token="last")[0], captured[0][0, -1].float(), atol=1e-6)
    assert not torch.allclose(fact_keys(model, 2, [request])[0], captured[0][0, -1].float())


def test_keys_ignore_what_follows_the_subject_and_padding():
    model = make()
    short = EditRequest(prompt="Where is the Eiffel Tower", subject="Eiffel Tower", target_new="Rome")
    longer = EditRequest(prompt="Where is the Eiffel Tower located these days, asked Danielle Darrieux", subject="Eiffel Tower", target_new="Rome")
    together = fact_keys(model, 0, [short, longer])  # one batch: the short row is padded
    assert torch.allclose(together[0], together[1], atol=1e-5)


def test_keys_are_averaged_over_prefixes():
    model = make()
    request = subject_final_requests()[0]
    prefixes = make_prefixes(model, 3, 5, "fixed")
    assert prefixes[0] == "{}" and len(prefixes) == 4
    averaged = fact_keys(model, 1, [request], prefixes)[0]
    each = torch.stack([
        fact_keys(model, 1, [request.model_copy(update={"prompt": text})])[0]
        for text in fill_prefixes(prefixes, request.prompt)
    ])
    assert torch.allclose(averaged, each.mean(0), atol=1e-6)
    assert not torch.allclose(each[0], each[1])


def test_generated_prefixes_are_deterministic_and_hold_the_prompt():
    model = make()
    first, second = make_prefixes(model, 3, 5), make_prefixes(model, 3, 5)
    assert first == second and len(first) == 4
    assert all(prefix.count("{}") == 1 for prefix in first)


def test_prompt_without_its_subject_is_an_error_naming_the_request():
    model = make()
    bad = EditRequest(prompt="The tower is in", subject="Colosseum", target_new="Rome", case_id="bad-7")
    with pytest.raises(RequestError, match="bad-7"):
        fact_keys(model, 0, [bad])


# ---- solvers ------------------------------------------------------------------------------------


def test_rank_one_update_writes_the_value_and_has_rank_one():
    torch.manual_seed(0)
    W = torch.randn(6, 10, dtype=torch.float64)
    k, r = torch.randn(10), torch.randn(6)
    samples = torch.randn(200, 10)
    C = samples.T @ samples / 200
    for covariance in (None, C):
        delta = rank_one_update(k, r, covariance)
        assert torch.linalg.matrix_rank(delta) == 1
        assert torch.allclose((W + delta) @ k.double(), W @ k.double() + r.double(), atol=1e-10)


def test_least_squares_update_solves_the_normal_equations():
    torch.manual_seed(0)
    K, R = torch.randn(4, 10), torch.randn(4, 6)  # 4 keys (rows) of width 10, residuals of width 6
    samples = torch.randn(300, 10).double()  # fp64: an fp32 product is not exactly symmetric
    C, lam = samples.T @ samples / 300, 3.0
    delta = least_squares_update(K, R, C, lam)
    # gradient of ‖Δ Kᵀ − Rᵀ‖² + λ tr(Δ C Δᵀ) vanishes
    gradient = (delta @ K.double().T - R.double().T) @ K.double() + lam * delta @ C.double()
    assert gradient.abs().max() < 1e-6  # the fp32 inverse's accuracy (solve.BACKWARD_ERROR_TOLERANCE)
    assert torch.allclose(least_squares_update(K, R, C, 0.0) @ K.double().T, R.double().T, atol=1e-8)


def test_energy_nullspace_is_scale_free_and_the_absolute_rule_is_not():
    torch.manual_seed(0)
    basis = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64))[0]
    C = basis @ torch.diag(torch.tensor([50.0, 30, 15, 4, 0.5, 0.3, 0.1, 0.1], dtype=torch.float64)) @ basis.T
    # 0.985, not 0.99: the top four hold exactly 99 of 100, where rounding decides either way
    P = nullspace_projector(C, rule="energy", energy_fraction=0.985)
    assert torch.allclose(P @ P, P, atol=1e-10) and torch.allclose(P, P.T, atol=1e-12)
    assert round(float(torch.trace(P))) == 4  # 50+30+15+4 = 99 of 100 are protected
    assert torch.allclose(nullspace_projector(1e4 * C, rule="energy", energy_fraction=0.985), P, atol=1e-8)
    assert round(float(torch.trace(nullspace_projector(C, rule="absolute", threshold=1.0)))) == 4
    assert round(float(torch.trace(nullspace_projector(1e4 * C, rule="absolute", threshold=1.0)))) == 0


def test_projected_update_leaves_preserved_keys_alone():
    torch.manual_seed(0)
    preserved = torch.randn(5, 12, dtype=torch.float64)  # 5 keys span 5 of 12 directions
    C = preserved.T @ preserved / 5
    P = nullspace_projector(C, rule="energy", energy_fraction=1 - 1e-9)
    keys, residuals = torch.randn(2, 12), torch.randn(2, 7)
    delta = projected_update(keys, residuals, P, l2=1e-6)
    assert delta.abs().max() > 1e-3
    assert (delta @ preserved.T).abs().max() < 1e-9


def test_covariance_weight_protects_weak_preserved_directions_inside_the_null_space():
    torch.manual_seed(0)
    strong = torch.randn(5, 12, dtype=torch.float64) * 10
    weak = torch.randn(1, 12, dtype=torch.float64) * 0.05  # a preserved key with little energy
    preserved = torch.cat([strong, weak])
    C = preserved.T @ preserved / len(preserved)
    P = nullspace_projector(C, rule="energy", energy_fraction=0.999)  # the weak key falls in the null space
    keys, residuals = torch.randn(1, 12) + 0.5 * weak.float() / weak.norm(), torch.randn(1, 7)
    plain = projected_update(keys, residuals, P, l2=1e-6)
    weighted = projected_update(keys, residuals, P, l2=1e-6, covariance=C, covariance_weight=1e4)
    for delta in (plain, weighted):
        assert (delta @ strong.T).norm() < 1e-4 * delta.norm() * strong.norm()
    assert (weighted @ weak.T).norm() < 0.1 * (plain @ weak.T).norm()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_add_to_weight_handles_conv1d_orientation(arch):
    model = make(arch)
    module = model.adapter.module(model.torch_model, "mlp_out", 1)
    d_in, d_out = model.adapter.in_out_features(module)
    key = torch.randn(d_in)
    with torch.no_grad():
        before = module(key[None, None])[0, 0]
    left, right = torch.randn(d_out, 2, dtype=torch.float64), torch.randn(2, d_in, dtype=torch.float64)
    add_to_weight(model, 1, left, right)
    with torch.no_grad():
        after = module(key[None, None])[0, 0]
    assert torch.allclose(after - before, (left @ right @ key.double()).float(), atol=1e-4)
    with pytest.raises(ValueError, match="does not fit"):
        add_to_weight(model, 1, right.T, left.T)  # the (in, out) orientation is refused, also for Conv1D
    with pytest.raises(FloatingPointError, match="layer 1 is not finite"):
        add_to_weight(model, 1, left * float("nan"), right)


# ---- layers -------------------------------------------------------------------------------------


def test_default_layers_follow_the_papers_for_gpt_j_and_stay_in_range():
    assert default_layers(28, 1) == [5]  # ROME's GPT-J layer
    assert default_layers(28, default_span_size(28)) == [3, 4, 5, 6, 7, 8]  # MEMIT's GPT-J layers
    for depth in range(1, 50):
        span = default_layers(depth, default_span_size(depth))
        assert span == list(range(span[0], span[0] + len(span))) and 0 <= span[0] and span[-1] < depth


def test_best_window_and_tracing():
    assert best_window([0.1, 0.5, 0.4, 0.0], 2) == [1, 2]
    assert best_window([0.1, 0.5, 0.4, 0.0], 1) == [1]
    model = make()
    effects = trace_mlp_effects(model, subject_final_requests(), samples=2)
    assert len(effects) == 3 and all(isinstance(e, float) for e in effects)
    assert resolve_layers(model, "trace", subject_final_requests(), count=1, option="layer")[0] in range(3)


def test_layer_out_of_range_names_the_option():
    with pytest.raises(ConfigError, match="option 'layers'.*3 layers"):
        resolve_layers(make(), [0, 5], [], count=1, option="layers")
    assert resolve_layers(make(), [-1, 0, -3], [], count=1, option="layers") == [0, 2]


# ---- essence texts (the KL term) ----------------------------------------------------------------


class ScriptedModel:
    """Just enough of an EditableModel for essence_texts: a tokenizer and scripted generations."""

    def __init__(self, continuations):
        from easyetcon.testing import tiny_tokenizer

        self.tokenizer = tiny_tokenizer()
        self.continuations = continuations

    def generate(self, prompts, **_):
        return [self.continuations.get(p, "") for p in prompts]


def test_essence_prompts_alone_are_scored_at_their_last_position():
    from easyetcon.locate.values import essence_texts

    model = ScriptedModel({})
    request = EditRequest(prompt="Toko Yasuda plays the", subject="Toko Yasuda", target_new="piano")
    (essence,) = essence_texts(model, request, ["{subject} is a"], 0)
    assert model.tokenizer.decode(essence.ids) == "Toko Yasuda is a"
    assert essence.kl_positions == [len(essence.ids) - 1]


def test_essence_continuations_keep_other_facts_and_drop_the_edited_one():
    from easyetcon.locate.values import essence_texts

    model = ScriptedModel({
        "Toko Yasuda.": " Toko Yasuda plays the guitar. Toko Yasuda lives in Paris. The sky is blue.",
        "Toko Yasuda plays the": " violin.",  # what the model now says: also dropped
        "Toko Yasuda is a": " violin player. Toko Yasuda speaks French.",
    })
    request = EditRequest(prompt="Toko Yasuda plays the", subject="Toko Yasuda", target_new="piano", ground_truth="guitar")
    texts = essence_texts(model, request, ["{subject}.", "{subject} is a"], 20)
    decoded = [model.tokenizer.decode(t.ids) for t in texts]
    assert decoded == ["Toko Yasuda.", "Toko Yasuda lives in Paris.", "Toko Yasuda speaks French."]
    for text in texts:
        assert text.kl_positions == list(range(text.fact_position, len(text.ids) - 1)) or text.kl_positions == [len(text.ids) - 1]
        assert model.tokenizer.decode(text.ids[: text.fact_position + 1]).endswith("Yasuda")


# ---- values -------------------------------------------------------------------------------------


def _value_settings(**changes):
    from easyetcon.locate.values import ValueOptions

    settings = dict(steps=20, learning_rate=0.5, kl_factor=0.0, weight_decay=0.0, clamp_norm_factor=1e4, stop_nll=0.05,
                    kl_prompts=[])
    return ValueOptions(**{**settings, **changes})


def test_a_value_that_does_not_reach_its_target_warns_naming_the_request():
    import warnings

    from easyetcon.locate.keys import locate_request
    from easyetcon.locate.values import EditNotReachedWarning, optimise_value

    model = make()
    request = subject_final_requests()[0]
    block = model.adapter.blocks(model.torch_model)[-1]
    prompt_ids = model.tokenizer(request.prompt, return_tensors="pt")["input_ids"]
    (target_id,) = model.tokenizer(" " + request.target_new, add_special_tokens=False)["input_ids"]
    assert model.torch_model(input_ids=prompt_ids).logits[0, -1].argmax() != target_id  # not said before the edit
    with pytest.warns(EditNotReachedWarning, match=rf"request '{request.request_id}'.*behind 0 of 1 prefixes.*raise learning_rate"):
        optimise_value(model, block, locate_request(model.tokenizer, request, ["{}"], "subject_last"), _value_settings(steps=1, learning_rate=1e-9))
    with warnings.catch_warnings():
        warnings.simplefilter("error", EditNotReachedWarning)
        optimise_value(model, block, locate_request(model.tokenizer, request, ["{}"], "subject_last"), _value_settings())
