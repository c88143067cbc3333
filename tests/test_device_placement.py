"""Models placed by accelerate with an explicit device map edit exactly as they do on one device.

A CPU-only machine has one real device, but a device map whose entries are all ``"cpu"``
(``force_hooks``) still installs accelerate's hooks: an ``AlignDevicesHook`` on every block and
parameterised submodule that moves its inputs to the module's execution device, which is what
trips editors built on forward hooks on several GPUs. A map that offloads the embeddings to
disk also puts their weights on the ``meta`` device, so ``next(model.parameters()).device``
(transformers' ``model.device``) is ``meta`` while every block computes on the CPU: a tensor
placed by the first parameter's device fails there, or is recorded by :class:`MetaTensorsMade`.

What a CPU cannot show, a tensor made on the embeddings' device for a block on another GPU
(every execution device is the CPU here), is checked on GPUs by ``benchmarks/device_map_gpu.py``.
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

import pytest
import torch
from accelerate import cpu_offload, dispatch_model
from torch.overrides import TorchFunctionMode

import easyetcon
from easyetcon.chain import EditChain
from easyetcon.devices import current_value, execution_device, state_tensors
from easyetcon.errors import ChainStepError, OffloadedWeightError
from easyetcon.journal import Journal
from easyetcon.locate.layers import trace_mlp_effects
from easyetcon.testing import tiny_model, tiny_requests
from easyetcon.text import build_target_batch
from tests.consolidation.helpers import LetterReward
from tests.intrinsic.helpers import STRONG_VALUES, TINY_STATISTICS, mend_hypernetwork, sectioned, subject_final_requests
from tests.memory.helpers import serac_classifier_file


@pytest.fixture(autouse=True)
def host(easyetcon_host, tmp_path, monkeypatch):
    easyetcon_host.register(LetterReward(), name="letter-rewards")
    monkeypatch.setenv("EASYETCON_CACHE", str(tmp_path / "cache"))  # statistics never in ~/.cache
    # dispatch_model warns of offloading for every "cpu" entry, even when nothing is offloaded
    logging.getLogger("accelerate").setLevel(logging.ERROR)
    return easyetcon_host


def tpsft_requests():
    return tiny_requests()[:2]


def questions():
    return [r.model_copy(update={"metadata": {"qa_prompts": [f"Question: {r.prompt}? Answer:"]}}) for r in tiny_requests()[:1]]


#: Statistics collected by each model itself: a cache would hand the dispatched model the plain one's.
VALUES = {**STRONG_VALUES, "statistics": {**TINY_STATISTICS, "cache": False}}

#: Every built-in editor with options that run in about a second on a tiny model (those of the
#: conformance suite, fewer steps: the edit need not land, only be the same), and its requests.
EDITS = {
    "rome": (sectioned({**VALUES, "layer": 1, "kl_factor": 0.5}), subject_final_requests),
    "memit": (sectioned({**VALUES, "layers": [0, 1], "covariance_weight": 1.0}), subject_final_requests),
    "namet": (sectioned({**VALUES, "layers": [0, 1], "covariance_weight": 1.0}), subject_final_requests),
    "alphaedit": (sectioned({**VALUES, "layers": [0, 1], "learning_rate": 0.5}), subject_final_requests),
    "emmet": (sectioned({**VALUES, "layers": [0, 1]}), subject_final_requests),
    "anyedit": ({"base": {"editor": "memit", **sectioned({**VALUES, "layers": [0, 1], "covariance_weight": 1.0})}}, subject_final_requests),
    "ultraedit": ({"learning_rate": 0.01, "layers": [0, 1, 2], "module": "mlp_out"}, subject_final_requests),
    # a hypernetwork is trained for one model: options per architecture
    "mend": (lambda architecture: {"hypernetwork": mend_hypernetwork(architecture)}, subject_final_requests),
    "ft-l": ({"steps": 5, "learning_rate": 0.05, "layers": [1]}, subject_final_requests),
    "ft-m": ({"steps": 5, "learning_rate": 0.05, "layers": [1, 2], "modules": ["mlp_in", "mlp_out"]}, subject_final_requests),
    "locft-bf": ({"steps": 3, "learning_rate": 0.05, "layers": [1], "batch_size": 1}, subject_final_requests),
    "grace": ({"layer": 1, "steps": 10, "learning_rate": 0.5, "initial_radius": 0.01}, subject_final_requests),
    "retrieval-memory": ({"retriever": "tfidf", "threshold": 0.5}, subject_final_requests),
    "ike": ({"retriever": "tfidf", "k": 4}, subject_final_requests),
    "serac": ({"classifier": serac_classifier_file()}, subject_final_requests),
    "wise": ({"layer": -1, "steps": 10, "learning_rate": 50.0, "norm_bound": 100.0, "mask_ratio": 0.5}, subject_final_requests),
    "lora-merge": ({"steps": 5, "learning_rate": 0.05, "rank": 4, "layers": [1, 2]}, subject_final_requests),
    "tpsft": ({"rounds": 3, "learning_rate": 1e-2, "weights": {"layers": [1, 2]}}, tpsft_requests),
    "grpo": (
        {"steps": 2, "group_size": 2, "prompts_per_step": 1, "max_completion_tokens": 6, "learning_rate": 1e-2,
         "rewards": {"letter-e": 1.0}, "format_gate": None, "weights": {"layers": [1]}},
        questions,
    ),
}


def test_every_builtin_editor_is_checked_on_a_dispatched_model(host):
    builtin = {info.name for info in host.registry.editors() if info.distribution == "easyetcon"}
    assert builtin == set(EDITS)


# ---- placing a tiny model ----------------------------------------------------------------------


def device_map(model, *, embeddings="cpu", layers=None):
    """An explicit map over the model's top-level modules and each block: everything on the CPU,
    the embeddings (and a head tied to them) on ``embeddings``, block ``i`` on ``layers[i]`` if given."""
    torch_model, adapter = model.torch_model, model.adapter
    base = adapter.layers.rpartition(".")[0]
    entries = {name: "cpu" for name, _ in torch_model.named_children() if name != base}
    for name, _ in torch_model.get_submodule(base).named_children():
        entries[f"{base}.{name}"] = "cpu"
    del entries[adapter.layers]
    for index in range(adapter.num_layers(torch_model)):
        entries[f"{adapter.layers}.{index}"] = (layers or {}).get(index, "cpu")
    entries[adapter.embed] = embeddings
    head = adapter.lm_head_module(torch_model)
    if head.weight is adapter.embed_module(torch_model).weight:  # GPT-2: one tensor, one place
        entries[adapter.lm_head] = embeddings
    return entries


def dispatched(architecture, tmp_path, **placement):
    model = tiny_model(architecture)
    dispatch_model(model.torch_model, device_map=device_map(model, **placement), offload_dir=tmp_path / "offload", force_hooks=True)
    return model


PLACEMENTS = {
    "hooks": {},  # every entry "cpu": accelerate's hooks, nothing offloaded
    "offloaded-embeddings": {"embeddings": "disk"},  # the first parameter lives on meta
}


class MetaTensorsMade(TorchFunctionMode):
    """Records every torch call made from easyetcon's own code (the core and its plugins) whose
    result lies on the ``meta`` device: where an offloaded weight's device, taken for a device to
    compute on, would put a tensor. Reading offloaded values (``easyetcon.devices``) is exempt."""

    ROOTS = (str(Path(easyetcon.__file__).parent), str(Path(__file__).parents[1] / "plugins"))
    EXEMPT = str(Path(easyetcon.__file__).parent / "devices.py")
    TORCH = str(Path(torch.__file__).parent)

    def __init__(self) -> None:
        super().__init__()
        self.made: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        given = {id(a) for a in (*args, *kwargs.values())}  # an in-place call returns its input: nothing made
        outputs = result if isinstance(result, (tuple, list)) else (result,)
        if any(isinstance(t, torch.Tensor) and t.device.type == "meta" and id(t) not in given for t in outputs):
            frame = sys._getframe(1)
            while frame is not None and frame.f_code.co_filename.startswith(self.TORCH):
                frame = frame.f_back
            where = frame.f_code.co_filename if frame is not None else ""
            if where.startswith(self.ROOTS) and where != self.EXEMPT:
                self.made.append(f"{where}:{frame.f_lineno} {getattr(func, '__name__', func)}")
        return result


def weights(model):
    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in state_tensors(model.torch_model).items()}


def memories(model):
    return {
        key: [(entry_id, entry.data, {k: t.clone() for k, t in entry.tensors.items()}) for entry_id, entry in store.items()]
        for key, store in model.memories.items()
    }


def assert_same_memories(left, right):
    assert left.keys() == right.keys()
    for key in left:
        assert [(i, d) for i, d, _ in left[key]] == [(i, d) for i, d, _ in right[key]]
        for (_, _, a), (_, _, b) in zip(left[key], right[key]):
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"memory {key!r} differs"


# ---- (a, b) every editor: the same edit, bit for bit, and a bit-exact undo -----------------------------


#: GPT-2's head is its embeddings: offloading them offloads the head, which GRPO refuses (tested below).
CASES = [
    (editor, architecture, placement)
    for editor in EDITS for architecture in ("llama", "gpt2") for placement in PLACEMENTS
    if (editor, architecture, placement) != ("grpo", "gpt2", "offloaded-embeddings")
]


@pytest.mark.parametrize(("editor", "architecture", "placement"), CASES)
def test_dispatched_model_gets_the_same_edit_and_undoes_it(editor, architecture, placement, tmp_path):
    options, make_requests = EDITS[editor]
    options = options(architecture) if callable(options) else options
    plain = tiny_model(architecture)
    placed = dispatched(architecture, tmp_path, **PLACEMENTS[placement])
    original = placed.state_hash()
    assert original == plain.state_hash()

    EditChain([(editor, options)]).apply(plain, make_requests(), mode="batch")
    recorder = MetaTensorsMade()
    with recorder:
        result = EditChain([(editor, options)]).apply(placed, make_requests(), mode="batch")
    assert not recorder.made, f"{editor} made tensors on the meta device (an offloaded weight's): {recorder.made[:5]}"

    expected, got = weights(plain), weights(placed)
    assert expected.keys() == got.keys()
    differing = [name for name in expected if not torch.equal(expected[name], got[name])]
    assert not differing, f"{editor} on the {placement} model differs from the plain model in {differing}"
    assert_same_memories(memories(plain), memories(placed))
    assert placed.state_hash() != original or any(len(store) for store in placed.memories.values()), "the edit changed nothing"

    result.undo(placed)
    assert placed.state_hash() == original
    assert all(len(store) == 0 for store in placed.memories.values())


def test_the_recorder_catches_easyetcon_code_placing_a_tensor_by_the_first_parameter(tmp_path):
    """The check above can fail: easyetcon code moving a batch to the first parameter's device
    (transformers' ``model.device``) is recorded, even where nothing would compute with it."""
    model = dispatched("llama", tmp_path, embeddings="disk")
    request = subject_final_requests()[0]
    batch = build_target_batch(model.tokenizer, [request.prompt], [request.target_new])
    recorder = MetaTensorsMade()
    with recorder:
        batch.to(model.device)
        torch.zeros(3, device="meta")  # made here, not by easyetcon: not recorded
    assert recorder.made == []
    with recorder:
        batch.to(next(model.torch_model.parameters()).device)
    assert recorder.made and all("easyetcon/text.py" in where for where in recorder.made)


def test_token_ids_go_where_the_embeddings_compute_not_to_the_first_parameter(tmp_path):
    model = dispatched("llama", tmp_path, embeddings="disk")
    embeddings = model.adapter.embed_module(model.torch_model)
    assert embeddings.weight.device.type == "meta"
    assert next(model.torch_model.parameters()).device.type == "meta"
    assert model.device == execution_device(embeddings) == torch.device("cpu")
    plain = tiny_model("llama")
    assert torch.equal(current_value(embeddings), plain.adapter.embed_module(plain.torch_model).weight)
    prompts = [request.prompt for request in subject_final_requests()]
    assert model.generate(prompts) == plain.generate(prompts)
    assert [model.predicts(p, " Paris") for p in prompts] == [plain.predicts(p, " Paris") for p in prompts]


def test_causal_trace_reads_offloaded_embeddings(tmp_path):
    """Tracing scales its noise by the embeddings' spread, read from accelerate's map when offloaded."""
    requests = subject_final_requests()
    placed = dispatched("llama", tmp_path, embeddings="disk")
    assert trace_mlp_effects(placed, requests) == trace_mlp_effects(tiny_model("llama"), requests)


# ---- a model split over devices: logits gathered, not kept by index ------------------------------------


@pytest.mark.parametrize("editor", ["rome", "memit"])
def test_value_optimisation_on_a_model_split_over_devices_reads_full_logits(editor, monkeypatch):
    """On several devices transformers gets ``logits_to_keep`` on the first device while the last
    hidden states sit on another, so the value optimisation computes every position's logits and
    gathers the kept ones itself. That path runs here by declaring the model split; it must give
    the edit of the kept-logits path (to rounding: the head's matrix product has other shapes)."""
    import easyetcon.locate.values as values

    options, make_requests = EDITS[editor]
    reference = tiny_model("llama")
    EditChain([(editor, options)]).apply(reference, make_requests(), mode="batch")

    model = tiny_model("llama")
    kept = []
    forward = model.torch_model.forward

    @functools.wraps(forward)  # the same signature: the value passes look at it
    def spy(*args, **kwargs):
        kept.append(kwargs.get("logits_to_keep"))
        return forward(*args, **kwargs)

    monkeypatch.setattr(model.torch_model, "forward", spy)
    monkeypatch.setattr(values, "runs_on_one_device", lambda torch_model: False)
    EditChain([(editor, options)]).apply(model, make_requests(), mode="batch")
    assert kept and not any(isinstance(k, torch.Tensor) for k in kept)  # no index went to the model
    for layer in options.get("layers", [options.get("layer")]):
        name = model.adapter.weight_name("mlp_out", layer)
        before = tiny_model("llama").parameter(name).detach()
        change, expected = model.parameter(name).detach() - before, reference.parameter(name).detach() - before
        assert float(expected.norm()) > 1e-3
        assert float((change - expected).norm()) <= 1e-3 * float(expected.norm())


# ---- (c) an offloaded weight is refused, naming the module ---------------------------------------------


#: Editors that write block 1's MLP weights, with options that write nothing else.
WRITING_BLOCK_1 = {
    "rome": EDITS["rome"],
    "memit": (sectioned({**VALUES, "layers": [1, 2], "covariance_weight": 1.0}), subject_final_requests),
    "ultraedit": ({"learning_rate": 0.01, "layers": [1], "module": "mlp_out"}, subject_final_requests),
    "ft-m": EDITS["ft-m"],
    "lora-merge": EDITS["lora-merge"],
    "tpsft": EDITS["tpsft"],
    "grpo": EDITS["grpo"],
}


@pytest.mark.parametrize("editor", list(WRITING_BLOCK_1))
def test_editing_an_offloaded_block_fails_clearly_and_changes_nothing(editor, tmp_path, monkeypatch):
    import easyetcon.statistics as statistics

    options, make_requests = WRITING_BLOCK_1[editor]
    model = dispatched("llama", tmp_path, layers={1: "disk"})
    down = model.adapter.module(model.torch_model, "mlp_out", 1)
    assert down.weight.device.type == "meta" and execution_device(down) == torch.device("cpu")
    original = model.state_hash()
    assert original == tiny_model("llama").state_hash()  # offloaded values are hashed, not skipped
    collected = []
    monkeypatch.setattr(statistics, "collect_second_moments", lambda *a, **k: collected.append(1))

    with pytest.raises(ChainStepError) as raised:
        EditChain([(editor, options)]).apply(model, make_requests(), mode="batch")
    message = str(raised.value)
    assert isinstance(raised.value.__cause__, OffloadedWeightError)
    assert "model.layers.1.mlp" in message and "'disk'" in message
    assert "meta device" in message and "Load it onto a device" in message
    assert "while preparing" in message and not collected  # refused before any statistics were read
    assert model.state_hash() == original
    assert down.weight.device.type == "meta"


def test_a_step_that_starts_writing_an_offloaded_block_later_is_refused_then(tmp_path):
    """A consolidator running every second application writes nothing when the chain starts, so
    only the check before each step can see it reach the offloaded block."""
    options = {**EDITS["tpsft"][0], "schedule": {"every": 2}}
    model = dispatched("llama", tmp_path, layers={1: "disk"})
    original = model.state_hash()
    with pytest.raises(ChainStepError, match=r"step 0 \(tpsft, editor 'tpsft'\) failed on request\(s\) tiny-1") as raised:
        EditChain([("tpsft", options)]).apply(model, tpsft_requests(), mode="sequential")
    assert isinstance(raised.value.__cause__, OffloadedWeightError)
    assert "cannot edit model.layers.1.mlp.down_proj" in str(raised.value)
    assert model.state_hash() == original


def test_a_model_offloaded_whole_by_cpu_offload_is_refused_before_the_edit(tmp_path):
    model = tiny_model("llama")
    original = model.state_hash()
    cpu_offload(model.torch_model, execution_device=torch.device("cpu"))
    assert all(p.device.type == "meta" for p in model.torch_model.parameters())
    assert model.state_hash() == original
    with pytest.raises(ChainStepError, match=r"cannot edit model\.layers\.1\.mlp\.down_proj: accelerate offloaded"):
        EditChain([("ft-l", EDITS["ft-l"][0])]).apply(model, subject_final_requests(), mode="batch")
    assert model.state_hash() == original


def test_grpo_refuses_an_offloaded_lm_head_clearly(tmp_path):
    """TRL's fused log-prob head reads the head's weight itself, which accelerate never loads."""
    options, make_requests = EDITS["grpo"]
    model = dispatched("gpt2", tmp_path, embeddings="disk")  # GPT-2's head is its embeddings
    original = model.state_hash()
    with pytest.raises(ChainStepError, match=r"grpo cannot train a model whose LM head \(lm_head\) accelerate offloaded"):
        EditChain([("grpo", options)]).apply(model, make_requests(), mode="batch")
    assert model.state_hash() == original


def test_memory_editors_hook_an_offloaded_block(tmp_path):
    """GRACE writes no weight: it hooks the block's output wherever accelerate computes it."""
    options, make_requests = EDITS["grace"]
    plain = tiny_model("llama")
    model = dispatched("llama", tmp_path, layers={1: "disk"})
    for target in (plain, model):
        EditChain([("grace", options)]).apply(target, make_requests(), mode="batch")
    assert_same_memories(memories(plain), memories(model))
    for request in make_requests():
        assert model.predicts(request.prompt, request.target_new) == plain.predicts(request.prompt, request.target_new)


# ---- the journal of a dispatched model ---------------------------------------------------------------


def test_journal_of_a_model_with_offloaded_embeddings_rolls_back_and_replays(tmp_path):
    options, make_requests = EDITS["memit"]
    model = dispatched("llama", tmp_path, embeddings="disk")
    original = model.state_hash()
    EditChain([("memit", options)]).apply(model, make_requests(), mode="sequential", journal=tmp_path / "journal")
    edited = model.state_hash()
    assert edited != original

    journal = Journal.open(tmp_path / "journal")
    fresh = dispatched("llama", tmp_path / "second", embeddings="disk")
    journal.replay(fresh)
    assert fresh.state_hash() == edited
    journal.rollback(model)
    assert model.state_hash() == original
