"""The editor conformance suite: the same checks for every editor, built-in or third-party.

Subclass :class:`EditorConformance` in a test module (the class name must start with ``Test``)
and set :attr:`editor` (its registered name). The suite checks that

* the editor is registered with a family, subfamily and strict config model;
* an edit makes the model predict each request's target where it did not before;
* undo restores every weight bit-exactly (state-dict hash) and empties memory stores;
* only the weights the editor declared were changed;
* invalid options are rejected with a :class:`~easyetcon.errors.ConfigError`, also from a
  chain spec, where the error names the step;
* the journal round-trips: records read back from disk roll the model back and replay it.

Override :meth:`make_model` or :meth:`make_requests` where an editor needs a trained model
(an in-context memory cannot make a random model answer anything).
"""

from __future__ import annotations

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
from easyetcon.testing.tiny import tiny_model, tiny_requests


def target_fit(model: Any, prompt: str, answer: str) -> tuple[float, float]:
    """``(mean NLL, margin)`` of ``answer`` after ``prompt`` under teacher forcing: the margin is
    the smallest, over the answer's tokens, of its logit minus the largest other logit."""
    prompt = model.rewrite_prompts([prompt])[0]
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
    #: Options for the edit (keep them small so tests run in seconds).
    options: ClassVar[dict[str, Any]] = {}
    #: Options that must be rejected, besides an unknown option name (always checked).
    invalid_options: ClassVar[list[dict[str, Any]]] = []
    #: Tiny architectures to run the behavioural checks on.
    architectures: ClassVar[tuple[str, ...]] = ("llama",)
    #: How many of :func:`~easyetcon.testing.tiny_requests` to edit at once.
    request_count: ClassVar[int] = 1
    #: Mode used for the edit: "sequential" or "batch".
    mode: ClassVar[str] = "sequential"

    # ---- hooks for subclasses ----------------------------------------------------------------
    def make_model(self, architecture: str) -> Any:
        return tiny_model(architecture, registry=get_host().registry)

    def make_requests(self) -> list[EditRequest]:
        return tiny_requests()[: self.request_count]

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

    # ---- the checks -----------------------------------------------------------------------------
    def test_is_registered_with_taxonomy(self) -> None:
        info = self._info()
        assert isinstance(info.family, Family)
        assert info.subfamily.strip()
        assert info.summary.strip()
        assert info.config_model.model_config.get("extra") == "forbid"
        info.create(self.options)  # the suite's own options must validate

    def test_edit_makes_model_predict_target(self, conformance_architecture: str) -> None:
        model = self.make_model(conformance_architecture)
        requests = self.make_requests()
        already = [r.request_id for r in requests if model.predicts(r.prompt, r.target_new)]
        assert not already, f"the unedited model already predicts {already}; choose other requests"
        before = {r.request_id: target_fit(model, r.prompt, r.target_new) for r in requests}
        self._chain().apply(model, requests, mode=self.mode)
        after = {r.request_id: target_fit(model, r.prompt, r.target_new) for r in requests}
        missed = [r.request_id for r in requests if not model.predicts(r.prompt, r.target_new)]
        assert not missed, (
            f"after the {self.editor!r} edit on {conformance_architecture!r} the model still does not predict the target of "
            + "; ".join(
                f"{rid}: target NLL {before[rid][0]:.3f} -> {after[rid][0]:.3f}, margin {after[rid][1]:+.3f}"
                for rid in missed
            )
            + " (margin: the target token's logit minus the best other token's, at its worst position; it must be > 0). "
            "A falling NLL with a negative margin needs more steps or a larger learning rate in `options`"
        )

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
