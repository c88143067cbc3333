"""Fixtures of the evaluation tests: a host with the eval and data plugins plus the core's toy
editors (other built-in plugins are not loaded, so these tests depend on nothing else), and a
scripted language model whose greedy continuations are fixed in advance."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import easyetcon_data.plugin
import easyetcon_eval.plugin
from easyetcon.model import EditableModel
from easyetcon.plugins import PluginHost, get_host, set_host
from easyetcon.testing import tiny_model, tiny_tokenizer
from tests import toy_plugins


@pytest.fixture(autouse=True)
def eval_host():
    previous = get_host.__globals__["_default_host"]
    host = PluginHost(load_entry_points=False, plugins=[easyetcon_eval.plugin, easyetcon_data.plugin, toy_plugins])
    set_host(host)
    yield host
    set_host(previous)


@pytest.fixture
def llama(eval_host):
    return tiny_model("llama", registry=eval_host.registry)


class ScriptedLM(torch.nn.Module):
    """Greedy decoding that emits a fixed continuation per prompt, then end of sequence.

    Mirrors ``transformers``' ``generate``: left-padded input, a finished row gets padding, and
    the stopping criteria are consulted after every step. ``steps`` counts decoding steps.
    """

    def __init__(self, tokenizer: Any, script: dict[str, str]) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.tokenizer = tokenizer
        self.script = script
        self.steps = 0

    def generate(self, input_ids, attention_mask, max_new_tokens, stopping_criteria=None, pad_token_id=0, eos_token_id=0, **_):
        plans = []
        for row in range(input_ids.shape[0]):
            prompt = self.tokenizer.decode(input_ids[row][attention_mask[row].bool()], skip_special_tokens=True)
            plans.append(self.tokenizer(self.script[prompt], add_special_tokens=False)["input_ids"] + [eos_token_id])
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool)
        out = input_ids
        for t in range(max_new_tokens):
            step = [pad_token_id if done[r] or t >= len(p) else p[t] for r, p in enumerate(plans)]
            out = torch.cat([out, torch.tensor(step).unsqueeze(1)], dim=1)
            self.steps += 1
            done |= torch.tensor([s == eos_token_id for s in step])
            if stopping_criteria is not None:
                for criterion in stopping_criteria:
                    done |= criterion(out, None).cpu()
            if bool(done.all()):
                break
        return out


@pytest.fixture
def scripted():
    """``scripted({prompt: continuation})`` -> an EditableModel that continues each prompt so."""

    def make(script: dict[str, str]) -> EditableModel:
        tokenizer = tiny_tokenizer()
        return EditableModel(ScriptedLM(tokenizer, script), tokenizer, adapter=object())

    return make
