"""The pretraining corpus: every fact in several phrasings, contexts and forms, fresh each epoch.

Following Allen-Zhu & Li (Physics of Language Models 3.1), a small model only learns to retrieve a
fact from an unseen phrasing if the *other* subjects' facts come in many phrasings and orders
("knowledge augmentation"). So each epoch states every fact once with each of its trained
templates, half of them grouped into a biography of the subject in a random order and half as
standalone sentences, plus question-answer forms and, for some subjects, multi-hop questions
answered with a short reasoning chain.

A share of the facts also comes as an *in-context update* (:func:`context_documents`): a
sentence stating a different object, then the fact asked again, answered with the stated object;
and, as often, a stated fact about another subject, which must not change the answer. Real
language models learn from their corpus to use facts written in front of a prompt; without such
documents a small model ignores them, and in-context editors (retrieval memory) could not be
measured on the fact world. The stated sentence is context only: pretraining computes no loss on
it, so the model never learns the counterfactual itself.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from easyetcon_world.relations import RELATIONS, TWO_HOPS, qa_text, statement

if TYPE_CHECKING:
    from easyetcon_world.from_dataset import DatasetWorld
    from easyetcon_world.world import MultiHopQuestion, World


class CorpusConfig(BaseModel):
    """How the corpus of one epoch is put together."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bio_fraction: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="share of a subject's statement rounds grouped into a biography (the rest standalone)",
    )
    qa_copies: int = Field(default=1, ge=0, description="each trained question per fact, per epoch")
    multi_hop_copies: int = Field(
        default=1, ge=0, description="each trained multi-hop question, per epoch"
    )
    plain_multi_hop: bool = Field(
        default=True, description="also state trained multi-hop facts as one plain sentence"
    )
    context_updates: float = Field(
        default=1.0,
        ge=0.0,
        le=1.0,
        description="share of facts shown, per epoch, as an in-context update (plus as many "
        "documents where a stated fact about another subject must be ignored)",
    )


def reasoning_chain(question: MultiHopQuestion) -> str:
    """The reasoning that answers a multi-hop question: each hop in its canonical phrasing."""
    return " ".join(statement(h.relation, 0, h.subject, h.object) for h in question.hops)


def multi_hop_text(question: MultiHopQuestion) -> str:
    """``Question: ... Answer: <hop 1>. <hop 2>. <answer> X </answer>``."""
    spec = TWO_HOPS[question.kind]
    return qa_text(
        spec.question.format(s=question.subject), question.answer, reasoning_chain(question)
    )


def world_documents(world: World, epoch: int, config: CorpusConfig, seed: int = 0) -> list[str]:
    """The shuffled documents of one epoch; a different ``epoch`` gives other groupings and orders."""
    rng = random.Random(f"easyetcon-corpus:{seed}:{epoch}")
    documents: list[str] = []

    by_subject: dict[str, list] = {}
    for fact in world.facts:
        by_subject.setdefault(fact.subject, []).append(fact)
    for subject, facts in by_subject.items():
        # round k states every fact of the subject with the k-th of its (shuffled) trained templates
        orders = {
            f.relation: rng.sample(f.trained_templates, len(f.trained_templates)) for f in facts
        }
        rounds = max(len(o) for o in orders.values())
        for k in range(rounds):
            sentences = [
                statement(
                    f.relation, orders[f.relation][k % len(orders[f.relation])], subject, f.object
                )
                for f in facts
            ]
            if rng.random() < config.bio_fraction:
                rng.shuffle(sentences)
                documents.append(" ".join(sentences))
            else:
                documents.extend(sentences)

    for fact in world.facts:
        questions = RELATIONS[fact.relation].questions
        for q in fact.trained_questions:
            for _ in range(config.qa_copies):
                documents.append(qa_text(questions[q].format(s=fact.subject), fact.object))

    for question in world.multi_hop_questions():
        if not question.trained:
            continue
        for _ in range(config.multi_hop_copies):
            documents.append(multi_hop_text(question))
        if config.plain_multi_hop:
            plain = TWO_HOPS[question.kind].plain.format(s=question.subject)
            documents.append(f"{plain} {question.answer}.")

    rng.shuffle(documents)
    return documents


def context_documents(world: World | DatasetWorld, epoch: int, config: CorpusConfig, seed: int = 0) -> list[tuple[str, str]]:
    """``(context, text)`` pairs of one epoch; pretraining puts no loss on ``context``.

    For a ``config.context_updates`` share of the facts: ``(<s r o'>., <s r' o'>.)`` (a stated
    object overrides the memorised one, in a trained phrasing or question) and
    ``(<s' r o'>., <s r' o>.)`` (a fact stated about another subject changes nothing)."""
    from easyetcon_world.from_dataset import DatasetWorld

    if config.context_updates == 0:
        return []
    if isinstance(world, DatasetWorld):
        return dataset_context_documents(world, epoch, config, seed)
    rng = random.Random(f"easyetcon-context:{seed}:{epoch}")
    share = config.context_updates
    objects = objects_by_relation(world)
    subjects: dict[str, list[str]] = {}
    for fact in world.facts:
        subjects.setdefault(fact.relation, []).append(fact.subject)
    documents = []
    for fact in world.facts:
        if rng.random() >= share:
            continue
        choices = [o for o in objects[fact.relation] if o != fact.object]
        if not choices:
            continue
        stated = rng.choice(choices)
        documents.append((statement(fact.relation, 0, fact.subject, stated), _ask(fact, stated, rng)))
        other = rng.choice(subjects[fact.relation])
        if other != fact.subject:
            documents.append((statement(fact.relation, 0, other, stated), _ask(fact, fact.object, rng)))
    return documents


def objects_by_relation(world: World) -> dict[str, list[str]]:
    """Relation -> the distinct objects its facts have, sorted: what a stated fact may claim."""
    objects: dict[str, set[str]] = {}
    for fact in world.facts:
        objects.setdefault(fact.relation, set()).add(fact.object)
    return {relation: sorted(found) for relation, found in objects.items()}


def _ask(fact, answer: str, rng: random.Random) -> str:
    """The fact in one of its trained phrasings or trained questions, answered with ``answer``."""
    if fact.trained_questions and rng.random() < 0.5:
        question = RELATIONS[fact.relation].questions[rng.choice(fact.trained_questions)]
        return qa_text(question.format(s=fact.subject), answer)
    return statement(fact.relation, rng.choice(fact.trained_templates), fact.subject, answer)


def dataset_documents(world: DatasetWorld, epoch: int, seed: int = 0) -> list[str]:
    """Each taught statement of a from-dataset world (held-out ones never), shuffled per epoch."""
    rng = random.Random(f"easyetcon-corpus:{seed}:{epoch}")
    documents = [s.text() for s in world.statements if s.taught]
    rng.shuffle(documents)
    return documents


def choice_skipping(rng: random.Random, items: Sequence, skip: int | None) -> Any:
    """``rng.choice`` over ``items`` without the item at index ``skip`` (``None``: none left out),
    drawing exactly as ``rng.choice`` on that shorter list would, without building it: the per-fact
    draws of a dataset world stay O(1) for any number of records. ``None`` when nothing is left."""
    count = len(items) - (skip is not None)
    if count <= 0:
        return None
    index = rng.randrange(count)  # what rng.choice draws for a list of ``count`` items
    return items[index + 1 if skip is not None and index >= skip else index]


def other_answer(rng: random.Random, answers: Sequence[str], answer: str) -> str | None:
    """A uniform draw from the sorted distinct ``answers`` other than ``answer``."""
    position = bisect.bisect_left(answers, answer)
    present = position < len(answers) and answers[position] == answer
    return choice_skipping(rng, answers, position if present else None)


def answers_by_relation(facts: Sequence[Any]) -> tuple[dict[str | None, list[str]], list[str]]:
    """Sorted distinct answers of each relation's facts, and of all facts: what ``o'`` is drawn from."""
    found: dict[str | None, set[str]] = {}
    for fact in facts:
        found.setdefault(fact.relation, set()).add(fact.answer)
    return {relation: sorted(a) for relation, a in found.items()}, sorted({fact.answer for fact in facts})


def dataset_context_documents(world: DatasetWorld, epoch: int, config: CorpusConfig, seed: int = 0) -> list[tuple[str, str]]:
    """The in-context updates of a from-dataset world, like :func:`context_documents`: for a
    ``config.context_updates`` share of the records' facts, another answer ``o'`` of the same
    relation (of any record when the dataset names no relation) is stated after the prompt, and
    the fact is asked again (its prompt or its question) answered with ``o'``; a second document
    states ``o'`` after *another* record's prompt and answers the fact with its own answer."""
    rng = random.Random(f"easyetcon-context:{seed}:{epoch}")
    facts = [s for s in world.statements if s.taught and s.role == "prompt"]
    questions = {s.record: s for s in world.statements if s.taught and s.role == "question"}
    answers, everything = answers_by_relation(facts)
    relatives: dict[str | None, list] = {}
    for fact in facts:
        relatives.setdefault(fact.relation, []).append(fact)
    documents = []
    for fact in facts:
        if rng.random() >= config.context_updates:
            continue
        pool = answers.get(fact.relation) if fact.relation is not None else None
        stated = other_answer(rng, pool if pool and len(pool) > 1 else everything, fact.answer)
        if stated is None:
            continue

        def ask(answer: str) -> str:
            question = questions.get(fact.record)
            if question is not None and rng.random() < 0.5:
                return question.model_copy(update={"answer": answer}).text()
            return f"{fact.prompt} {answer}"

        documents.append((f"{fact.prompt} {stated}.", ask(stated)))
        # the other subject's fact is of the same relation when the dataset says which
        other = rng.choice(relatives[fact.relation] if fact.relation is not None and len(relatives[fact.relation]) > 1 else facts)
        if other.prompt != fact.prompt:
            documents.append((f"{other.prompt} {stated}.", ask(fact.answer)))
    return documents


def epoch_documents(
    world: World | DatasetWorld, epoch: int, config: CorpusConfig, seed: int = 0
) -> list[str]:
    from easyetcon_world.from_dataset import DatasetWorld

    if isinstance(world, DatasetWorld):
        return dataset_documents(world, epoch, seed)
    return world_documents(world, epoch, config, seed)
