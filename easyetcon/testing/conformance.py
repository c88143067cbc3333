"""The editor conformance suite: the same checks for every editor, built-in or third-party.

Subclass :class:`EditorConformance` in a test module (the class name must start with ``Test``)
and set :attr:`~EditorConformance.editor` (its registered name). Each check is one test method;
those that edit run once per architecture in :attr:`~EditorConformance.architectures` (every
tiny architecture by default). The suite checks that

* the editor is registered with a family, subfamily, summary and strict config model, and the
  suite's own options validate;
* an edit makes the model predict each request's target where it did not before, by a margin:
  at every target token the target's log-probability beats every other token's by at least
  :attr:`~EditorConformance.target_margin` (in sequential mode, right after the request's own
  edit);
* undo restores every weight bit-exactly (state-dict hash) and empties memory stores;
* only the weights the editor declared were changed;
* invalid options are rejected with a :class:`~easyetcon.errors.ConfigError`, also from a
  chain spec, where the error names the step;
* the journal round-trips: records read back from disk roll the model back and replay it;
* asked in chat form (``model.prompt_format``), every request prompt the editor feeds the model
  is in that form.

Override :meth:`~EditorConformance.make_model` or :meth:`~EditorConformance.make_requests`
where an editor needs a trained model (an in-context memory cannot make a random model answer
anything); an editor that does not promise the target at all sets
:attr:`~EditorConformance.target_exemption`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import pytest
import torch

from easyetcon.chain import EditChain
from easyetcon.errors import ConfigError
from easyetcon.journal import Journal
from easyetcon.plugins import get_host
from easyetcon.registry import Family
from easyetcon.requests import EditRequest
from easyetcon.spec import parse_chain_spec
from easyetcon.testing.tiny import ARCHITECTURES, TINY_CHAT_TEMPLATE, tiny_learnable_requests, tiny_model


def target_fit(model: Any, prompt: str, answer: str) -> tuple[float, float]:
    """``(mean NLL, margin)`` of ``answer`` after ``prompt`` (as the model is asked it: rewritten by
    its memories, in its prompt format) under teacher forcing. The margin is the smallest, over the answer's tokens, of its logit
    minus the largest other logit, which equals its log-probability minus the best other's:
    positive exactly where greedy decoding reproduces the answer."""
    prompt = model.as_asked([prompt])[0]
    prompt_ids = model.tokenizer(prompt)["input_ids"]
    answer_ids = model.encode_answer(answer)
    with torch.no_grad():
        logits = model.torch_model(input_ids=torch.tensor([prompt_ids + answer_ids], device=model.device)).logits[0].float()
    rows = logits[len(prompt_ids) - 1 : len(prompt_ids) + len(answer_ids) - 1]
    targets = torch.tensor(answer_ids, device=rows.device)
    nll = float(-torch.log_softmax(rows, dim=-1).gather(1, targets[:, None]).mean())
    chosen = rows.gather(1, targets[:, None])[:, 0]
    others = rows.scatter(1, targets[:, None], float("-inf")).max(dim=1).values
    return nll, float((chosen - others).min())


class EditorConformance:
    """Base class of an editor's conformance tests; see the module docstring."""

    #: The registered editor name.
    editor: ClassVar[str] = ""
    #: Options for the edit: enough steps (or a large enough learning rate) for the target check
    #: on every architecture, and no more, so the suite runs in seconds.
    options: ClassVar[dict[str, Any]] = {}
    #: Options that must be rejected, besides an unknown option name (always checked).
    invalid_options: ClassVar[list[dict[str, Any]]] = []
    #: Tiny architectures the checks that edit run on: all of them by default, since they differ
    #: where editors go wrong (GPT-2's transposed Conv1D weights and tied head, GPT-NeoX's fused
    #: attention projection, GPT-J's parallel block, the gated MLP of the Llama family).
    architectures: ClassVar[tuple[str, ...]] = ARCHITECTURES
    #: How many of :func:`~easyetcon.testing.tiny_learnable_requests` to edit; with two or more,
    #: an editor that mixes up requests, or edits with an earlier request's target, fails.
    request_count: ClassVar[int] = 2
    #: Mode used for the edit: "sequential" (one request per application) or "batch".
    mode: ClassVar[str] = "sequential"
    #: How far, in nats, each target token's log-probability must beat the best other token's
    #: after the edit (at the target's worst position): a bare argmax could be a near-tie that
    #: rounding or another BLAS flips. Small, because a tiny random model's LM head (0.02-std
    #: rows) lets no edit below it put one token more than a few tenths of a nat ahead.
    target_margin: ClassVar[float] = 0.1
    #: Why this editor is not held to the target check, or "" (it is). Only for an editor whose
    #: promise is not "the model now predicts the target" on a random model, such as a
    #: consolidator that reinforces answers the model already samples. The check is then
    #: reported as skipped with this reason; every other check still runs.
    target_exemption: ClassVar[str] = ""

    # ---- hooks for subclasses ----------------------------------------------------------------
    def make_model(self, architecture: str) -> Any:
        """The model the checks that edit start from: a tiny random one of ``architecture``."""
        return tiny_model(architecture, registry=get_host().registry)

    def make_requests(self) -> list[EditRequest]:
        """The requests they edit: the first :attr:`request_count` learnable tiny requests."""
        available = tiny_learnable_requests()
        if not 1 <= self.request_count <= len(available):
            pytest.fail(
                f"{type(self).__name__}.request_count is {self.request_count}; the tiny learnable requests "
                f"number {len(available)}: choose 1 to {len(available)}, or override make_requests"
            )
        return available[: self.request_count]

    # ---- helpers ------------------------------------------------------------------------------
    def _info(self) -> Any:
        if not self.editor:
            pytest.fail(f"{type(self).__name__} must set the class attribute 'editor'")
        return get_host().registry.editor(self.editor)

    def _chain(self) -> EditChain:
        return EditChain([(self.editor, dict(self.options))])

    @staticmethod
    def _full_state(model: Any) -> dict[str, torch.Tensor]:
        return {n: p.detach().to("cpu", copy=True) for n, p in model.torch_model.named_parameters()}

    def assert_edit_predicts_targets(self, model: Any, requests: Sequence[EditRequest], *, where: str) -> None:
        """Edit ``model`` (``where`` names it in messages, e.g. "the tiny gpt2 model") with ``requests`` in :attr:`mode`
        and fail unless no target was predicted before and each is ahead by :attr:`target_margin`
        after its edit: in sequential mode right after the application that edited it (one
        request per application, as ``mode="sequential"`` applies them), in batch mode after the
        one application. That a later edit keeps an earlier one is not asserted: it is what
        lifelong evaluation measures, and fine-tuning a random model keeps it poorly.
        The body of :meth:`test_edit_makes_model_predict_target`, for subclasses that override
        it to run on a model of their own."""
        before = {r.request_id: target_fit(model, r.prompt, r.target_new) for r in requests}
        already = [f"{rid} (margin {margin:+.3f})" for rid, (_, margin) in before.items() if margin > 0]
        if already:
            pytest.fail(
                f"before any edit, {where} already predicts the target of {', '.join(already)}; "
                "choose other requests (override make_requests)"
            )
        chain = self._chain()
        after = {}
        if self.mode == "batch":
            chain.apply(model, requests, mode="batch")
            after = {r.request_id: target_fit(model, r.prompt, r.target_new) for r in requests}
        else:
            for request in requests:
                chain.apply(model, [request], mode=self.mode)
                after[request.request_id] = target_fit(model, request.prompt, request.target_new)
        missed = [r for r in requests if after[r.request_id][1] < self.target_margin]
        when = "after the batch edit" if self.mode == "batch" else "each right after its own edit"
        if missed:
            pytest.fail(
                f"{self.editor!r} ({self.mode} mode) on {where}: these targets are not ahead by the margin "
                f"{self.target_margin:.2f} ({when}):\n"
                + "\n".join(
                    f"  {r.request_id}: {r.prompt!r} -> {r.target_new!r}: target NLL "
                    f"{before[r.request_id][0]:.3f} -> {after[r.request_id][0]:.3f}, "
                    f"margin {before[r.request_id][1]:+.3f} -> {after[r.request_id][1]:+.3f}"
                    for r in missed
                )
                + "\n(margin: the target token's log-probability minus the best other token's, at the target's "
                "worst position.) A falling NLL with too small a margin needs more steps or a larger learning "
                "rate in `options`; an NLL that did not fall means the edit does not reach the output"
            )

    # ---- the checks -----------------------------------------------------------------------------
    def test_is_registered_with_taxonomy(self) -> None:
        info = self._info()
        assert isinstance(info.family, Family)
        assert info.subfamily.strip()
        assert info.summary.strip()
        assert info.config_model.model_config.get("extra") == "forbid"
        info.create(self.options)  # the suite's own options must validate

    def test_edit_makes_model_predict_target(self, conformance_architecture: str) -> None:
        if self.target_exemption:
            pytest.skip(f"{type(self).__name__}.target_exemption: {self.target_exemption}")
        model = self.make_model(conformance_architecture)
        if type(self).make_model is EditorConformance.make_model:
            where = f"the tiny {conformance_architecture} model"
        else:
            where = f"the model of {type(self).__name__}.make_model({conformance_architecture!r})"
        self.assert_edit_predicts_targets(model, self.make_requests(), where=where)

    def test_undo_restores_bit_exactly(self, conformance_architecture: str) -> None:
        model = self.make_model(conformance_architecture)
        original = model.state_hash()
        result = self._chain().apply(model, self.make_requests(), mode=self.mode)
        changed = model.state_hash() != original or any(len(s) for s in model.memories.values())
        assert changed, "the edit changed neither weights nor memory"
        result.undo(model)
        assert model.state_hash() == original
        assert all(len(store) == 0 for store in model.memories.values())

    def test_changes_only_declared_weights(self, conformance_architecture: str) -> None:
        model = self.make_model(conformance_architecture)
        before = self._full_state(model)
        result = self._chain().apply(model, self.make_requests(), mode=self.mode)
        after = self._full_state(model)
        changed = {name for name in before if not torch.equal(before[name], after[name])}
        recorded = set()
        for record in result.records:
            if record.weights is not None:
                recorded |= set(record.weights.names)
        assert changed == recorded, f"undeclared weight changes: {sorted(changed - recorded)}"

    def test_invalid_options_rejected(self) -> None:
        info = self._info()
        for bad in [{"no_such_option_xyz": 1}, *self.invalid_options]:
            with pytest.raises(ConfigError):
                info.create({**self.options, **bad})
            spec = {"chain": [{"editor": self.editor, **self.options, **bad}]}
            with pytest.raises(ConfigError, match="step 0"):
                parse_chain_spec(spec)

    def test_journal_round_trips(self, conformance_architecture: str, tmp_path: Any) -> None:
        model = self.make_model(conformance_architecture)
        original = model.state_hash()
        result = self._chain().apply(model, self.make_requests(), mode=self.mode, journal=tmp_path / "journal")
        edited = model.state_hash()
        journal = Journal.open(tmp_path / "journal")
        assert len(journal) == len(result.records)
        for position, record in enumerate(result.records):
            loaded = journal.record(position)
            assert loaded.editor == record.editor and loaded.config == record.config
            if record.weights is not None:
                assert loaded.weights is not None
                for name, change in record.weights.changes.items():
                    assert loaded.weights.changes[name].after == change.after
                    assert loaded.weights.changes[name].form == change.form
        journal.rollback(model)
        assert model.state_hash() == original
        assert all(len(store) == 0 for store in model.memories.values())
        fresh = Journal.open(tmp_path / "journal")
        assert all(entry["status"] == "undone" for entry in fresh.entries())
        for position in range(len(fresh)):
            fresh.record(position).redo(model)
        assert model.state_hash() == edited

    def test_asks_in_the_models_prompt_format(self) -> None:
        """Asked in chat form (the tiny Llama with :data:`~easyetcon.testing.tiny.TINY_CHAT_TEMPLATE`),
        the editor must read every request prompt it feeds the model in that form: a forward
        pass whose text holds a request's prompt without the user turn opened before it was
        edited in a form the evaluator never asks in."""
        model = self.make_model("llama")
        model.tokenizer.chat_template = TINY_CHAT_TEMPLATE
        model.prompt_format = "chat"
        requests = self.make_requests()
        read: list[torch.Tensor] = []

        def record(_module: Any, args: tuple, kwargs: dict[str, Any]) -> None:
            ids = kwargs.get("input_ids", args[0] if args else None)
            if isinstance(ids, torch.Tensor):
                read.append(ids.detach().to("cpu"))

        handle = model.torch_model.register_forward_pre_hook(record, with_kwargs=True)
        try:
            self._chain().apply(model, requests, mode=self.mode)
        finally:
            handle.remove()
        texts = [model.tokenizer.decode(row) for ids in read for row in ids]
        opened = "<|im_start|>user\n"
        outside = sorted({
            text for text in texts for r in requests
            if r.prompt in text and opened not in text[: text.rindex(r.prompt)]
        })
        assert not outside, (
            f"{self.editor!r} read request prompts outside the model's prompt format (chat): "
            f"{outside[:2]}; build model inputs from model.format_prompt(prompt)"
        )
