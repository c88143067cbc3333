"""Fine-tuning runs the blocks below its lowest trained layer once, with bit-identical results."""

import pytest
import torch

from easyetcon import training
from easyetcon.plugins import get_host
from easyetcon.testing import ARCHITECTURES, tiny_model, tiny_requests
from easyetcon.training import reused_lower_blocks, trainable_only


def counting_mlp_calls(model, layer):
    calls = []
    mlp = model.adapter.module(model.torch_model, "mlp_out", layer)
    handle = mlp.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls, handle


def weights_after(editor, options, arch, *, reuse):
    registry = get_host().registry
    model = tiny_model(arch, registry=registry)
    name = model.adapter.weight_name("mlp_out", 2)
    requests = tiny_requests()[:2]
    calls, handle = counting_mlp_calls(model, 0)
    with pytest.MonkeyPatch.context() as patch:
        if not reuse:
            patch.setattr(training, "reused_lower_blocks", lambda *_: _nothing())
            patch.setattr(f"{type(registry.editor(editor).create(options)).__module__}.reused_lower_blocks", lambda *_: _nothing())
        registry.editor(editor).create(options).edit(model, requests)
    handle.remove()
    return model.parameter(name).detach().clone(), len(calls)


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_ft_m_on_a_high_layer_gives_the_same_bits_and_runs_the_lower_blocks_once(arch):
    options = {"layers": [2], "steps": 4, "learning_rate": 1e-2}
    reused, lower_calls = weights_after("ft-m", options, arch, reuse=True)
    full, full_calls = weights_after("ft-m", options, arch, reuse=False)
    assert torch.equal(reused, full)
    assert (lower_calls, full_calls) == (1, 4)


def test_tpsft_reuses_the_blocks_below_its_layers():
    options = {"weights": {"layers": [2]}, "rounds": 2, "steps_per_round": 2, "learning_rate": 1e-2}
    reused, lower_calls = weights_after("tpsft", options, "llama", reuse=True)
    full, full_calls = weights_after("tpsft", options, "llama", reuse=False)
    assert torch.equal(reused, full)
    assert lower_calls == 1 and full_calls == 6  # 2 rounds × (1 reference pass + 2 steps)


def test_another_batch_runs_in_full_and_is_recorded_in_turn():
    model = tiny_model("llama", registry=get_host().registry)
    net = model.torch_model
    first, second = torch.tensor([[3, 4, 5, 6]]), torch.tensor([[7, 8, 9, 10]])
    with torch.no_grad():
        expected = [net(input_ids=ids).logits for ids in (first, second, first)]
    calls, handle = counting_mlp_calls(model, 0)
    with trainable_only(net, [model.adapter.weight_name("mlp_out", 1)]), reused_lower_blocks(model, 1), torch.no_grad():
        got = [net(input_ids=ids).logits for ids in (first, second, second, first)]
    handle.remove()
    assert all(torch.equal(a, b) for a, b in zip(got, [expected[0], expected[1], expected[1], expected[2]]))
    assert len(calls) == 3  # first, second, (second reused), first again


def test_nothing_is_reused_when_a_lower_block_trains():
    model = tiny_model("llama", registry=get_host().registry)
    net = model.torch_model
    names = [model.adapter.weight_name("mlp_out", 0), model.adapter.weight_name("mlp_out", 2)]
    calls, handle = counting_mlp_calls(model, 0)
    with trainable_only(net, names), reused_lower_blocks(model, 2):
        for _ in range(3):
            net(input_ids=torch.tensor([[3, 4, 5]]))
    handle.remove()
    assert len(calls) == 3


def test_the_blocks_are_restored_afterwards():
    model = tiny_model("gpt2", registry=get_host().registry)
    blocks = model.adapter.blocks(model.torch_model)
    with trainable_only(model.torch_model, [model.adapter.weight_name("mlp_out", 2)]), reused_lower_blocks(model, 2):
        assert "forward" in blocks[0].__dict__
    assert all("forward" not in block.__dict__ for block in blocks)
    assert not blocks[0]._forward_pre_hooks and not blocks[2]._forward_pre_hooks
