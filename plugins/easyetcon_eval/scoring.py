"""The scoring primitives behind the protocols, and the metrics registered through the hook.

Every metric carries the ``protocol`` and ``version`` that produced its numbers:

==============================  ====================  =================================================
metric                          protocol@version      one score per prompt
==============================  ====================  =================================================
``token-accuracy``              teacher-forced@1      share of answer tokens the argmax reproduces
``teacher-forced-exact-match``  teacher-forced-em@1   1 if the argmax reproduces every answer token
``exact-match``                 generation@1          1 if greedy decoding's answer equals an answer
``fluency``                     free-generation@1     n-gram entropy of 48 freely generated tokens
``perplexity``                  perplexity@1          perplexity of the text itself
==============================  ====================  =================================================

``exact-match`` is the default *judge* of the generation protocol: a judge has
``judge(prompts, generations, answers) -> list[float]`` besides ``score``, so an LLM-judge
plugin can register one and be chosen by name (``evaluate_edits(..., judge="my-judge")``).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch

from easyetcon.text import build_target_batch, pad_id_of, pad_rows
from easyetcon_eval.answers import exact_match, extract_answer
from easyetcon_eval.generation import greedy_continuations

FLUENCY_TOKENS = 48


# ---------------------------------------------------------------------------------------------
# Teacher forcing
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def teacher_forced_predictions(
    model: Any, prompts: Sequence[str], answers: Sequence[str], *, batch_size: int = 16
) -> list[tuple[list[int], list[int]]]:
    """For each ``(prompt, answer)``: the answer's token ids and the model's argmax at each of
    their positions when the true answer tokens are fed in (memory rewriters, then the model's
    prompt format, apply)."""
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    rewritten = model.as_asked(prompts)
    tokenizer = model.tokenizer
    lengths = [len(tokenizer(p)["input_ids"]) + len(tokenizer(" " + a, add_special_tokens=False)["input_ids"]) for p, a in zip(rewritten, answers)]
    order = sorted(range(len(rewritten)), key=lambda i: lengths[i])
    results: list[tuple[list[int], list[int]]] = [([], [])] * len(rewritten)
    torch_model = model.torch_model
    was_training = torch_model.training
    torch_model.eval()
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = build_target_batch(tokenizer, [rewritten[i] for i in rows], [answers[i] for i in rows])
            batch = batch.to(model.device)
            logits = torch_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            argmax = logits.argmax(-1).cpu()
            for r, i in enumerate(rows):
                positions = batch.target_positions[r]
                results[i] = (list(batch.target_ids[r]), argmax[r, positions].tolist())
    finally:
        torch_model.train(was_training)
    return results


def token_accuracy(expected: Sequence[int], predicted: Sequence[int]) -> float:
    if not expected:
        return 0.0
    return sum(int(e == p) for e, p in zip(expected, predicted)) / len(expected)


def all_tokens_match(expected: Sequence[int], predicted: Sequence[int]) -> float:
    return float(len(expected) > 0 and list(expected) == list(predicted))


# ---------------------------------------------------------------------------------------------
# Free text
# ---------------------------------------------------------------------------------------------

_WORDS = re.compile(r"\w+|[^\w\s]")


def ngram_entropy(text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)) -> float:
    """ROME's fluency measure: the weighted mean of the entropies (bits) of ``text``'s n-gram
    distributions; repetitive text scores low."""
    words = _WORDS.findall(text.lower())
    values = []
    for n, weight in zip(ns, weights):
        grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        total = sum(grams.values())
        entropy = -sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0
        values.append(entropy * weight)
    return sum(values) / len(values)


@torch.no_grad()
def text_perplexity(model: Any, texts: Sequence[str], *, batch_size: int = 8) -> list[float]:
    """Perplexity of each text under the model (BOS as the tokenizer adds it; no memory)."""
    tokenizer = model.tokenizer
    torch_model = model.torch_model
    results = []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start : start + batch_size])
        encoded = [tokenizer(t)["input_ids"] for t in chunk]
        ids, mask = pad_rows(encoded, pad_id_of(tokenizer))
        logits = torch_model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits.float().cpu()
        log_probs = torch.log_softmax(logits[:, :-1], dim=-1)
        token_lp = log_probs.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        valid = mask[:, 1:].bool()
        for r in range(len(chunk)):
            count = int(valid[r].sum())
            nll = -float(token_lp[r][valid[r]].sum()) / count if count else float("nan")
            results.append(math.exp(nll) if count else float("nan"))
    return results


# ---------------------------------------------------------------------------------------------
# Registered metrics
# ---------------------------------------------------------------------------------------------


class ExactMatch:
    """Generation protocol's default judge: normalised exact match against any answer."""

    protocol = "generation"
    version = "1"

    def judge(self, prompts: Sequence[str], generations: Sequence[str], answers: Sequence[Sequence[str]]) -> list[float]:
        return [float(exact_match(extract_answer(g), a)) for g, a in zip(generations, answers)]

    def score(self, model: Any, prompts: Sequence[str], answers: Sequence[Sequence[str]]) -> list[float]:
        return self.judge(prompts, greedy_continuations(model, prompts), answers)


class TokenAccuracy:
    """Teacher-forced token accuracy against the first (canonical) answer, as EasyEdit reports."""

    protocol = "teacher-forced"
    version = "1"

    def score(self, model: Any, prompts: Sequence[str], answers: Sequence[Sequence[str]]) -> list[float]:
        pairs = teacher_forced_predictions(model, prompts, [a[0] for a in answers])
        return [token_accuracy(e, p) for e, p in pairs]


class TeacherForcedExactMatch:
    """1 when teacher-forced argmax reproduces every token of the canonical answer."""

    protocol = "teacher-forced-em"
    version = "1"

    def score(self, model: Any, prompts: Sequence[str], answers: Sequence[Sequence[str]]) -> list[float]:
        pairs = teacher_forced_predictions(model, prompts, [a[0] for a in answers])
        return [all_tokens_match(e, p) for e, p in pairs]


class Fluency:
    """N-gram entropy of a free greedy generation from each prompt (answers are ignored)."""

    protocol = "free-generation"
    version = "1"

    def score(self, model: Any, prompts: Sequence[str], answers: Sequence[Sequence[str]] | None = None) -> list[float]:
        texts = greedy_continuations(model, prompts, max_new_tokens=FLUENCY_TOKENS, free=True)
        return [ngram_entropy(p + t) for p, t in zip(prompts, texts)]


class Perplexity:
    """Perplexity of each given text (the prompts; answers are ignored): general ability."""

    protocol = "perplexity"
    version = "1"

    def score(self, model: Any, prompts: Sequence[str], answers: Sequence[Sequence[str]] | None = None) -> list[float]:
        return text_perplexity(model, prompts)


# One instance of each metric; the plugin registers them by reference ("module:NAME"), so this
# module (which imports torch) loads when a metric is first used, not when plugins are listed.
EXACT_MATCH = ExactMatch()
TOKEN_ACCURACY = TokenAccuracy()
TEACHER_FORCED_EXACT_MATCH = TeacherForcedExactMatch()
FLUENCY = Fluency()
PERPLEXITY = Perplexity()
