"""MEND: what defines it (the update is a transformed gradient of rank at most the tokens read; an
untrained network makes a plain gradient step; training lowers the post-edit loss) and its
trained-hypernetwork file, verified when read and refused for another model."""

from __future__ import annotations

import json

import pytest
import torch
from easyetcon_intrinsic.mend import (
    DOCUMENT_KEY,
    MendOptions,
    edit_rows,
    identity_hypernetwork,
    read_mend,
    train_mend,
)

from easyetcon.chain import EditChain
from easyetcon.errors import ChainStepError, ConfigError
from easyetcon.plugins import get_host
from easyetcon.testing import tiny_learnable_requests, tiny_model, tiny_requests
from easyetcon.testing.conformance import target_fit
from easyetcon.text import build_target_batch
from easyetcon.training import masked_token_nll
from tests.intrinsic.helpers import TINY_MEND, mend_hypernetwork


def model_of(architecture="llama"):
    return tiny_model(architecture, registry=get_host().registry)


def dense_update(hypernetwork, model, requests, site):
    rows = edit_rows(model, hypernetwork.sites, requests, hypernetwork.options.positions)
    with torch.no_grad():
        left, right = hypernetwork.update_factors(site, *rows[site])
    return (left.double() @ right.double()), rows[site][0].shape[0]


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_an_untrained_hypernetwork_makes_a_plain_gradient_step(architecture):
    """g starts as the identity, so ΔW = −α ∇W NLL: the gradient autograd gives the weight
    (in the (out, in) view, also for GPT-2's transposed Conv1D)."""
    model, request = model_of(architecture), tiny_requests()[0]
    options = MendOptions(layers=[1], initial_step=0.5)
    site = ("mlp_out", 1)
    rows = edit_rows(model, [site], [request], "all")
    hypernetwork = identity_hypernetwork(model, options, [rows])
    update, _ = dense_update(hypernetwork, model, [request], site)

    batch = build_target_batch(model.tokenizer, [model.format_prompt(request.prompt)], [request.target_new])
    weight = model.parameter(model.adapter.weight_name(*site))
    logits = model.torch_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    (gradient,) = torch.autograd.grad(masked_token_nll(logits, batch.labels), [weight])
    module = model.adapter.module(model.torch_model, *site)
    gradient = gradient.T if model.adapter.is_transposed(module) else gradient
    torch.testing.assert_close(update, -0.5 * gradient.double(), rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("positions", ["all", "target"])
def test_the_update_has_rank_at_most_the_tokens_read(positions):
    """Σ_i δ̃_i ũ_iᵀ over n tokens has rank ≤ n, whatever the network (here a random one):
    with positions=target n is the number of target tokens."""
    model = model_of()
    request = tiny_requests()[1]  # "English": more than one token
    options = MendOptions(layers=[2], positions=positions, rank=4)
    site = ("mlp_out", 2)
    hypernetwork = identity_hypernetwork(model, options, [edit_rows(model, [site], [request], positions)])
    generator = torch.Generator().manual_seed(1)
    for net in hypernetwork.networks.values():
        net["U"] = torch.randn(net["U"].shape, generator=generator)
    update, tokens = dense_update(hypernetwork, model, [request], site)
    target_tokens = len(model.encode_answer(request.target_new))
    assert tokens == (target_tokens if positions == "target" else len(model.tokenizer(request.prompt)["input_ids"]) + target_tokens)
    assert tokens < min(update.shape)  # so the bound says something
    assert 0 < int(torch.linalg.matrix_rank(update)) <= tokens


def test_training_lowers_the_post_edit_loss_on_the_training_requests():
    model, requests = model_of(), tiny_learnable_requests()
    untrained = train_mend(model, requests, {**TINY_MEND, "steps": 1, "learning_rate": 1e-9, "step_learning_rate": 1e-9})
    trained = train_mend(model, requests, TINY_MEND)

    def post_edit_nll(hypernetwork, path):
        hypernetwork.save(path)
        chain, nll = EditChain([("mend", {"hypernetwork": str(path)})]), 0.0
        for request in requests:
            result = chain.apply(model, [request])
            nll += target_fit(model, request.prompt, request.target_new)[0]
            result.undo(model)
        return nll / len(requests)

    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        before = post_edit_nll(untrained, Path(folder) / "untrained.safetensors")
        after = post_edit_nll(trained, Path(folder) / "trained.safetensors")
    assert after < before - 0.05
    assert trained.training["post_edit_nll_trained"] < trained.training["post_edit_nll_untrained"]
    assert trained.training["seconds"] > 0 and trained.training["steps"] == TINY_MEND["steps"]


def test_training_is_deterministic(tmp_path):
    model, requests = model_of(), tiny_learnable_requests()
    first = train_mend(model, requests, {**TINY_MEND, "steps": 10}).save(tmp_path / "a.safetensors")
    second = train_mend(model, requests, {**TINY_MEND, "steps": 10}).save(tmp_path / "b.safetensors")
    assert json.loads(_document(first))["tensors"] == json.loads(_document(second))["tensors"]


def test_a_batch_edit_adds_each_requests_own_update():
    """Each request's gradient is read on its own, so a batch's update is the sum of the single
    ones (and a request never gets another's target)."""
    model = model_of()
    hypernetwork = read_mend(mend_hypernetwork("llama"))
    requests = tiny_learnable_requests()[:2]
    site = hypernetwork.sites[0]
    singles = [dense_update(hypernetwork, model, [r], site)[0] for r in requests]
    from easyetcon_intrinsic.mend import Mend, MendConfig

    editor = Mend(MendConfig(hypernetwork=mend_hypernetwork("llama")))
    name = model.adapter.weight_name(*site)
    before = model.parameter(name).detach().double().clone()
    editor.edit(model, requests)
    module = model.adapter.module(model.torch_model, *site)
    change = model.parameter(name).detach().double() - before
    change = change.T if model.adapter.is_transposed(module) else change
    torch.testing.assert_close(change, sum(singles), rtol=1e-3, atol=1e-6)


# ---- the trained-hypernetwork file -------------------------------------------------------------------


def _document(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as stream:
        return stream.metadata()[DOCUMENT_KEY]


def test_a_saved_hypernetwork_reads_back_as_it_was(tmp_path):
    model = model_of()
    trained = train_mend(model, tiny_learnable_requests(), {**TINY_MEND, "steps": 5})
    loaded = read_mend(trained.save(tmp_path / "mend.safetensors"))
    assert loaded.options == trained.options and loaded.sites == trained.sites and loaded.identity == trained.identity
    assert loaded.training == trained.training
    assert all(torch.equal(a, b) for a, b in zip(loaded.tensors().values(), trained.tensors().values()))


def copy_of(tmp_path, name="copy.safetensors"):
    target = tmp_path / name
    target.write_bytes(open(mend_hypernetwork("llama"), "rb").read())
    return target


def test_a_damaged_tensor_is_refused_naming_the_file(tmp_path):
    path = copy_of(tmp_path)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # inside the last tensor's bytes
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=r"copy\.safetensors.*damaged.*train_mend"):
        EditChain([("mend", {"hypernetwork": str(path)})])


def test_edited_metadata_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    path = copy_of(tmp_path)
    with safe_open(str(path), framework="pt") as stream:
        metadata = stream.metadata()
    tensors = load_file(str(path))
    document = json.loads(metadata[DOCUMENT_KEY])
    document["options"]["rank"] = 16
    save_file(tensors, str(path), metadata={**metadata, DOCUMENT_KEY: json.dumps(document)})
    with pytest.raises(ConfigError, match="does not match its checksum"):
        read_mend(path)


@pytest.mark.parametrize("content", [None, b"not a safetensors file"], ids=["missing", "garbage"])
def test_a_missing_or_foreign_file_is_refused(tmp_path, content):
    path = tmp_path / "mend.safetensors"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match="option 'hypernetwork'.*mend.safetensors"):
        read_mend(path)


def test_a_hypernetwork_of_another_model_is_refused_and_the_model_left_as_it_was():
    model = model_of("gpt2")
    original = model.state_hash()
    with pytest.raises(ChainStepError, match="trained for another model.*train_mend"):
        EditChain([("mend", {"hypernetwork": mend_hypernetwork("llama")})]).apply(model, tiny_learnable_requests()[:1])
    assert model.state_hash() == original


def test_a_hypernetwork_of_other_weight_shapes_is_refused():
    from transformers import AutoModelForCausalLM

    from easyetcon.model import EditableModel
    from easyetcon.testing import tiny_tokenizer
    from easyetcon.testing.tiny import tiny_config

    tokenizer = tiny_tokenizer()
    config = tiny_config("llama", len(tokenizer))
    config.intermediate_size = 48  # same architecture, depth and vocabulary; another MLP width
    torch.manual_seed(0)
    model = EditableModel(AutoModelForCausalLM.from_config(config).eval(), tokenizer, registry=get_host().registry)
    with pytest.raises(ChainStepError, match=r"\(out, in\) = \(32, 64\); this model's is \(32, 48\)"):
        EditChain([("mend", {"hypernetwork": mend_hypernetwork("llama")})]).apply(model, tiny_learnable_requests()[:1])


def test_the_same_model_in_half_precision_is_accepted():
    model = model_of()
    model.torch_model.to(torch.bfloat16)
    EditChain([("mend", {"hypernetwork": mend_hypernetwork("llama")})]).apply(model, tiny_learnable_requests()[:1])


def test_options_that_contradict_the_file_are_refused_and_the_files_are_the_defaults():
    path = mend_hypernetwork("llama")
    with pytest.raises(ConfigError, match=r"trained with rank=8, not rank=4"):
        EditChain([("mend", {"hypernetwork": path, "rank": 4})])
    EditChain([("mend", {"hypernetwork": path, "rank": 8, "layers": [0, 1, 2]})])  # what it was trained with


def test_training_needs_requests_and_trains_on_a_lone_request_without_locality():
    model = model_of()
    with pytest.raises(ConfigError, match="at least one request"):
        train_mend(model, [], TINY_MEND)
    trained = train_mend(model, tiny_learnable_requests()[:1], {**TINY_MEND, "steps": 20})
    assert trained.training["post_edit_nll_trained"] < trained.training["post_edit_nll_untrained"]
