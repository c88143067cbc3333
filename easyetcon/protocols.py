"""What an editor of each family takes and returns.

Editors are plain classes constructed as ``EditorClass(config)``; they satisfy one of these
protocols structurally (no base class to inherit). The chain, not the editor, takes care of
snapshots, records, undo and the journal, so an editor's file holds only its algorithm.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from pydantic import BaseModel

if TYPE_CHECKING:
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
