"""AnyEdit: a long target edited chunk by chunk, autoregressively (Jiang et al., ICML 2025).

MEMIT, AlphaEdit and EMMET write one value at one token. That states "Pelmora"; a paragraph's
later tokens must then all be reached, through attention, from that one position, and they
mostly are not. AnyEdit splits the target into chunks ``c_1 … c_m`` (``chunks:`` sentences, or
windows of about ``size`` tokens cut between words) and makes each chunk one edit of a base
locate-then-edit editor (``base:``):

1. chunk ``j``'s *context* is the prompt followed by the chunks before it, ``c_1 … c_{j-1}``:
   the answer so far, as the target says it (teacher forcing);
2. its key is read at the context's **last token** (``key.fact_token`` is ``last``), so every
   chunk has its own key: the same text, a later position (by default without prefixes,
   ``key.prefixes: 0``: see :class:`ContextKeyOptions`);
3. its value ``δ_j`` is optimised so that ``c_j`` follows that context (the base editor's value
   options, at the residual stream after its last layer);
4. the ``m`` chunk edits of every request are inserted as **one batch** of the base editor
   (MEMIT's least squares, AlphaEdit's null-space update or EMMET's equality constraints,
   spread over its layers), so each chunk's update knows the others'.

By the chain rule, ``p(c_1 … c_m | prompt) = Π_j p(c_j | prompt, c_<j)``: once every chunk is
likely after the chunks before it, so is the whole target (the paper's argument, in mutual
information). A target of one chunk is exactly the base editor's edit at the prompt's last token.

White space in the target counts as one space: the chunks joined by spaces are what is edited.
The base editor keeps what it derives from the unedited model (layers, prefixes, statistics) and
carries (AlphaEdit's edited keys, one row per chunk); the journal holds its state per chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from easyetcon.locate import KeyOptions
from easyetcon.locate.values import split_sentences
from easyetcon_intrinsic.alphaedit import AlphaEdit, AlphaEditConfig
from easyetcon_intrinsic.emmet import Emmet, EmmetConfig
from easyetcon_intrinsic.memit import Memit, MemitConfig


class ChunkOptions(BaseModel):
    """How a target is split into the chunks AnyEdit edits one after another (the ``chunks:`` section)."""

    model_config = ConfigDict(extra="forbid")

    unit: Literal["tokens", "sentence"] = Field(
        default="tokens",
        description="'tokens': windows of about `size` tokens, cut between words (the paper's sliding window); "
        "'sentence': one chunk per sentence",
    )
    size: int = Field(default=8, ge=1, le=512, description="unit 'tokens': the most tokens a chunk has (a longer word is a chunk alone)")


class ContextKeyOptions(KeyOptions):
    """The ``key:`` section of AnyEdit's base editor: keys at the last token of each chunk's
    context, read in the bare context by default (as the paper's code does). A prefix-averaged
    key at an ordinary token (a full stop) is much like every other key at that token, so it
    misses the key the model computes there when it says the target."""

    fact_token: Literal["last"] = Field(
        default="last",
        description="AnyEdit reads each chunk's key at the last token of its context (the prompt and the chunks before it)",
    )
    prefixes: int = Field(default=0, ge=0, le=100, description="prefix contexts keys and values are averaged over (besides the bare context)")


class OnMemit(MemitConfig):
    """MEMIT as AnyEdit's base editor: its options, keys at the context's last token."""

    editor: Literal["memit"] = "memit"
    key: ContextKeyOptions = Field(default_factory=ContextKeyOptions, description="where keys are read and values written")


class OnAlphaEdit(AlphaEditConfig):
    """AlphaEdit as AnyEdit's base editor: its options, keys at the context's last token."""

    editor: Literal["alphaedit"] = "alphaedit"
    key: ContextKeyOptions = Field(default_factory=ContextKeyOptions, description="where keys are read and values written")


class OnEmmet(EmmetConfig):
    """EMMET as AnyEdit's base editor: its options, keys at the context's last token."""

    editor: Literal["emmet"] = "emmet"
    key: ContextKeyOptions = Field(default_factory=ContextKeyOptions, description="where keys are read and values written")


#: The editor class of each base.
BASE_EDITORS = {"memit": Memit, "alphaedit": AlphaEdit, "emmet": Emmet}


class AnyEditConfig(BaseModel):
    """Options of ``anyedit``: how targets are split, and the base editor that inserts the chunks."""

    model_config = ConfigDict(extra="forbid")

    chunks: ChunkOptions = Field(default_factory=ChunkOptions, description="how each target is split into chunks")
    base: OnMemit | OnAlphaEdit | OnEmmet = Field(
        default_factory=OnMemit, discriminator="editor",
        description="the locate-then-edit editor that inserts the chunks, with its options: editor: memit (the default), "
        "alphaedit or emmet",
    )

    @field_validator("base", mode="before")
    @classmethod
    def _memit_by_default(cls, value: Any) -> Any:
        return {**value, "editor": "memit"} if isinstance(value, dict) and "editor" not in value else value


def split_target(target: str, options: ChunkOptions, token_count: Callable[[str], int]) -> list[str]:
    """The chunks of ``target`` (its words joined by single spaces), in order; ``token_count``
    counts a text's tokens as it continues a prompt."""
    words = target.split()
    if options.unit == "sentence":
        return split_sentences(" ".join(words))
    chunks, current = [], []
    for word in words:
        if current and token_count(" ".join(current + [word])) > options.size:
            chunks.append(" ".join(current))
            current = []
        current.append(word)
    chunks.append(" ".join(current))
    return chunks


class AnyEdit:
    """The ``anyedit`` editor: each request's target as chunk edits of its base editor (which keeps the state)."""

    def __init__(self, config: AnyEditConfig) -> None:
        self.config = config
        self.base = BASE_EDITORS[config.base.editor](config.base)

    def chunked(self, model: Any, requests: Sequence[Any]) -> tuple[list[Any], list[str]]:
        """One request per chunk (its ``target_new`` the chunk; ``case_id`` ``<id>#<j>`` when the
        target has several) and each chunk's context: the chunks before it, each after a space."""
        chunk_requests, contexts = [], []
        for request in requests:
            chunks = split_target(request.target_new, self.config.chunks, lambda text: len(model.encode_answer(text)))
            for index, chunk in enumerate(chunks):
                update = {"target_new": chunk} if len(chunks) == 1 else {"target_new": chunk, "case_id": f"{request.request_id}#{index + 1}"}
                chunk_requests.append(request.model_copy(update=update))
                contexts.append("".join(f" {earlier}" for earlier in chunks[:index]))
        return chunk_requests, contexts

    def prepare(self, model: Any, requests: Sequence[Any]) -> None:
        self.base.prepare(model, requests)

    def weights_to_edit(self, model: Any, requests: Sequence[Any]) -> list[str]:
        return self.base.weights_to_edit(model, requests)

    def edit(self, model: Any, requests: Sequence[Any]) -> None:
        chunk_requests, contexts = self.chunked(model, requests)
        # 1-2. every chunk located after its context, its key at the context's last token
        sites = self.base.locate(model, chunk_requests, contexts)
        # 3. the hidden state after the base's last layer that makes each chunk follow its context
        targets: torch.Tensor = sites.hidden_targets(self.config.base.value)
        # 4. all chunks of all requests inserted together
        self.base.insert(model, sites, targets)

    def journal_state(self, model: Any, requests: Sequence[Any]) -> dict[str, torch.Tensor]:
        """The base editor's state of the last edit (AlphaEdit: one key row per chunk), if it keeps any."""
        journal = getattr(self.base, "journal_state", None)
        return journal(model, self.chunked(model, requests)[0]) if callable(journal) else {}

    def restore_state(self, model: Any, requests: Sequence[Any], state: dict[str, torch.Tensor]) -> None:
        """Give a replayed step's state back to the base editor, chunk by chunk as :meth:`edit` made it."""
        restore = getattr(self.base, "restore_state", None)
        if callable(restore):
            restore(model, self.chunked(model, requests)[0], state)
