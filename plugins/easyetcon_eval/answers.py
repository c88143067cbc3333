"""Reading an answer out of generated text, and comparing answers the way SQuAD does.

A generated continuation is cut where the answer naturally ends (``</answer>``, a newline, and
for cloze prompts the end of the sentence), then, for prompts in the question-answer form
(``Question: ... Answer:``), the text inside ``<answer> ... </answer>`` is taken when present.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from easyetcon.text import ANSWER_CLOSE, ANSWER_OPEN, normalize_answer

#: Markers that end every answer.
ANSWER_END_MARKERS: tuple[str, ...] = (ANSWER_CLOSE, "\n")

# A full stop followed by whitespace or the end of the text ends a cloze answer ("Paris. The ...").
_SENTENCE_END = re.compile(r"\.(?=\s|$)")


def is_qa_prompt(prompt: str) -> bool:
    """Whether ``prompt`` is in the question-answer form whose answer may reason before
    ``<answer> X </answer>`` (the fact world's ``Question: ... Answer:``)."""
    return prompt.rstrip().endswith("Answer:") or ANSWER_OPEN in prompt


def answer_end(text: str, *, qa: bool) -> int | None:
    """Index in ``text`` where the answer ends, or ``None`` if it has not ended yet.

    Every answer ends at ``</answer>`` (kept, so the tags can be read) or a newline; a cloze
    answer (``qa=False``) also ends at a full stop followed by whitespace.
    """
    ends = []
    close = text.find(ANSWER_CLOSE)
    if close >= 0:
        ends.append(close + len(ANSWER_CLOSE))
    newline = text.find("\n")
    if newline >= 0:
        ends.append(newline)
    if not qa:
        match = _SENTENCE_END.search(text)
        if match is not None and text[: match.start()].strip():
            ends.append(match.start())
    return min(ends) if ends else None


def cut_answer(text: str, *, qa: bool) -> str:
    """``text`` up to where its answer ends (all of it if it never ends)."""
    end = answer_end(text, qa=qa)
    return text if end is None else text[:end]


def extract_answer(text: str) -> str:
    """The answer in a (cut) generation: the inside of ``<answer> ... </answer>`` when the tag is
    there (an unclosed tag runs to the end), otherwise the whole text; stripped."""
    start = text.find(ANSWER_OPEN)
    if start >= 0:
        text = text[start + len(ANSWER_OPEN) :]
        close = text.find(ANSWER_CLOSE)
        if close >= 0:
            text = text[:close]
    return text.strip()


def exact_match(prediction: str, answers: Iterable[str]) -> bool:
    """Whether the normalised ``prediction`` equals one of the normalised ``answers``."""
    predicted = normalize_answer(prediction)
    return any(predicted == normalize_answer(a) for a in answers)
