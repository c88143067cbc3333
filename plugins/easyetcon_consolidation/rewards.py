"""EtCon's edit rewards. Each is a plugin-registered callable
``reward(completions, requests) -> list[float]`` scoring one completion per request, in [0, 1].

* correctness — the extracted answer matches the new target or an alias (1.0); every target
  word present and no negation: partial credit (0.5).
* format — the answer in the answer format of its prompt: exactly one well-formed
  ``<answer> ... </answer>`` block (``tagged``, the registered reward), or a non-empty answer
  that ends cleanly (``reply``: the whole reply; ``continuation``: the first sentence), read as
  :func:`easyetcon.text.extract_answer` reads it (:data:`FORMAT_CHECKS`).
* cleanliness — nothing after the answer block, no repeated phrase, within a length cap.
* consistency — the completion does not reassert the old fact (``ground_truth``).

:func:`combine_rewards` weights them (EtCon's defaults: 0.70 / 0.05 / 0.15 / 0.10) and lets a
failed format zero the total.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from easyetcon.errors import ConfigError, PluginError
from easyetcon.requests import EditRequest
from easyetcon.text import ANSWER_CLOSE, ANSWER_OPEN, answer_matches, extract_answer, normalize_answer

DEFAULT_WEIGHTS = {"correctness": 0.70, "format": 0.05, "cleanliness": 0.15, "consistency": 0.10}
NEGATIONS = {"not", "no", "never", "nor", "neither", "isn't", "wasn't", "doesn't", "don't", "didn't"}
PARTIAL_CREDIT = 0.5
MAX_WORDS = 48


def correctness(completions: Sequence[str], requests: Sequence[EditRequest]) -> list[float]:
    scores = []
    for completion, request in zip(completions, requests):
        answer = extract_answer(completion)
        acceptable = (request.target_new, *request.target_aliases)
        if answer_matches(answer, acceptable):
            scores.append(1.0)
            continue
        words = set(normalize_answer(answer).split())
        target_words = set(normalize_answer(request.target_new).split())
        negated = bool(words & NEGATIONS) or "n't" in answer.lower()
        scores.append(PARTIAL_CREDIT if target_words and target_words <= words and not negated else 0.0)
    return scores


def _tagged(completion: str) -> bool:
    """Exactly one well-formed, non-empty ``<answer> ... </answer>`` block."""
    well_formed = completion.count(ANSWER_OPEN) == 1 and completion.count(ANSWER_CLOSE) == 1
    ordered = well_formed and completion.index(ANSWER_OPEN) < completion.index(ANSWER_CLOSE)
    return bool(ordered and completion.split(ANSWER_OPEN, 1)[1].split(ANSWER_CLOSE, 1)[0].strip())


def answer_format(completions: Sequence[str], requests: Sequence[EditRequest]) -> list[float]:
    return [1.0 if _tagged(completion) else 0.0 for completion in completions]


SENTENCE_END = "."  # the one extract_answer cuts at


def reply_format(completions: Sequence[str], requests: Sequence[EditRequest]) -> list[float]:
    """A chat model's reply that is the answer and nothing else: one line, one sentence, a
    non-empty answer (or one well-formed tagged block, which the evaluator reads first)."""
    scores = []
    for completion in completions:
        reply = completion.strip()
        answer = extract_answer(completion)
        # the whole reply is what the evaluator reads as the answer, give or take its final stop
        whole = bool(answer) and "\n" not in reply and reply.rstrip(SENTENCE_END).strip() == answer
        scores.append(1.0 if whole or _tagged(completion) else 0.0)
    return scores


def continuation_format(completions: Sequence[str], requests: Sequence[EditRequest]) -> list[float]:
    """A plain continuation whose first sentence is a non-empty answer that ends cleanly (at a
    full stop or a line end, not cut off by the length limit); what follows is not read (the
    evaluator reads the first sentence), and a well-formed tagged block counts too."""
    scores = []
    for completion in completions:
        text = completion.strip()
        line, _, rest = text.partition("\n")
        ended = bool(rest) or line.endswith(SENTENCE_END) or f"{SENTENCE_END} " in line
        scores.append(1.0 if (ended and extract_answer(completion)) or _tagged(completion) else 0.0)
    return scores


#: The ``format`` reward of each answer format (see ``answer_format`` in :mod:`.common`).
FORMAT_CHECKS: dict[str, Callable[[Sequence[str], Sequence[EditRequest]], list[float]]] = {
    "tagged": answer_format,
    "reply": reply_format,
    "continuation": continuation_format,
}


def _has_repetition(text: str, n: int = 3) -> bool:
    words = normalize_answer(text).split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(grams) != len(set(grams))


def cleanliness(completions: Sequence[str], requests: Sequence[EditRequest]) -> list[float]:
    scores = []
    for completion in completions:
        score = 1.0
        if ANSWER_CLOSE in completion and completion.split(ANSWER_CLOSE, 1)[1].strip():
            score -= 0.5  # trailing text after the answer
        if _has_repetition(completion):
            score -= 0.3
        if len(completion.split()) > MAX_WORDS:
            score -= 0.2
        scores.append(max(score, 0.0))
    return scores


def consistency(completions: Sequence[str], requests: Sequence[EditRequest]) -> list[float]:
    scores = []
    for completion, request in zip(completions, requests):
        if request.ground_truth is None:
            scores.append(1.0)
            continue
        old = normalize_answer(request.ground_truth)
        said = f" {normalize_answer(completion)} "
        scores.append(0.0 if old and f" {old} " in said else 1.0)
    return scores


BUILTIN_REWARDS: dict[str, tuple[Callable, str]] = {
    "correctness": (correctness, "The answer matches the new target or an alias; partial credit for all target words."),
    "format": (answer_format, "Exactly one <answer> ... </answer> block."),
    "cleanliness": (cleanliness, "Nothing after the answer, no repeated phrase, a length cap."),
    "consistency": (consistency, "The completion does not reassert the old fact."),
}


def combine_rewards(
    weights: Mapping[str, float],
    lookup: Callable[[str], Callable],
    *,
    format_gate: str | None = "format",
) -> Callable[[Sequence[str], Sequence[EditRequest]], list[float]]:
    """One reward: the weighted sum of the named rewards, zero where ``format_gate`` scores 0.

    ``lookup(name)`` returns the reward callable registered under ``name``. A reward that raises
    or returns the wrong number of scores becomes a :class:`PluginError` naming it.
    """
    if not weights:
        raise ConfigError("option 'rewards': at least one reward is needed")
    negative = [name for name, weight in weights.items() if weight < 0]
    if negative:
        raise ConfigError(f"option 'rewards': weights must be non-negative; {', '.join(negative)} are not")
    if sum(weights.values()) <= 0:
        raise ConfigError("option 'rewards': the reward weights sum to zero; give at least one a positive weight")
    functions = {name: lookup(name) for name in weights}
    gate = lookup(format_gate) if format_gate else None

    def run(name: str, function: Callable, completions: Sequence[str], requests: Sequence[EditRequest]) -> list[float]:
        try:
            scores = [float(s) for s in function(completions, requests)]
        except Exception as error:
            raise PluginError(f"reward {name!r} raised {type(error).__name__}: {error}") from error
        if len(scores) != len(completions):
            raise PluginError(f"reward {name!r} returned {len(scores)} scores for {len(completions)} completions")
        return scores

    def total(completions: Sequence[str], requests: Sequence[EditRequest]) -> list[float]:
        sums = [0.0] * len(completions)
        for name, function in functions.items():
            for i, score in enumerate(run(name, function, completions, requests)):
                sums[i] += weights[name] * score
        if gate is not None:
            passed = run(format_gate, gate, completions, requests)
            sums = [s if ok > 0 else 0.0 for s, ok in zip(sums, passed)]
        return sums

    return total


