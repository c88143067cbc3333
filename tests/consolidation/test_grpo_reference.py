"""GRPO's KL reference: the pre-step model, held in memory, sharing every frozen weight with the policy."""

import tempfile
from pathlib import Path

import pytest
import torch
import trl
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from easyetcon.chain import EditChain
from easyetcon.testing import tiny_model, tiny_requests
from easyetcon_consolidation import grpo
from tests.consolidation.helpers import LetterReward

# a learning rate that moves the tiny model's weights in two steps
FAST = {"steps": 2, "group_size": 2, "prompts_per_step": 1, "max_completion_tokens": 6, "learning_rate": 1e-2,
        "rewards": {"letter-e": 1.0}, "format_gate": None, "weights": {"layers": [1, 2]}}


@pytest.fixture
def host(easyetcon_host):
    easyetcon_host.register(LetterReward(), name="letter-rewards")
    return easyetcon_host


@pytest.fixture
def built(monkeypatch):
    """Each reference GRPO builds, with the policy's logits and weights at that moment, and the
    reference each trainer was given."""
    seen = {"references": [], "trainers": []}
    build = grpo.pre_step_reference

    def watched(net, trained):
        reference = build(net, trained)
        weights = {name: p.detach().clone() for name, p in net.named_parameters()}
        seen["references"].append((reference, logits(net), weights, list(trained)))
        return reference

    train = trl.GRPOTrainer.train

    def watched_train(trainer, *args, **kwargs):
        reference = trainer.ref_model
        # what requires grad in the reference while the policy trains (nothing should)
        trainable = [n for n, p in reference.named_parameters() if p.requires_grad] if reference is not None else []
        seen["trainers"].append((trainer.beta, reference, trainable))
        return train(trainer, *args, **kwargs)

    monkeypatch.setattr(grpo, "pre_step_reference", watched)
    monkeypatch.setattr(trl.GRPOTrainer, "train", watched_train)
    return seen


def questions(requests):
    return [r.model_copy(update={"metadata": {"qa_prompts": [f"Question: {r.prompt}? Answer:"]}}) for r in requests]


def logits(net):
    ids = torch.tensor([[0, 5, 17, 42, 99, 123, 7, 250]])
    with torch.no_grad():
        return net(input_ids=ids).logits


def apply(model, options=FAST, requests=None):
    return EditChain([("grpo", options)]).apply(model, requests or questions(tiny_requests()[:1]))


def test_an_application_writes_no_file(host, built, monkeypatch, tmp_path):
    saved, written = [], []
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", lambda self, *a, **k: saved.append(type(self)))
    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", lambda self, *a, **k: saved.append(type(self)))

    class WatchedTemporaryDirectory(tempfile.TemporaryDirectory):
        def cleanup(self):
            written.extend(path for path in Path(self.name).rglob("*") if path.is_file())
            super().cleanup()

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(tempfile, "TemporaryDirectory", WatchedTemporaryDirectory)
    apply(tiny_model(registry=host.registry))
    assert saved == []
    assert written == []
    assert [path for path in tmp_path.rglob("*") if path.is_file()] == []


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_reference_is_the_pre_step_model_and_is_not_trained(host, built, dtype):
    model = tiny_model(registry=host.registry)
    model.torch_model.to(dtype)
    net = model.torch_model
    for _ in range(2):  # the second step's reference is taken from a model GRPO has already trained
        apply(model)
    assert len(built["references"]) == 2
    for (reference, before, weights, trained), (beta, given, trainable) in zip(built["references"], built["trainers"]):
        assert beta == grpo.GRPOConsolidationConfig().beta and given is reference  # TRL's KL term uses it
        assert trainable == []
        assert torch.equal(logits(reference), before)  # bit for bit, after the policy trained
        for name, parameter in reference.named_parameters():
            assert parameter.dtype == dtype, name
            assert torch.equal(parameter, weights[name]), name
    last_before = built["references"][-1][1]
    assert not torch.equal(logits(net), last_before)  # the policy did move
    trained = set(built["references"][-1][3])
    assert any(not torch.equal(p, built["references"][-1][2][n]) for n, p in net.named_parameters() if n in trained)


def test_the_reference_shares_the_frozen_weights_and_snapshots_the_trained_ones(host, built):
    model = tiny_model(registry=host.registry)
    net = model.torch_model
    apply(model)
    ((reference, _, _, trained),) = built["references"]
    assert trained == [model.adapter.weight_name("mlp_out", layer) for layer in (1, 2)]
    policy = dict(net.named_parameters())
    for name, parameter in reference.named_parameters():
        if name in trained:
            assert parameter.data_ptr() != policy[name].data_ptr(), name
        else:
            assert parameter is policy[name], name
    policy_buffers = dict(net.named_buffers())
    assert all(buffer is policy_buffers[name] for name, buffer in reference.named_buffers())
    extra = sum(p.numel() for n, p in reference.named_parameters() if p is not policy[n])
    assert extra == sum(policy[name].numel() for name in trained)


def test_beta_zero_builds_no_reference(host, built):
    model = tiny_model(registry=host.registry)
    apply(model, {**FAST, "beta": 0.0})
    assert built["references"] == []
    assert built["trainers"] == [(0.0, None, [])]
