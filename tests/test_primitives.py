"""Shared primitives: target batches, subject location, training scope, masked loss."""

import pytest
import torch

from easyetcon.errors import RequestError
from easyetcon.testing import tiny_model, tiny_tokenizer
from easyetcon.text import IGNORE_INDEX, build_target_batch, locate_subject_tokens, target_token_logprobs
from easyetcon.training import clamp_to_box, masked_token_nll, trainable_only


def test_target_batch_labels_only_the_target_tokens():
    tokenizer = tiny_tokenizer()
    batch = build_target_batch(tokenizer, ["The Eiffel Tower is in", "Berlin"], ["Paris", "guitar piano"])
    for row, (length, target) in enumerate(zip(batch.prompt_lengths, batch.target_ids)):
        labelled = batch.labels[row][batch.labels[row] != IGNORE_INDEX].tolist()
        assert labelled == target
        assert batch.input_ids[row, length : length + len(target)].tolist() == target
        assert batch.attention_mask[row].sum() == length + len(target)
    assert tokenizer.decode(batch.target_ids[0]) == " Paris"


def test_target_logprobs_match_the_transformers_loss(toy_host):
    model = tiny_model(registry=toy_host.registry)
    batch = build_target_batch(model.tokenizer, ["The Eiffel Tower is in"], ["Paris"])
    logits = model.torch_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    ours = -target_token_logprobs(logits, batch)[0].mean()
    reference = model.torch_model(input_ids=batch.input_ids, labels=batch.labels).loss
    assert torch.allclose(ours, reference, atol=1e-5)
    assert torch.allclose(masked_token_nll(logits, batch.labels), reference, atol=1e-5)
    half = torch.full(batch.labels.shape, 0.5)
    assert torch.allclose(masked_token_nll(logits, batch.labels, half), reference / 2, atol=1e-5)


@pytest.mark.parametrize(
    "prompt,subject",
    [("The Eiffel Tower is located in", "The Eiffel Tower"), ("Where is the Eiffel Tower?", "Eiffel Tower"),
     ("Toko Yasuda plays", "Yasuda")],
)
def test_subject_tokens_cover_exactly_the_subject(prompt, subject):
    tokenizer = tiny_tokenizer()
    positions = locate_subject_tokens(tokenizer, prompt, subject)
    ids = tokenizer(prompt)["input_ids"]
    decoded = tokenizer.decode([ids[p] for p in positions]).strip()
    assert subject in decoded and positions == list(range(positions[0], positions[-1] + 1))


def test_missing_subject_names_the_request():
    with pytest.raises(RequestError, match="request 'r7'.*'Rome'"):
        locate_subject_tokens(tiny_tokenizer(), "The tower is in", "Rome", request_id="r7")


def test_trainable_only_scopes_gradients_and_restores(toy_host):
    model = tiny_model(registry=toy_host.registry)
    name = model.adapter.weight_name("mlp_out", 1)
    model.torch_model.train()
    with trainable_only(model.torch_model, [name]) as (weight,):
        assert weight is model.parameter(name)
        assert [n for n, p in model.torch_model.named_parameters() if p.requires_grad] == [name]
        assert not model.torch_model.training
    assert all(p.requires_grad for p in model.torch_model.parameters())
    assert model.torch_model.training


def test_clamp_to_box():
    parameter = torch.nn.Parameter(torch.tensor([0.0, 5.0, -5.0]))
    clamp_to_box([parameter], [torch.zeros(3)], 1.0)
    assert parameter.tolist() == [0.0, 1.0, -1.0]


def test_eaft_downweights_confident_conflict_tokens():
    from easyetcon.training import entropy_adaptive_weights

    vocab = 50
    logits = torch.zeros(1, 3, vocab)
    logits[0, 0, 7] = 12.0  # position 0: the model is sure of token 7 (low entropy)
    # position 1: flat (high entropy); position 2: unused (predicts past the end)
    labels = torch.tensor([[1, 3, 4]])  # token 3 follows position 0: a confident conflict
    weights = entropy_adaptive_weights(logits, top_k=20)
    assert weights.shape == labels.shape and weights[0, 0] == 1.0
    assert weights[0, 1] < 0.05  # the confident-conflict token barely counts
    assert torch.isclose(weights[0, 2], torch.tensor(1.0), atol=1e-5)  # flat top-20: entropy = ln 20
    sharper = entropy_adaptive_weights(logits, top_k=20, alpha=2.0)
    assert sharper[0, 1] < weights[0, 1]
    loss_plain = masked_token_nll(logits, labels)
    loss_eaft = masked_token_nll(logits, labels, weights)
    assert loss_eaft < loss_plain


def test_target_token_mask_marks_the_target_inside_its_answer_tags():
    from easyetcon.training import target_token_mask

    labels = torch.tensor([
        [-100, -100, 40, 7, 8, 41],  # <answer> 7 8 </answer>
        [-100, 7, 8, 50, -100, -100],  # 7 8 . (padding after)
        [-100, -100, 40, 9, 41, -100],  # the target's tokens do not occur: everything counts as target
    ])
    mask = target_token_mask(labels, [[7, 8], [7, 8], [7, 8]])
    assert mask[0].tolist() == [False, False, False, True, True, False]
    assert mask[1].tolist() == [False, True, True, False, False, False]
    assert mask[2].tolist() == [False, False, True, True, True, False]


@pytest.mark.parametrize("tokens,weighted", [("all", {2, 3, 4}), ("target", {3}), ("surrounding", {2, 4})])
def test_eaft_token_scope_weights_only_the_chosen_tokens(tokens, weighted):
    from easyetcon.training import EaftOptions, eaft_token_weights, target_token_mask

    logits = torch.zeros(1, 5, 30)
    logits[0, :, 0] = 15.0  # every position is sure of token 0: entropy ~0, weight ~0
    labels = torch.tensor([[-100, -100, 40, 7, 41]])
    weights = eaft_token_weights(logits, labels, EaftOptions(tokens=tokens), target_token_mask(labels, [[7]]))
    low = {i for i in range(1, 5) if weights[0, i] < 0.01}
    assert low & {2, 3, 4} == weighted


def test_eaft_options_reject_bad_values():
    from pydantic import ValidationError

    from easyetcon.training import EaftOptions

    for bad in ({"top_k": 1}, {"alpha": 0}, {"tokens": "prompt"}, {"k": 20}):
        with pytest.raises(ValidationError):
            EaftOptions(**bad)


def test_eaft_rejects_tiny_k():
    from easyetcon.training import entropy_adaptive_weights

    with pytest.raises(ValueError, match="top_k"):
        entropy_adaptive_weights(torch.zeros(1, 2, 5), top_k=1)


def test_answer_normalisation_and_extraction():
    from easyetcon.text import answer_matches, extract_answer, extract_tagged_answer, normalize_answer

    assert normalize_answer("  The  Eiffel Tower! ") == "eiffel tower"
    assert normalize_answer("U.S.A.") == normalize_answer("USA") == "usa"  # as SQuAD scores it
    assert extract_tagged_answer("Paris is in France. <answer> French </answer> more") == "French"
    assert extract_tagged_answer("<answer> unclosed") is None
    assert extract_answer(" Rome. It is old.") == "Rome"
    assert extract_answer(" Rome\nnext line") == "Rome"
    assert extract_answer("x <answer> the Rome </answer>") == "the Rome"
    assert answer_matches("the Rome", ["Rome", "Roma"]) and not answer_matches("Romeo", ["Rome"])
