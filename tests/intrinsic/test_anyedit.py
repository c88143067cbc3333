"""AnyEdit: the properties that define it, beyond the conformance suite.

A long target becomes one chunk edit per chunk, each key read at the last token of the prompt
and the chunks before it, all inserted in one batch of the base editor; one chunk is the base
editor's own edit."""

from __future__ import annotations

import pytest
import torch

from easyetcon.chain import EditChain
from easyetcon.locate import EditSites
from easyetcon.locate.keys import fact_keys
from easyetcon.locate.values import EditNotReachedWarning
from easyetcon.plugins import get_host
from easyetcon.requests import EditRequest
from easyetcon.testing import tiny_model
from easyetcon.testing.conformance import target_fit
from easyetcon_intrinsic.anyedit import AnyEdit, AnyEditConfig, ChunkOptions, split_target
from tests.intrinsic.helpers import STRONG_VALUES, sectioned

BASE_OPTIONS = sectioned({**STRONG_VALUES, "layers": [0, 1], "fact_token": "last"})
#: Each base editor's own options on the tiny models (MEMIT's λ small: its statistics are few).
OWN_OPTIONS = {"memit": {"covariance_weight": 1.0}, "alphaedit": {}, "emmet": {}}
#: Three words of one tiny-tokenizer token each, so chunks of one token are its three words.
LONG_TARGET = "Paris guitar French"


def long_request() -> EditRequest:
    return EditRequest(prompt="The mother tongue of Danielle Darrieux", subject="Danielle Darrieux", target_new=LONG_TARGET, case_id="long-0")


def anyedit(size: int = 1, base: str = "memit", **extra) -> AnyEdit:
    return AnyEdit(AnyEditConfig(chunks={"size": size}, base=base_options(base, **extra)))


def base_options(base: str = "memit", **extra) -> dict:
    return {"editor": base, **BASE_OPTIONS, **OWN_OPTIONS[base], **extra}


def make(arch: str = "llama"):
    return tiny_model(arch, registry=get_host().registry)


def token_count(model):
    return lambda text: len(model.encode_answer(text))


def test_token_windows_cut_between_words_and_join_back_to_the_target():
    model = make()
    target = "Paris  guitar French\nParis guitar"
    chunks = split_target(target, ChunkOptions(size=2), token_count(model))
    assert " ".join(chunks) == "Paris guitar French Paris guitar"  # white space counts as one space
    assert all(token_count(model)(chunk) <= 2 for chunk in chunks) and len(chunks) == 3
    # a word longer than the window is a chunk of its own, never cut
    assert split_target("Danielle", ChunkOptions(size=1), token_count(model)) == ["Danielle"]


def test_sentence_chunks_are_the_targets_sentences():
    chunks = split_target("Paris. It is in France! Or not?", ChunkOptions(unit="sentence"), len)
    assert chunks == ["Paris.", "It is in France!", "Or not?"]


def test_each_chunk_is_located_after_the_chunks_before_it_and_keyed_at_the_contexts_last_token():
    model, editor = make(), anyedit(size=1)
    chunk_requests, contexts = editor.chunked(model, [long_request()])
    assert [r.target_new for r in chunk_requests] == ["Paris", "guitar", "French"]
    assert contexts == ["", " Paris", " Paris guitar"]
    assert [r.request_id for r in chunk_requests] == ["long-0#1", "long-0#2", "long-0#3"]
    editor.prepare(model, [long_request()])
    sites = editor.base.locate(model, chunk_requests, contexts)
    prefixes = editor.base.prefixes(model)
    for located, request, context in zip(sites.located, chunk_requests, contexts):
        assert located.texts[0] == request.prompt + context
        assert located.position == len(model.tokenizer(request.prompt + context)["input_ids"]) - 1
        # the key is the one read at the last token of the prompt followed by the earlier chunks
        after = request.model_copy(update={"prompt": request.prompt + context})
        expected = fact_keys(model, 0, [after], prefixes, fact_token="last")
        assert torch.allclose(sites.keys(0)[sites.located.index(located)], expected[0], atol=1e-6)


@pytest.mark.parametrize("base", ["memit", "alphaedit", "emmet"])
def test_one_batch_inserts_one_key_value_pair_per_chunk_in_every_layer(monkeypatch, base):
    model = make()
    written = []
    original = EditSites.write
    monkeypatch.setattr(EditSites, "write", lambda sites, layer, left, right: (written.append((layer, left.shape, right.shape)), original(sites, layer, left, right)))
    requests = [long_request(), EditRequest(prompt="Where is the Eiffel Tower", subject="Eiffel Tower", target_new="guitar", case_id="short")]
    EditChain([("anyedit", {"chunks": {"size": 1}, "base": base_options(base)})]).apply(model, requests, mode="batch")
    width = model.torch_model.config.hidden_size
    # 3 chunks + 1: one batch, so every layer is written once with 4 key rows
    assert [layer for layer, _, _ in written] == [0, 1]
    assert all(left[1] == 4 and right[0] == 4 and left[0] == width for _, left, right in written)


def test_a_one_chunk_target_is_the_base_editors_edit():
    request = EditRequest(prompt="The mother tongue of Danielle Darrieux", subject="Danielle Darrieux", target_new="Paris", case_id="one")
    by_anyedit, by_memit = make(), make()
    EditChain([("anyedit", {"chunks": {"size": 4}, "base": base_options()})]).apply(by_anyedit, [request])
    EditChain([("memit", {**BASE_OPTIONS, **OWN_OPTIONS["memit"]})]).apply(by_memit, [request])
    for layer in (0, 1):
        name = by_memit.adapter.weight_name("mlp_out", layer)
        assert torch.equal(by_anyedit.parameter(name), by_memit.parameter(name))


def test_chunk_by_chunk_states_a_long_target_that_one_edit_at_the_prompt_does_not():
    """On a tiny random model information barely moves between positions: a value written at the
    prompt's last token states the first word only, while AnyEdit writes one at every chunk's context."""
    request = long_request()
    by_anyedit, by_memit = make(), make()
    assert target_fit(by_anyedit, request.prompt, LONG_TARGET)[1] < 0
    EditChain([("anyedit", {"chunks": {"size": 1}, "base": base_options()})]).apply(by_anyedit, [request])
    with pytest.warns(EditNotReachedWarning):  # one value at the prompt cannot make all three words follow
        EditChain([("memit", {**BASE_OPTIONS, **OWN_OPTIONS["memit"]})]).apply(by_memit, [request])
    assert target_fit(by_anyedit, request.prompt, LONG_TARGET)[1] > 0.1
    assert target_fit(by_memit, request.prompt, LONG_TARGET)[1] < 0
    generated = by_anyedit.generate([request.prompt], max_new_tokens=3)[0]
    assert generated.strip() == LONG_TARGET


def test_alphaedit_base_journals_one_key_per_chunk_and_a_replay_rebuilds_its_state():
    model, editor = make(), anyedit(size=1, base="alphaedit")
    requests = [long_request()]
    editor.prepare(model, requests)
    editor.edit(model, requests)
    state = editor.journal_state(model, requests)
    assert sorted(state) == ["edited_keys.0", "edited_keys.1"] and all(keys.shape[0] == 3 for keys in state.values())
    fresh = anyedit(size=1, base="alphaedit")
    fresh.prepare(make(), requests)  # the unedited model: the projectors are the original run's
    replayed = make()
    fresh.prepare(replayed, requests)
    fresh.restore_state(replayed, requests, state)
    for layer in (0, 1):
        assert torch.equal(fresh.base.solver(replayed, layer).inverse, editor.base.solver(model, layer).inverse)


def test_the_base_editor_reads_keys_at_the_contexts_last_token_without_prefixes_and_is_memit_by_default():
    from easyetcon.errors import ConfigError

    info = get_host().registry.editor("anyedit")
    with pytest.raises(ConfigError, match="fact_token"):
        info.validate_options({"base": {"editor": "memit", "key": {"fact_token": "subject_last"}}})
    config = info.validate_options({"base": {"layers": [3]}})
    assert config.base.editor == "memit" and config.base.key.fact_token == "last" and config.base.key.prefixes == 0
    assert info.validate_options({"base": {"editor": "alphaedit"}}).base.value.learning_rate == 0.1  # AlphaEdit's own defaults
