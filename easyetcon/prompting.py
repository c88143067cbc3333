"""How a model is asked: the context a prompt is put in before the model reads it.

The WILD study (Yang et al., ACL 2025) measures edits under three *context types*, and finds
that an edit made and measured one way says little about another. easyetcon applies one
:class:`PromptFormat` per model, in every place a prompt becomes model input — the editors'
training and key texts, the consolidators' prompts, generation and teacher-forced scoring — so
an edit is made in the form the evaluator asks in, and every score records the form it used:

* ``question``: the prompt as it is (a base model's cloze or question);
* ``instruction``: the prompt inside a QA instruction (``instruction``, with ``{prompt}``);
* ``chat``: the tokenizer's chat template, the prompt as the user's message (after an optional
  ``system`` message), ending with the assistant's turn;
* ``auto`` (the default): ``chat`` when the tokenizer has a chat template, else ``question``.

Answers continue a formatted prompt as they continue a plain one: after one space
(:func:`easyetcon.text.encode_continuation`). In-context editors (prompt rewriters) rewrite the
plain prompt; the format is applied to what they return, so a retrieved fact sits inside the
user's message.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from easyetcon.errors import ConfigError

ContextType = Literal["auto", "question", "instruction", "chat"]
PROMPT_FIELD = "{prompt}"


class PromptFormat(BaseModel):
    """The context a prompt is asked in (``prompt_format:`` in a chain spec, ``--context`` on the
    command line)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    context: ContextType = Field(
        default="auto",
        description="question (the prompt as it is), instruction (inside the QA instruction), chat (the "
        "tokenizer's chat template) or auto (chat when the tokenizer has a chat template, else question).",
    )
    instruction: str = Field(
        default="Answer the following question.\n{prompt}",
        description="The QA instruction of context 'instruction'; {prompt} marks where the prompt goes.",
    )
    system: str | None = Field(
        default=None,
        description="A system message before the user's in context 'chat' (none: the template's own default).",
    )

    @field_validator("instruction")
    @classmethod
    def _one_prompt_field(cls, value: str) -> str:
        if value.count(PROMPT_FIELD) != 1:
            raise ValueError(f"the instruction must contain {PROMPT_FIELD} exactly once, got {value!r}")
        return value

    def resolved(self, tokenizer: Any) -> PromptFormat:
        """This format for ``tokenizer``: ``auto`` chosen; ``chat`` for a tokenizer without a chat
        template is an error naming the option."""
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if self.context == "auto":
            return self.model_copy(update={"context": "chat" if has_template else "question"})
        if self.context == "chat" and not has_template:
            raise ConfigError(
                "prompt_format.context 'chat': this model's tokenizer has no chat template; set "
                "tokenizer.chat_template or choose context 'question' or 'instruction'"
            )
        return self

    def describe(self) -> dict[str, Any]:
        """What changes numbers, for the records of a score: the context and, where used, its text."""
        described: dict[str, Any] = {"context": self.context}
        if self.context == "instruction":
            described["instruction"] = self.instruction
        if self.context == "chat" and self.system is not None:
            described["system"] = self.system
        return described

    def apply(self, tokenizer: Any, prompt: str) -> str:
        """``prompt`` in this format's context, as text the tokenizer encodes (with its usual
        special tokens) to exactly the ids the chat template gives. ``auto`` must be resolved."""
        if self.context == "question":
            return prompt
        if self.context == "instruction":
            return self.instruction.replace(PROMPT_FIELD, prompt)
        if self.context == "auto":
            raise ValueError("resolve an 'auto' prompt format for its tokenizer first (PromptFormat.resolved)")
        messages = ([{"role": "system", "content": self.system}] if self.system is not None else [])
        messages.append({"role": "user", "content": prompt})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return _without_added_bos(tokenizer, text)


def _without_added_bos(tokenizer: Any, text: str) -> str:
    """A template that writes the BOS token itself (Llama 3) would get a second one from a
    tokenizer that adds it: drop the template's."""
    bos = getattr(tokenizer, "bos_token", None)
    if not bos or not text.startswith(bos):
        return text
    ids = tokenizer("", add_special_tokens=True)["input_ids"]
    adds_bos = bool(ids) and ids[0] == tokenizer.bos_token_id
    return text[len(bos):] if adds_bos else text
