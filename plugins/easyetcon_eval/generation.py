"""Batched greedy decoding that stops where the answer ends, not at the target's length.

Prompts are sorted by length and left-padded in batches, so a batch gives exactly the tokens
that decoding each prompt alone gives; each row stops as soon as its answer has ended (see
:func:`easyetcon_eval.answers.answer_end`), at end of sequence, or at ``max_new_tokens``, and
the batch stops when every row has.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from easyetcon_eval.answers import answer_end, is_qa_prompt


def greedy_continuations(
    model: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 48,
    batch_size: int = 32,
    free: bool = False,
    qa_flags: Sequence[bool] | None = None,
) -> list[str]:
    """Greedy continuations of ``prompts`` by an :class:`easyetcon.EditableModel`.

    Memory editors' prompt rewriters apply. Unless ``free``, each continuation is cut where its
    answer ends; ``qa_flags`` (default: :func:`is_qa_prompt` of each original prompt) says which
    prompts are in the question-answer form, whose answers may contain full stops. With
    ``free=True`` only end of sequence and ``max_new_tokens`` stop decoding (fluency).
    """
    prompts = list(prompts)
    if qa_flags is None:
        qa_flags = [is_qa_prompt(p) for p in prompts]
    flags = list(qa_flags)
    stop = () if free else (lambda text, index: answer_end(text, qa=flags[index]))
    return model.generate(prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, stop=stop)
