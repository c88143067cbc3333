"""The conformance suite fails editors that break its promises (it is not a rubber stamp)."""

import re

pytest_plugins = ["pytester"]

PLUGIN = '''
import torch
from pydantic import BaseModel, ConfigDict
from easyetcon.hookspecs import hookimpl


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    touch_undeclared: bool = False
    do_nothing: bool = False
    teach_ground_truth: bool = False
    plain_prompts: bool = False
    lead: float = 2.0


class SneakyEditor:
    """Moves each target token's LM-head row along the prompt's final hidden state, in one exact
    step, until the token's logit leads every other by ``lead`` (only that row's logit changes)."""

    def __init__(self, config):
        self.config = config

    def weights_to_edit(self, model, requests):
        return [model.adapter.lm_head + ".weight"]

    def edit(self, model, requests):
        if self.config.do_nothing:
            return
        head_module = model.torch_model.get_output_embeddings()
        seen = []
        handle = head_module.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
        try:
            with torch.no_grad():
                for request in requests:
                    answer = request.ground_truth if self.config.teach_ground_truth else request.target_new
                    token = model.encode_answer(answer)[0]
                    prompt = request.prompt if self.config.plain_prompts else model.format_prompt(request.prompt)
                    ids = torch.tensor([model.tokenizer(prompt)["input_ids"]])
                    logits = model.torch_model(input_ids=ids).logits[0, -1]
                    hidden = seen[-1][0, -1]
                    best_other = torch.cat([logits[:token], logits[token + 1 :]]).max()
                    shortfall = best_other - logits[token] + self.config.lead
                    head_module.weight[token] += shortfall * hidden / hidden.dot(hidden)
                if self.config.touch_undeclared:
                    model.parameter(model.adapter.weight_name("mlp_out", 0)).add_(1.0)
        finally:
            handle.remove()


@hookimpl
def easyetcon_register_intrinsic_editors(register):
    register("sneaky", SneakyEditor, config=Config, subfamily="toy", summary="A test editor.")
'''

CONFTEST = '''
import pytest
import sneaky_plugin
from easyetcon.plugins import PluginHost, set_host

@pytest.fixture(autouse=True)
def host(monkeypatch):
    monkeypatch.setenv("EASYETCON_BLOCK_PLUGINS", "*")
    set_host(PluginHost(plugins=[sneaky_plugin]))
    yield
    set_host(None)
'''

TESTS = '''
from easyetcon.testing import EditorConformance

class Sneaky(EditorConformance):
    editor = "sneaky"
    architectures = ("llama",)

class TestHonest(Sneaky):
    pass

class TestUndeclared(Sneaky):
    options = {"touch_undeclared": True}

class TestLazy(Sneaky):
    options = {"do_nothing": True}

class TestWrongAnswer(Sneaky):
    options = {"teach_ground_truth": True}

class TestBarelyAhead(Sneaky):
    options = {"lead": 0.05}

class TestExempt(Sneaky):
    options = {"do_nothing": True}
    target_exemption = "this toy promises no target"

class TestPlainPrompts(Sneaky):
    options = {"plain_prompts": True}
'''


def test_suite_passes_an_honest_editor_and_fails_broken_ones(pytester):
    pytester.makepyfile(sneaky_plugin=PLUGIN, conftest=CONFTEST, test_editor=TESTS)
    # In a subprocess: an in-process run drops the modules it imported afterwards, and torch
    # refuses to register its operator libraries a second time when they are imported again.
    result = pytester.runpytest_subprocess("-q", "-rfEs", "-p", "no:cacheprovider")
    text = result.stdout.str()
    failed = {line.split("::", 1)[1].split(" ")[0] for line in result.outlines if line.startswith("FAILED")}
    assert [o for o in failed if o.startswith("TestHonest")] == []
    # Weights changed behind the chain's back: the chain itself refuses the step, so every
    # check that edits fails, and the message names the undeclared parameter.
    assert {o for o in failed if o.startswith("TestUndeclared")} == {
        "TestUndeclared::test_edit_makes_model_predict_target[llama]",
        "TestUndeclared::test_changes_only_declared_weights[llama]",
        "TestUndeclared::test_undo_restores_bit_exactly[llama]",
        "TestUndeclared::test_journal_round_trips[llama]",
        "TestUndeclared::test_asks_in_the_models_prompt_format",
    }
    assert "did not list in weights_to_edit" in text
    assert {o for o in failed if o.startswith("TestLazy")} == {
        "TestLazy::test_edit_makes_model_predict_target[llama]",
        "TestLazy::test_undo_restores_bit_exactly[llama]",
    }
    # teaching the old answer, or leading by a hair, fails the target check and nothing else
    assert {o for o in failed if o.startswith(("TestWrongAnswer", "TestBarelyAhead"))} == {
        "TestWrongAnswer::test_edit_makes_model_predict_target[llama]",
        "TestBarelyAhead::test_edit_makes_model_predict_target[llama]",
    }
    # an exempted editor's target check is reported as skipped, with the reason, and its other
    # checks still run: this lazy one still fails the undo check for changing nothing
    assert {o for o in failed if o.startswith("TestExempt")} == {"TestExempt::test_undo_restores_bit_exactly[llama]"}
    assert "TestExempt.target_exemption: this toy promises no target" in text
    # an editor that feeds the model its requests' bare prompts fails only the prompt-format check
    # (the tiny models are asked with the bare prompt everywhere else)
    assert {o for o in failed if o.startswith("TestPlainPrompts")} == {"TestPlainPrompts::test_asks_in_the_models_prompt_format"}
    assert "'sneaky' read request prompts outside the model's prompt format (chat)" in text
    result.assert_outcomes(passed=7 + 2 + 5 + 6 + 6 + 5 + 6, failed=5 + 2 + 1 + 1 + 1 + 1, skipped=1)  # seven checks per class

    # a missed target is reported with the editor, the model, the request, its NLL and margin
    assert "'sneaky' (sequential mode) on the tiny llama model" in text
    assert "not ahead by the margin 0.10 (each right after its own edit)" in text
    assert "learnable-0: 'The mother tongue of Danielle Darrieux' -> 'Paris': target NLL" in text
    # the editor that leads by 0.05 would pass a bare argmax check, not the margin
    barely = text.split("TestBarelyAhead.test_edit_makes_model_predict_target", 1)[1].split("TestExempt", 1)[0]
    assert re.search(r"margin -\d\.\d{3} -> \+0\.050", barely)
