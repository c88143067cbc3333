"""Batched greedy decoding that stops where the answer ends, not at the target's length.

Prompts are sorted by length and left-padded in batches, so a batch gives exactly the tokens
that decoding each prompt alone gives; each row stops as soon as its answer has ended (see
:func:`easyetcon_eval.answers.answer_end`), at end of sequence, or at ``max_new_tokens``, and
the batch stops when every row has.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from easyetcon_eval.answers import answer_end, cut_answer, is_qa_prompt


class _AnswersEnded:
    """Stopping criterion: a row is finished once its decoded continuation contains the end of
    its answer (``transformers`` accepts any callable returning one bool per row)."""

    def __init__(self, tokenizer: Any, prompt_width: int, qa_flags: Sequence[bool]) -> None:
        self.tokenizer = tokenizer
        self.prompt_width = prompt_width
        self.qa_flags = list(qa_flags)
        self.done = [False] * len(self.qa_flags)

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        new_tokens = input_ids[:, self.prompt_width :]
        for row, qa in enumerate(self.qa_flags):
            if not self.done[row]:
                text = self.tokenizer.decode(new_tokens[row], skip_special_tokens=True)
                self.done[row] = answer_end(text, qa=qa) is not None
        return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)


def _pad_token_id(tokenizer: Any) -> int:
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    if tokenizer.eos_token_id is not None:
        return int(tokenizer.eos_token_id)
    return 0


@torch.no_grad()
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
    from transformers import StoppingCriteriaList

    prompts = list(prompts)
    if not prompts:
        return []
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if qa_flags is None:
        qa_flags = [is_qa_prompt(p) for p in prompts]
    rewritten = model.rewrite_prompts(prompts)
    tokenizer = model.tokenizer
    torch_model = model.torch_model
    encoded = [tokenizer(p)["input_ids"] for p in rewritten]
    # Similar lengths share a batch, so little compute goes to padding.
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    pad_id = _pad_token_id(tokenizer)
    eos_id = tokenizer.eos_token_id
    outputs: list[str] = [""] * len(prompts)
    was_training = torch_model.training
    torch_model.eval()
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            width = max(len(encoded[i]) for i in rows)
            input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, i in enumerate(rows):
                ids = encoded[i]
                input_ids[r, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                attention_mask[r, width - len(ids) :] = 1
            stopping = None
            if not free:
                stopping = StoppingCriteriaList(
                    [_AnswersEnded(tokenizer, width, [qa_flags[i] for i in rows])]
                )
            generated = torch_model.generate(
                input_ids=input_ids.to(model.device),
                attention_mask=attention_mask.to(model.device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=pad_id,
                eos_token_id=eos_id,
                stopping_criteria=stopping,
            )
            texts = tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True)
            for i, text in zip(rows, texts):
                outputs[i] = text if free else cut_answer(text, qa=qa_flags[i])
    finally:
        torch_model.train(was_training)
    return outputs
