"""What an editor of each family takes and returns.

Editors are plain classes constructed as ``EditorClass(config)``; they satisfy one of these
protocols structurally (no base class to inherit). The chain, not the editor, takes care of
snapshots, records, undo and the journal, so an editor's file holds only its algorithm.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pydantic import BaseModel

if TYPE_CHECKING:  # torch only for annotations: importing the host stays fast (`easyetcon --help`)
    import torch

    from easyetcon.model import EditableModel
    from easyetcon.records import MemoryStore
    from easyetcon.requests import EditRequest


@runtime_checkable
class WeightEditor(Protocol):
    """An editor that changes model weights in place: intrinsic, merging and consolidation.

    The chain first asks :meth:`weights_to_edit` which parameters will change, snapshots them,
    calls :meth:`edit`, and records the before/after tensors so the step can be undone
    bit-exactly. Changing a parameter that was not declared is a bug the conformance suite
    (:mod:`easyetcon.testing`) catches.
    """

    config: BaseModel

    def weights_to_edit(self, model: EditableModel, requests: Sequence[EditRequest]) -> list[str]:
        """Names (as in ``model.torch_model.named_parameters()``) of every parameter ``edit`` may change."""
        ...

    def edit(self, model: EditableModel, requests: Sequence[EditRequest]) -> None:
        """Change the declared weights so the model states each request's ``target_new``."""
        ...


class PreparedEditor(Protocol):
    """Optional methods of any editor, for runs that must resume bit-exactly.

    An editor that derives something from the model at first use (key statistics, generated
    prefixes, a layer chosen by tracing) computes it in :meth:`prepare`. An editor that carries
    state from one edit to the next (AlphaEdit's moment of edited keys) returns what it needs
    from :meth:`journal_state` and rebuilds it in :meth:`restore_state`. The chain calls these;
    an editor without them is treated as stateless.
    """

    def prepare(self, model: EditableModel, requests: Sequence[EditRequest]) -> None:
        """Derive everything this editor computes from the model, before any edit.

        The chain calls it for every step before the first edit of :meth:`EditChain.apply`, and
        a resumed run calls it on the freshly loaded *unedited* model before it replays the
        journal, so both see the same model and derive the same values. ``requests`` is the
        first group the run edits (e.g. for a layer chosen by causal tracing). Must be cheap
        when called again for the same model.
        """
        ...

    def journal_state(self, model: EditableModel, requests: Sequence[EditRequest]) -> dict[str, torch.Tensor]:
        """Tensors to store in this step's record so :meth:`restore_state` can rebuild the
        editor's carried state on replay (e.g. the edited keys). Called right after :meth:`edit`.
        Keep it small: it is stored once per step."""
        ...

    def restore_state(self, model: EditableModel, requests: Sequence[EditRequest], state: dict[str, torch.Tensor]) -> None:
        """Rebuild carried state from a replayed step's :meth:`journal_state`, in journal order,
        after the step's weights were replayed: afterwards the editor must be in the state it
        had after that step in the original run."""
        ...


class LastEditState:
    """What an editor's last edit added to the state it carries, per model, kept for
    :meth:`PreparedEditor.journal_state`, which the chain calls right after that edit."""

    def __init__(self, editor: str) -> None:
        import weakref

        self.editor = editor
        self._last: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # torch model -> (request ids, state)

    def remember(self, model: EditableModel, request_ids: Sequence[Any], state: Any) -> None:
        self._last[model.torch_model] = (list(request_ids), state)

    def recall(self, model: EditableModel, requests: Sequence[EditRequest]) -> Any:
        """The state the last edit of ``requests`` added; a :class:`~easyetcon.errors.JournalError` otherwise."""
        from easyetcon.errors import JournalError

        ids = [r.request_id for r in requests]
        last = self._last.get(model.torch_model)
        if last is None or last[0] != ids:
            raise JournalError(
                f"{self.editor} has no edit of request(s) {', '.join(map(str, ids[:5]))} to journal; "
                f"call journal_state right after edit with the same requests"
            )
        return last[1]


class IntrinsicEditor(WeightEditor, Protocol):
    """Intrinsic editing (FT-L, FT-M, ROME, MEMIT, AlphaEdit): edits the weights that store a fact."""


class MergingEditor(WeightEditor, Protocol):
    """Merging (LoRA + task arithmetic / TIES / DARE): trains adapters, merges them into the weights."""


class Consolidator(WeightEditor, Protocol):
    """Consolidation (TPSFT, GRPO): runs after an edit so free generation uses the new fact.

    The model it receives is the model after the earlier chain steps (its reference for KL or
    trust-region terms).
    """


@runtime_checkable
class MemoryEditor(Protocol):
    """External memory (retrieval memory, GRACE): keeps edits outside the weights.

    The chain gives each memory editor a :class:`easyetcon.records.MemoryStore` of its own,
    tracks which entries :meth:`edit` adds, changes or removes, and records those changes so
    undo restores the store exactly. :meth:`attach` installs the retrieval behaviour on the
    model (a prompt rewriter or a forward hook); it is called once per model and store, also
    when a saved run is loaded again.
    """

    config: BaseModel

    def attach(self, model: EditableModel, store: MemoryStore) -> None:
        """Make ``model`` consult ``store`` at inference. Must be idempotent."""
        ...

    def edit(self, model: EditableModel, store: MemoryStore, requests: Sequence[EditRequest]) -> None:
        """Add or update entries of ``store`` for ``requests``."""
        ...


#: Which protocol a family's editors must satisfy, checked when they are registered.
FAMILY_PROTOCOLS = {
    "external-memory": MemoryEditor,
    "merging": MergingEditor,
    "intrinsic": IntrinsicEditor,
    "consolidation": Consolidator,
}


def missing_protocol_methods(editor_class: type, protocol: type) -> list[str]:
    """Methods of ``protocol`` that ``editor_class`` does not define (empty when it conforms)."""
    wanted = ["attach", "edit"] if protocol is MemoryEditor else ["weights_to_edit", "edit"]
    return [name for name in wanted if not callable(getattr(editor_class, name, None))]
