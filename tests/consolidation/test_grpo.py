"""GRPO consolidation through TRL: what it trains, what it restores, and how it fails."""

import pytest

from easyetcon.chain import EditChain
from easyetcon.errors import ChainStepError, ConfigError
from easyetcon.hookspecs import hookimpl
from easyetcon.testing import tiny_model, tiny_requests

FAST = {"steps": 2, "group_size": 2, "prompts_per_step": 1, "max_completion_tokens": 6}


class VariedRewards:
    """Rewards with spread across a group (a random model never earns the edit rewards)."""

    @hookimpl
    def easyetcon_register_rewards(self, register):
        register("letter-e", lambda completions, requests: [c.count("e") / (1 + len(c)) for c in completions],
                 summary="Share of the letter e.")
        register("boom", self.boom, summary="Always raises.")

    @staticmethod
    def boom(completions, requests):
        raise RuntimeError("reward server unreachable")


@pytest.fixture
def host(easyetcon_host):
    easyetcon_host.register(VariedRewards(), name="varied-rewards")
    return easyetcon_host


def questions(requests):
    return [r.model_copy(update={"metadata": {"qa_prompts": [f"Question: {r.prompt}? Answer:"]}}) for r in requests]


def test_grpo_changes_only_the_selected_ffn_weights_and_undoes_exactly(host):
    model = tiny_model(registry=host.registry)
    original, name_or_path = model.state_hash(), model.torch_model.config._name_or_path
    options = {**FAST, "rewards": {"letter-e": 1.0}, "format_gate": None, "weights": {"layers": [2]}}
    result = EditChain([("grpo", options)]).apply(model, questions(tiny_requests()[:1]))
    (record,) = result.records
    assert record.weights.names == [model.adapter.weight_name("mlp_out", 2)]
    assert model.torch_model.config._name_or_path == name_or_path  # TRL's reference path is put back
    assert not model.torch_model.training
    result.undo(model)
    assert model.state_hash() == original


@pytest.mark.parametrize("prompts_per_step", [1, 3])
def test_fewer_question_prompts_than_a_step_holds_still_train(host, prompts_per_step):
    """One question prompt and prompts_per_step 3: TRL would drop the short batch and train
    nothing; the prompt is repeated to fill the step."""
    model = tiny_model(registry=host.registry)
    name = model.adapter.weight_name("mlp_out", 2)
    before = model.parameter(name).detach().clone()
    options = {**FAST, "prompts_per_step": prompts_per_step, "rewards": {"letter-e": 1.0}, "format_gate": None,
               "weights": {"layers": [2]}, "learning_rate": 1e-2}
    EditChain([("grpo", options)]).apply(model, questions(tiny_requests()[:1]))
    assert not model.parameter(name).detach().equal(before)


def test_question_template_serves_requests_without_question_prompts(host):
    model = tiny_model(registry=host.registry)
    options = {**FAST, "rewards": {"letter-e": 1.0}, "format_gate": None, "question_template": "Question: {prompt}? Answer:"}
    result = EditChain([("grpo", options)]).apply(model, tiny_requests()[:1])
    assert result.records[0].weights.names


def test_a_raising_reward_plugin_is_named_and_the_model_restored(host):
    model = tiny_model(registry=host.registry)
    original = model.state_hash()
    options = {**FAST, "rewards": {"boom": 1.0}, "format_gate": None}
    with pytest.raises(ChainStepError, match="reward 'boom' raised RuntimeError: reward server unreachable"):
        EditChain([("grpo", options)]).apply(model, questions(tiny_requests()[:1]))
    assert model.state_hash() == original


@pytest.mark.parametrize(
    "options,field",
    [
        ({"group_size": 1}, "group_size"),
        ({"rewards": {"correctness": 0.0, "format": 0.0}}, "sum to zero"),
        ({"rewards": {}}, "at least one reward"),
        ({"rewards": {"correctness": -1.0, "format": 2.0}}, "non-negative"),
        ({"epsilon": 0}, "epsilon"),
        ({"rewards": {"no-such-reward": 1.0}}, "option 'rewards': unknown reward 'no-such-reward'"),
    ],
)
def test_bad_options_are_refused(host, options, field):
    with pytest.raises(ConfigError, match=field):
        host.registry.editor("grpo").create(options)


@pytest.mark.parametrize(
    "environment,problem",
    [
        ({"ACCELERATE_USE_FSDP": "true"}, "FSDP"),
        ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, "DeepSpeed ZeRO-3"),
        ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2", "ACCELERATE_MIXED_PRECISION": "bf16"},
         "DeepSpeed with mixed precision bf16"),
    ],
    ids=["fsdp", "zero-3", "zero-2-bf16"],
)
def test_a_launch_that_would_rewrite_frozen_weights_is_refused_before_the_chain_starts(host, monkeypatch, environment, problem):
    """What accelerate launch --use_fsdp / --use_deepspeed (or such a config file) sets."""
    for variable, value in environment.items():
        monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=f"does not run under {problem}, which .*--multi_gpu"):
        EditChain([("grpo", FAST)])


def test_deepspeed_zero_2_in_fp32_is_let_through(host, monkeypatch):
    for variable, value in {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2",
                            "ACCELERATE_MIXED_PRECISION": "no"}.items():
        monkeypatch.setenv(variable, value)
    host.registry.editor("grpo").create(FAST)


def test_a_step_whose_answers_do_not_split_across_the_processes_is_refused(host, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match=r"'group_size' × 'prompts_per_step' \(2 answers a step\) must split evenly across the 3 processes"):
        host.registry.editor("grpo").create(FAST)
    monkeypatch.setenv("WORLD_SIZE", "2")
    host.registry.editor("grpo").create(FAST)
