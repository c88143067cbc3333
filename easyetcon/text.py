"""Tokenisation primitives shared by editors and evaluators.

Targets continue a prompt, so they are encoded with one leading space and no BOS; batches are
right-padded for training (labels mask prompt and padding with -100) and left-padded for
generation (:meth:`easyetcon.EditableModel.generate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from easyetcon.errors import RequestError

if TYPE_CHECKING:  # torch is imported where it runs: `easyetcon --help` stays fast
    import torch

IGNORE_INDEX = -100


@dataclass
class TargetBatch:
    """Prompt+target token ids, right-padded, with labels only on the target tokens.

    ``target_positions[i]`` lists, for row ``i``, the positions whose logits predict the target
    tokens (position ``p`` predicts token ``p + 1``).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    prompt_lengths: list[int]
    target_ids: list[list[int]]

    @property
    def target_positions(self) -> list[list[int]]:
        return [
            list(range(length - 1, length - 1 + len(target)))
            for length, target in zip(self.prompt_lengths, self.target_ids)
        ]

    def rows(self, indices: Sequence[int]) -> TargetBatch:
        """The batch of rows ``indices`` only, cut to the longest of them (a mini-batch)."""
        import torch

        chosen = torch.tensor(list(indices), device=self.input_ids.device)
        width = int(self.attention_mask[chosen].sum(dim=1).max())
        return TargetBatch(
            self.input_ids[chosen, :width], self.attention_mask[chosen, :width], self.labels[chosen, :width],
            [self.prompt_lengths[i] for i in indices], [self.target_ids[i] for i in indices],
        )

    def to(self, device: torch.device | str) -> TargetBatch:
        return TargetBatch(
            self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device),
            self.prompt_lengths, self.target_ids,
        )


def encode_continuation(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` continuing a prompt: one leading space, no special tokens."""
    text = text if text.startswith(" ") else " " + text
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def pad_id_of(tokenizer: Any) -> int:
    """The id padding uses: the tokenizer's pad token, else its end-of-sequence token, else 0.
    Padded positions are masked out, so the choice never changes a result."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    return 0


def pad_rows(
    rows: Sequence[Sequence[int]], pad_id: int, *, side: Literal["right", "left"] = "right"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows as one batch: ``(input_ids, attention_mask)``, long tensors of the longest row's width.

    ``side="right"`` keeps each token at its position (teacher forcing, reading activations);
    ``"left"`` ends every row at the last column (batched generation). ``pad_id`` may be any
    fill value (``IGNORE_INDEX`` for a label batch).
    """
    import torch

    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(0, len(row)) if side == "right" else slice(width - len(row), width)
        input_ids[i, span] = torch.tensor(list(row), dtype=torch.long)
        mask[i, span] = 1
    return input_ids, mask


def build_target_batch(
    tokenizer: Any, prompts: Sequence[str], targets: Sequence[str], *, append_eos: bool | Sequence[bool] = False
) -> TargetBatch:
    """Tokenise ``prompt + " " + target`` pairs for teacher-forced training or scoring. With
    ``append_eos`` (for every row, or one flag per row) a target ends with the tokenizer's
    end-of-sequence token, which then counts as a target token (the model learns to stop after
    the answer)."""
    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
    eos_rows = [append_eos] * len(prompts) if isinstance(append_eos, bool) else list(append_eos)
    if len(eos_rows) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(eos_rows)} append_eos flags")
    if any(eos_rows) and tokenizer.eos_token_id is None:
        raise ValueError("append_eos: the tokenizer has no end-of-sequence token")
    rows, labels, prompt_lengths, target_ids = [], [], [], []
    for prompt, target, eos in zip(prompts, targets, eos_rows):
        prompt_ids = tokenizer(prompt)["input_ids"]
        answer_ids = encode_continuation(tokenizer, target) + ([int(tokenizer.eos_token_id)] if eos else [])
        rows.append(prompt_ids + answer_ids)
        labels.append([IGNORE_INDEX] * len(prompt_ids) + answer_ids)
        prompt_lengths.append(len(prompt_ids))
        target_ids.append(answer_ids)
    input_ids, mask = pad_rows(rows, pad_id_of(tokenizer))
    label_tensor, _ = pad_rows(labels, IGNORE_INDEX)
    return TargetBatch(input_ids, mask, label_tensor, prompt_lengths, target_ids)


def target_token_logprobs(logits: torch.Tensor, batch: TargetBatch) -> list[torch.Tensor]:
    """Per row, the log-probabilities of the target tokens (differentiable)."""
    import torch

    log_probs = torch.log_softmax(logits.float(), dim=-1)
    rows = []
    for i, (positions, target) in enumerate(zip(batch.target_positions, batch.target_ids)):
        index = torch.tensor(positions, device=logits.device)
        tokens = torch.tensor(target, device=logits.device)
        rows.append(log_probs[i, index, tokens])
    return rows


def locate_subject_tokens(tokenizer: Any, prompt: str, subject: str, *, request_id: str | None = None) -> list[int]:
    """Token positions of the *last* occurrence of ``subject`` in the tokenised ``prompt``.

    Uses character offsets, so it is right whatever the tokenizer does at word boundaries
    (a leading space merged into the subject's first token, BOS added or not).
    """
    start = prompt.rfind(subject)
    if start < 0:
        who = f"request {request_id!r}: " if request_id else ""
        raise RequestError(f"{who}subject {subject!r} does not occur in prompt {prompt!r}")
    end = start + len(subject)
    encoded = tokenizer(prompt, return_offsets_mapping=True)
    positions = [
        index
        for index, (token_start, token_end) in enumerate(encoded["offset_mapping"])
        if token_end > token_start and token_start < end and token_end > start
    ]
    if not positions:
        raise RequestError(f"subject {subject!r} maps to no tokens of prompt {prompt!r}")
    return positions


ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
_ARTICLES = {"a", "an", "the"}


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation (after Unicode NFKC): lowercase, delete punctuation, drop the
    articles, squeeze spaces. The one definition used by metrics and rewards alike, so that what
    consolidation is rewarded for is what evaluation scores ("U.S.A." equals "USA" in both)."""
    import string
    import unicodedata

    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(ch for ch in text if ch not in string.punctuation)
    return " ".join(word for word in text.split() if word not in _ARTICLES)


def extract_tagged_answer(generated: str) -> str | None:
    """The text inside the first ``<answer> ... </answer>`` block, stripped; None without one."""
    start = generated.find(ANSWER_OPEN)
    if start < 0:
        return None
    start += len(ANSWER_OPEN)
    end = generated.find(ANSWER_CLOSE, start)
    return None if end < 0 else generated[start:end].strip()


def extract_answer(generated: str) -> str:
    """The answer a generation gives: the tagged block when there is one, else its first line
    up to the first sentence end."""
    tagged = extract_tagged_answer(generated)
    if tagged is not None:
        return tagged
    line = generated.strip().split("\n", 1)[0]
    for end in (". ", "</"):
        if end in line:
            line = line[: line.index(end)]
    return line.strip().rstrip(".")


def answer_matches(generated_answer: str, acceptable: Sequence[str]) -> bool:
    """Normalised exact match against any acceptable answer."""
    normalized = normalize_answer(generated_answer)
    return any(normalized == normalize_answer(a) for a in acceptable if a.strip())
