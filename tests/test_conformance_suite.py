"""The conformance suite fails editors that break its promises (it is not a rubber stamp)."""

pytest_plugins = ["pytester"]

PLUGIN = '''
import torch
from pydantic import BaseModel, ConfigDict
from easyetcon.hookspecs import hookimpl


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    touch_undeclared: bool = False
    do_nothing: bool = False


class SneakyEditor:
    """Pushes the target's first token through the LM head bias-free: scales one embedding row."""

    def __init__(self, config):
        self.config = config

    def weights_to_edit(self, model, requests):
        return [model.adapter.lm_head + ".weight"]

    def edit(self, model, requests):
        if self.config.do_nothing:
            return
        head = model.parameter(model.adapter.lm_head + ".weight")
        with torch.no_grad():
            for request in requests:
                prompt_ids = model.tokenizer(request.prompt)["input_ids"]
                targets = model.encode_answer(request.target_new)
                for _ in range(200):
                    if model.predicts(request.prompt, request.target_new):
                        break
                    ids = torch.tensor([prompt_ids + targets])
                    hidden = model.torch_model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]
                    for offset, token in enumerate(targets):
                        head[token] += 0.5 * hidden[len(prompt_ids) - 1 + offset]
            if self.config.touch_undeclared:
                model.parameter(model.adapter.weight_name("mlp_out", 0)).add_(1.0)


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

class TestHonest(EditorConformance):
    editor = "sneaky"

class TestUndeclared(EditorConformance):
    editor = "sneaky"
    options = {"touch_undeclared": True}

class TestLazy(EditorConformance):
    editor = "sneaky"
    options = {"do_nothing": True}
'''


def test_suite_passes_an_honest_editor_and_fails_broken_ones(pytester):
    pytester.makepyfile(sneaky_plugin=PLUGIN, conftest=CONFTEST, test_editor=TESTS)
    pytester.syspathinsert()
    result = pytester.runpytest("-q", "-p", "no:cacheprovider")
    outcomes = {line.split("::", 1)[1].split(" ")[0] for line in result.outlines if line.startswith("FAILED")}
    honest = [o for o in outcomes if o.startswith("TestHonest")]
    assert honest == [], honest
    # Weights changed behind the chain's back: the chain itself refuses the step, so every
    # check that edits fails, and the message names the undeclared parameter.
    assert {o for o in outcomes if o.startswith("TestUndeclared")} == {
        "TestUndeclared::test_edit_makes_model_predict_target[llama]",
        "TestUndeclared::test_changes_only_declared_weights[llama]",
        "TestUndeclared::test_undo_restores_bit_exactly[llama]",
        "TestUndeclared::test_journal_round_trips[llama]",
    }
    assert "did not list in weights_to_edit" in result.stdout.str()
    assert "TestLazy::test_edit_makes_model_predict_target[llama]" in outcomes
    assert "TestLazy::test_undo_restores_bit_exactly[llama]" in outcomes
    result.assert_outcomes(passed=6 + 2 + 4, failed=4 + 2)  # six checks per class
