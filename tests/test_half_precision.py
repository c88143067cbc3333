"""Half precision: editors that train weights with an optimiser step fp32 master copies, so
float16 and bfloat16 models are edited as they would be in fp32 and stored in their own dtype."""

from __future__ import annotations

import pytest
import torch

from easyetcon.chain import EditChain
from easyetcon.testing import tiny_model, tiny_requests
from easyetcon.training import fp32_master_weights, trainable_only
from tests.consolidation.helpers import LetterReward
from tests.intrinsic.helpers import subject_final_requests

HALF = [torch.float16, torch.bfloat16]

#: The options and requests of each editor's fp32 conformance test (the edit lands in fp32).
LANDING = {
    "ft-l": ({"steps": 30, "learning_rate": 0.05}, subject_final_requests),
    "ft-m": ({"steps": 40, "learning_rate": 0.05, "layers": [-1]}, lambda: tiny_requests()[:2]),
    "tpsft": ({"rounds": 30, "learning_rate": 1e-2, "weights": {"layers": [1, 2]}}, lambda: tiny_requests()[:2]),
    "lora-merge": ({"steps": 60, "learning_rate": 0.05, "rank": 4}, lambda: tiny_requests()[:1]),
}

#: GRPO as in tests/consolidation/test_grpo.py: a random model never earns the edit rewards.
GRPO_FAST = {"steps": 2, "group_size": 2, "prompts_per_step": 1, "max_completion_tokens": 6,
             "rewards": {"letter-e": 1.0}, "format_gate": None, "weights": {"layers": [2]}}


@pytest.fixture
def host(easyetcon_host):
    easyetcon_host.register(LetterReward(), name="letter-rewards")
    return easyetcon_host


def model_in(dtype, host):
    model = tiny_model(registry=host.registry)
    model.torch_model.to(dtype)
    return model


def questions(requests):
    return [r.model_copy(update={"metadata": {"qa_prompts": [f"Question: {r.prompt}? Answer:"]}}) for r in requests]


def apply(model, editor, options, requests):
    before = {n: p.detach().clone() for n, p in model.torch_model.named_parameters()}
    result = EditChain([(editor, options)]).apply(model, requests, mode="sequential")
    declared = {n for r in result.records if r.weights is not None for n in r.weights.names}
    changed = {n for n, p in model.torch_model.named_parameters() if not torch.equal(p, before[n])}
    return before, declared, changed


def assert_finite_and_in_dtype(model, dtype):
    for name, parameter in model.torch_model.named_parameters():
        assert parameter.dtype == dtype, name
        assert torch.isfinite(parameter).all(), f"{name} has non-finite values"


# ---- each editor edits a half-precision model -------------------------------------------------------


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("editor", list(LANDING))
def test_half_precision_edit_is_finite_changes_the_declared_weights_and_lands(host, editor, dtype):
    options, make_requests = LANDING[editor]
    model, requests = model_in(dtype, host), make_requests()
    _, declared, changed = apply(model, editor, options, requests)
    assert_finite_and_in_dtype(model, dtype)
    assert changed and changed == declared
    missed = [r.request_id for r in requests if not model.predicts(r.prompt, r.target_new)]
    assert not missed, f"after the edit the model still does not predict the target of {missed}"


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_half_precision_grpo_is_finite_and_changes_the_declared_weights(host, dtype):
    model = model_in(dtype, host)
    _, declared, changed = apply(model, "grpo", GRPO_FAST, questions(tiny_requests()[:1]))
    assert_finite_and_in_dtype(model, dtype)
    assert changed == declared == {model.adapter.weight_name("mlp_out", 2)}


#: Learning rates far below what bf16 resolves at the weights' scale (|w| ~ 0.02: 1 ulp ~ 1e-4),
#: with enough steps that fp32 masters accumulate a change of a few ulps in almost every entry.
SMALL_STEPS = {
    "ft-l": ({"steps": 30, "learning_rate": 1e-5, "layers": [1]}, 0.9),
    "ft-m": ({"steps": 30, "learning_rate": 1e-5, "layers": [1]}, 0.9),
    "tpsft": ({"rounds": 15, "learning_rate": 1e-5, "weights": {"layers": [1]}, "prompts": {"questions": False}}, 0.9),
    # GRPO's gradient changes sign between steps, so fewer entries add up
    "grpo": ({**GRPO_FAST, "steps": 8, "learning_rate": 3e-5, "weights": {"layers": [1]}}, 0.5),
}


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("editor", list(SMALL_STEPS))
def test_updates_below_half_precision_resolution_accumulate(host, editor, dtype):
    """Stepping the half-precision weights directly rounds most of these updates away (bf16) or
    divides by an underflowed Adam denominator (fp16); the masters keep every step."""
    options, share = SMALL_STEPS[editor]
    model = model_in(dtype, host)
    before, declared, _ = apply(model, editor, options, questions(tiny_requests()[:1]))
    assert_finite_and_in_dtype(model, dtype)
    for name in declared:
        moved = (model.parameter(name) != before[name]).float().mean()
        assert moved > share, f"only {moved:.0%} of {name} moved"


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_linf_box_holds_on_the_masters(host, dtype):
    """Steps of 1e-5 reach the box's edge (2e-4) only by adding up in the masters."""
    model = model_in(dtype, host)
    bound = 2e-4
    options = {"steps": 40, "learning_rate": 1e-5, "max_change": bound, "layers": [1], "modules": ["mlp_in", "mlp_out"]}
    before, declared, _ = apply(model, "ft-m", options, tiny_requests()[:1])
    assert len(declared) == 2
    for name in declared:
        start, moved = before[name].float(), (model.parameter(name).float() - before[name].float()).abs()
        # the master stays inside the box; storing it rounds to nearest (half an ulp at most)
        rounding = torch.finfo(dtype).eps / 2 * (start.abs() + bound)
        assert (moved <= bound + rounding).all()
        assert (moved > 0).float().mean() > 0.9 and moved.max() > bound / 2


def test_lora_factors_train_in_fp32_on_a_half_precision_model(host):
    from easyetcon_merging.lora_merge import lora_config, peft_wrapped

    model = model_in(torch.bfloat16, host)
    module = model.adapter.module_name("mlp_out", 1)
    settings = {"probe": lora_config([module], rank=2, alpha=2.0, fan_in_fan_out=False)}
    with peft_wrapped(model.torch_model, settings, seed=0) as peft_model:
        factors = [p for n, p in peft_model.named_parameters() if "lora_" in n]
        assert factors and all(p.dtype == torch.float32 for p in factors)
    assert_finite_and_in_dtype(model, torch.bfloat16)


# ---- the mechanism ---------------------------------------------------------------------------------


class Tied(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.second = torch.nn.Linear(3, 3, bias=False), torch.nn.Linear(3, 3, bias=False)
        self.second.weight = self.first.weight

    def forward(self, x):
        return self.second(self.first(x))


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_masters_are_what_trains_and_the_forward_reads_them_cast(dtype):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)).to(dtype)
    parameter = net[0].weight
    seen = []
    net[0].register_forward_hook(lambda module, args, output: seen.append(module.weight))
    with trainable_only(net, ["0.weight"]) as (master,):
        assert master.dtype == torch.float32 and master.is_leaf and master.requires_grad
        assert dict(net.named_parameters())["0.weight"] is master  # what an optimiser, also TRL's, finds
        with torch.no_grad():
            master.add_(1e-3)  # below bf16's resolution at 1, kept by the master
        net(torch.ones(1, 4, dtype=dtype)).sum().backward()
        assert seen[-1].dtype == dtype and torch.equal(seen[-1], master.detach().to(dtype))
        assert master.grad is not None and master.grad.dtype == torch.float32
        assert parameter.grad is None and net[0].bias.grad is None
        assert net[0].weight is master  # outside the forward the module holds the master again
    assert net[0].weight is parameter and parameter.dtype == dtype and parameter.requires_grad
    assert torch.equal(parameter, master.detach().to(dtype))


def test_fp32_parameters_are_trained_themselves():
    net = torch.nn.Linear(3, 3)
    with fp32_master_weights(net, ["weight", "bias"]) as tensors:
        assert tensors[0] is net.weight and tensors[1] is net.bias
        assert not net._forward_pre_hooks and not net._forward_hooks


def test_masters_are_written_back_on_error():
    net = torch.nn.Linear(3, 3).to(torch.float16)
    parameter = net.weight
    with pytest.raises(RuntimeError, match="boom"), fp32_master_weights(net, ["weight"]) as (master,):
        with torch.no_grad():
            master.mul_(2)
        raise RuntimeError("boom")
    assert net.weight is parameter and torch.equal(parameter, master.detach().half())
    assert not net._forward_pre_hooks and not net._forward_hooks


def test_tied_weights_share_one_master():
    net = Tied().to(torch.bfloat16)
    with fp32_master_weights(net, ["first.weight"]) as (master,):
        assert net.first.weight is master and net.second.weight is master
        with torch.no_grad():
            master.zero_()
        assert not net(torch.ones(1, 3, dtype=torch.bfloat16)).any()
    assert net.first.weight is net.second.weight and not net.first.weight.any()


# ---- output preservation holds on the masters ------------------------------------------------------

PRESERVED_TEXTS = [f"Text number {i} about the tiny world and its people." for i in range(24)]
PRESERVED_STATISTICS = {"source": "model-samples", "samples": 24, "cache": False, "progress": False}


def preserved_output_change(host, dtype, editor, options, preserve):
    """``tr(ΔW C ΔWᵀ)`` of the edited output projection, with or without ``preserve``."""
    from easyetcon_consolidation.common import FfnSelection, preservation_statistics

    model = model_in(dtype, host)
    layer = 2
    selection = FfnSelection(layers=[layer], preserve={"weight": 1.0, "statistics": PRESERVED_STATISTICS})
    statistics = preservation_statistics(selection)
    statistics.use_texts(PRESERVED_TEXTS)
    mom2 = statistics.get(model, [layer])[layer].mom2.double()
    weights = {"layers": [layer]}
    if preserve:
        weights["preserve"] = {"weight": preserve, "statistics": PRESERVED_STATISTICS}
    chain = EditChain([(editor, {**options, "weights": weights})])
    if preserve:
        chain.steps[0].editor.statistics.use_texts(PRESERVED_TEXTS)
    name = model.adapter.weight_name("mlp_out", layer)
    before = model.parameter(name).detach().double()
    chain.apply(model, questions(tiny_requests()[:1]))
    delta = model.parameter(name).detach().double() - before
    return float(torch.trace(delta @ mom2 @ delta.T))


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("editor,options", [
    ("tpsft", {"rounds": 10, "learning_rate": 1e-2, "prompts": {"questions": False}}),
    ("grpo", {**GRPO_FAST, "steps": 4, "learning_rate": 1e-2}),
], ids=["tpsft", "grpo"])
def test_output_preservation_holds_in_half_precision(host, dtype, editor, options):
    options = {k: v for k, v in options.items() if k != "weights"}
    free = preserved_output_change(host, dtype, editor, options, None)
    held = preserved_output_change(host, dtype, editor, options, 100.0)
    assert 0 < held < 0.5 * free


# ---- every editor, with its conformance options ----------------------------------------------------


def conformance_cases():
    """Every conformance class of the built-in editors (GRPO's needs a reward fixture: it has its
    own half-precision tests above)."""
    from easyetcon.testing import EditorConformance
    from tests.consolidation import test_conformance as consolidation
    from tests.intrinsic import test_conformance as intrinsic
    from tests.memory import test_conformance as memory
    from tests.merging import test_conformance as merging

    return [
        case for module in (intrinsic, memory, merging, consolidation) for case in vars(module).values()
        if isinstance(case, type) and issubclass(case, EditorConformance) and case is not EditorConformance
        and case.editor != "grpo"
    ]


def test_every_built_in_editor_is_edited_in_half_precision(host):
    covered = {case.editor for case in conformance_cases()} | {"grpo"}
    built_in = {info.name for info in host.registry.editors() if info.distribution == "easyetcon"}
    assert built_in <= covered, f"no half-precision case for {sorted(built_in - covered)}"


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("case", conformance_cases(), ids=lambda case: case.__name__)
def test_each_editor_edits_a_half_precision_model_like_its_conformance_test(host, case, dtype):
    """The conformance edit on the tiny Llama cast to ``dtype``: each target ahead by the suite's
    margin right after its edit (where the suite checks it on the tiny models), every weight
    finite and in its dtype, only the declared weights changed."""
    from easyetcon.testing import EditorConformance
    from easyetcon.testing.conformance import target_fit

    suite = case()
    model = suite.make_model("llama")
    model.torch_model.to(dtype)
    requests = suite.make_requests()
    before = {n: p.detach().clone() for n, p in model.torch_model.named_parameters()}
    chain = EditChain([(suite.editor, dict(suite.options))])
    declared, margins = set(), {}
    for group in ([requests] if suite.mode == "batch" else [[r] for r in requests]):
        result = chain.apply(model, group, mode="batch")
        declared |= {n for r in result.records if r.weights is not None for n in r.weights.names}
        margins.update({r.request_id: target_fit(model, r.prompt, r.target_new)[1] for r in group})
    assert_finite_and_in_dtype(model, dtype)
    changed = {n for n, p in model.torch_model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == declared and (changed or any(len(s) for s in model.memories.values()))
    on_tiny_models = case.test_edit_makes_model_predict_target is EditorConformance.test_edit_makes_model_predict_target
    if on_tiny_models and not suite.target_exemption:
        missed = {rid: round(m, 3) for rid, m in margins.items() if m < suite.target_margin}
        assert not missed, f"in {dtype} these targets are not ahead by {suite.target_margin}: {missed}"
