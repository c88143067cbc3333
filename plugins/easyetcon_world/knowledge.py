"""What a model knows about a world: accuracy on its facts in every form, with exact ground truth.

Protocol ``easyetcon-world-knowledge/1``:

* ``train_phrasings`` / ``heldout_phrasings``: cloze prompts with the templates pretraining used
  for the fact / held out for it. Two scores each: ``greedy`` (the greedy continuation starts
  with `` object`` as a whole word) and ``teacher_forced`` (argmax is right at every object token).
* ``qa`` / ``qa_heldout``: ``Question: ... Answer:`` generated greedily; the text inside
  ``<answer> ... </answer>`` must equal the object after strip.
* ``multi_hop_reasoning``: multi-hop questions whose reasoning form pretraining never showed for
  this subject; the model must generate the chain and then the answer (greedy, exact match).
  ``multi_hop_reasoning_seen`` scores the ones it did see; ``multi_hop_plain`` the held-out ones
  asked as one cloze prompt (no chain to write down, so usually much lower).

* ``in_context``: a fact stated in front of the prompt (:func:`measure_in_context`): ``override``
  (the stated object is used), ``override_heldout`` (asked in a held-out phrasing), ``ignored``
  (a fact about another subject is stated; the answer must not change).

For a world built from a dataset file (:func:`measure_dataset_knowledge`): ``statements`` (each
record's prompt, greedy and teacher-forced), ``questions`` (its question form, ``<answer>`` exact
match), ``paraphrases_heldout`` and ``locality_heldout`` (held out from pretraining),
``locality_taught``, ``fillers`` and ``in_context``.

Version 2 added ``in_context`` to both, with floors (:data:`FLOORS`, :data:`DATASET_FLOORS`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from easyetcon.text import pad_id_of, pad_rows
from easyetcon_world.corpus import (
    answers_by_relation,
    choice_skipping,
    objects_by_relation,
    other_answer,
    reasoning_chain,
)
from easyetcon_world.edits import leaf_relations
from easyetcon_world.relations import (
    RELATIONS,
    TWO_HOPS,
    continuation_matches,
    extract_answer,
    qa_prompt,
)

if TYPE_CHECKING:
    from easyetcon_world.from_dataset import DatasetWorld
    from easyetcon_world.world import World

PROTOCOL = "easyetcon-world-knowledge/2"


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def greedy_continuations(
    model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 128
) -> list[str]:
    """Greedy continuation text of each prompt (left-padded batches, stops at ``<eos>``)."""
    outputs: list[str] = []
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(
                list(prompts[start : start + batch_size]), return_tensors="pt", padding=True
            )
            batch = {k: v.to(_device(model)) for k, v in batch.items()}
            generated = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            new = generated[:, batch["input_ids"].shape[1] :]
            outputs.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
    return outputs


@torch.no_grad()
def teacher_forced_correct(
    model, tokenizer, prompts: Sequence[str], answers: Sequence[str], batch_size: int = 128
) -> list[bool]:
    """Whether the argmax prediction is right at every token of `` answer`` after its prompt."""
    results: list[bool] = []
    for start in range(0, len(prompts), batch_size):
        rows, spans = [], []
        for prompt, answer in zip(
            prompts[start : start + batch_size], answers[start : start + batch_size]
        ):
            prompt_ids = tokenizer(prompt)["input_ids"]
            answer_ids = tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
            rows.append(prompt_ids + answer_ids)
            spans.append((len(prompt_ids), len(answer_ids)))
        ids, mask = pad_rows(rows, pad_id_of(tokenizer))
        logits = model(
            input_ids=ids.to(_device(model)), attention_mask=mask.to(_device(model))
        ).logits
        predicted = logits.argmax(-1).cpu()
        for i, (prompt_len, answer_len) in enumerate(spans):
            # the token at position p is predicted by the logits at p - 1
            guess = predicted[i, prompt_len - 1 : prompt_len - 1 + answer_len]
            results.append(bool(torch.equal(guess, ids[i, prompt_len : prompt_len + answer_len])))
    return results


def cloze_accuracy(
    model, tokenizer, prompts: Sequence[str], answers: Sequence[str], batch_size: int = 128
) -> dict:
    if not prompts:
        return {"greedy": None, "teacher_forced": None, "n": 0}
    longest = max(len(tokenizer(" " + a, add_special_tokens=False)["input_ids"]) for a in answers)
    continuations = greedy_continuations(model, tokenizer, prompts, longest + 1, batch_size)
    greedy = [continuation_matches(c, a) for c, a in zip(continuations, answers)]
    forced = teacher_forced_correct(model, tokenizer, prompts, answers, batch_size)
    return {
        "greedy": sum(greedy) / len(greedy),
        "teacher_forced": sum(forced) / len(forced),
        "n": len(prompts),
    }


def qa_accuracy(
    model,
    tokenizer,
    prompts: Sequence[str],
    answers: Sequence[str],
    max_new_tokens: int,
    batch_size: int = 128,
) -> dict:
    """Exact match of the ``<answer>`` span of greedy generations."""
    if not prompts:
        return {"exact_match": None, "n": 0}
    generations = greedy_continuations(model, tokenizer, prompts, max_new_tokens, batch_size)
    correct = [extract_answer(g) == a for g, a in zip(generations, answers)]
    return {"exact_match": sum(correct) / len(correct), "n": len(prompts)}


def measure_in_context(model, tokenizer, world: World, sample: int | None = None, seed: int = 0) -> dict:
    """How well the model answers from a fact stated in front of the prompt (what in-context
    editors such as retrieval memory rely on). For each person fact, another object ``o'`` of its
    relation is stated with the edit phrasing, ``"<s r o'>. "``, then the fact is asked again:

    * ``override``: asked with the same phrasing; the answer must be ``o'`` (greedy);
    * ``override_heldout``: asked with a phrasing held out for this subject; must be ``o'``;
    * ``ignored``: the stated fact is about *another* subject; the answer must stay ``o``.
    """
    rng = random.Random(f"easyetcon-in-context:{seed}")
    people = leaf_relations()
    every = [f for f in world.facts if f.relation in people]
    facts = rng.sample(every, sample) if sample is not None and sample < len(every) else every
    objects = objects_by_relation(world)
    by_relation: dict[str, list] = {}
    for fact in every:  # the other subject may be any of the relation's, sampled or not
        by_relation.setdefault(fact.relation, []).append(fact)
    rows: dict[str, tuple[list[str], list[str]]] = {"override": ([], []), "override_heldout": ([], []), "ignored": ([], [])}
    for fact in facts:
        stated = rng.choice([o for o in objects[fact.relation] if o != fact.object])
        context = f"{fact.prompt(0)} {stated}."
        rows["override"][0].append(f"{context} {fact.prompt(0)}")
        rows["override"][1].append(stated)
        rows["override_heldout"][0].append(f"{context} {fact.prompt(rng.choice(fact.heldout_templates))}")
        rows["override_heldout"][1].append(stated)
        other = rng.choice([f for f in by_relation[fact.relation] if f.subject != fact.subject])
        rows["ignored"][0].append(f"{other.prompt(0)} {stated}. {fact.prompt(0)}")
        rows["ignored"][1].append(fact.object)
    return {name: cloze_accuracy(model, tokenizer, prompts, answers)["greedy"] for name, (prompts, answers) in rows.items()} | {
        "n": len(facts)
    }


def measure_knowledge(
    model,
    tokenizer,
    world: World | DatasetWorld,
    *,
    sample: int | None = None,
    seed: int = 0,
    batch_size: int = 128,
) -> dict:
    """Score ``model`` on ``world`` (see the module docstring for the protocol).

    ``sample`` limits the facts (and, separately, the multi-hop questions) to a random subset of
    that many, to keep tests fast; ``None`` scores all of them.
    """
    rng = random.Random(f"easyetcon-knowledge:{seed}")
    if not hasattr(world, "facts"):  # a world built from a dataset file
        return measure_dataset_knowledge(model, tokenizer, world, sample=sample, seed=seed, batch_size=batch_size)
    facts = list(world.facts)
    if sample is not None and sample < len(facts):
        facts = rng.sample(facts, sample)

    def cloze_items(heldout: bool) -> tuple[list[str], list[str]]:
        prompts, answers = [], []
        for fact in facts:
            for t in fact.heldout_templates if heldout else fact.trained_templates:
                prompts.append(fact.prompt(t))
                answers.append(fact.object)
        return prompts, answers

    def qa_items(heldout: bool) -> tuple[list[str], list[str]]:
        prompts, answers = [], []
        for fact in facts:
            questions = RELATIONS[fact.relation].questions
            for q in fact.heldout_questions if heldout else fact.trained_questions:
                prompts.append(qa_prompt(questions[q].format(s=fact.subject)))
                answers.append(fact.object)
        return prompts, answers

    def multi_hop(trained: bool) -> list:
        items = [q for q in world.multi_hop_questions() if q.trained == trained]
        if sample is not None and sample < len(items):
            items = rng.sample(items, sample)
        return items

    unseen, seen = multi_hop(False), multi_hop(True)

    def reasoning(questions: list) -> dict:
        prompts = [qa_prompt(TWO_HOPS[q.kind].question.format(s=q.subject)) for q in questions]
        longest = max(
            (len(tokenizer(" " + reasoning_chain(q))["input_ids"]) for q in questions), default=0
        )
        return qa_accuracy(
            model, tokenizer, prompts, [q.answer for q in questions], longest + 16, batch_size
        )

    return {
        "protocol": PROTOCOL,
        "world": world.fingerprint()[:16],
        "train_phrasings": cloze_accuracy(model, tokenizer, *cloze_items(False), batch_size),
        "heldout_phrasings": cloze_accuracy(model, tokenizer, *cloze_items(True), batch_size),
        "qa": qa_accuracy(model, tokenizer, *qa_items(False), 24, batch_size),
        "qa_heldout": qa_accuracy(model, tokenizer, *qa_items(True), 24, batch_size),
        "multi_hop_reasoning": reasoning(unseen),
        "multi_hop_reasoning_seen": reasoning(seen),
        "multi_hop_plain": cloze_accuracy(
            model,
            tokenizer,
            [TWO_HOPS[q.kind].plain.format(s=q.subject) for q in unseen],
            [q.answer for q in unseen],
            batch_size,
        ),
        "in_context": measure_in_context(model, tokenizer, world, sample=sample, seed=seed),
    }


def measure_dataset_knowledge(
    model, tokenizer, world: DatasetWorld, *, sample: int | None = None, seed: int = 0, batch_size: int = 128
) -> dict:
    """Score ``model`` on a world built from a dataset file (see the module docstring)."""
    rng = random.Random(f"easyetcon-knowledge:{seed}")

    def pick(items: list) -> list:
        return rng.sample(items, sample) if sample is not None and sample < len(items) else items

    def of(role: str, taught: bool) -> list:
        return pick([s for s in world.statements if s.role == role and s.taught == taught])

    def cloze(statements: list) -> dict:
        return cloze_accuracy(model, tokenizer, [s.prompt for s in statements], [s.answer for s in statements], batch_size)

    questions = of("question", True)
    return {
        "protocol": PROTOCOL,
        "world": world.fingerprint()[:16],
        "statements": cloze(of("prompt", True)),
        "questions": qa_accuracy(model, tokenizer, [s.prompt for s in questions], [s.answer for s in questions], 24, batch_size),
        "paraphrases_heldout": cloze(of("rephrase", False)),
        "locality_taught": cloze(of("locality", True)),
        "locality_heldout": cloze(of("locality", False)),
        "fillers": cloze(of("filler", True)),
        "in_context": measure_dataset_in_context(model, tokenizer, world, sample=sample, seed=seed),
    }


def measure_dataset_in_context(model, tokenizer, world: DatasetWorld, sample: int | None = None, seed: int = 0) -> dict:
    """:func:`measure_in_context` for a dataset world: another record's answer ``o'`` (of the same
    relation where the dataset names it) is stated after a record's prompt, then the prompt is
    asked again (``override``: must be ``o'``; ``override_heldout``: asked with a held-out
    paraphrase); ``ignored``: ``o'`` is stated after *another* record's prompt (must stay ``o``)."""
    rng = random.Random(f"easyetcon-in-context:{seed}")
    facts = [s for s in world.statements if s.taught and s.role == "prompt"]
    if sample is not None and sample < len(facts):
        facts = rng.sample(facts, sample)
    every = [s for s in world.statements if s.taught and s.role == "prompt"]
    answers, everything = answers_by_relation(every)
    # the other records of each relation (all records where the dataset names none), and where
    # each fact sits among them, so the other record is drawn in O(1) (prompts are unique)
    groups: dict[str | None, list] = {None: every}
    for fact in every:
        if fact.relation is not None:
            groups.setdefault(fact.relation, []).append(fact)
    places = {(relation, f.prompt): i for relation, group in groups.items() for i, f in enumerate(group)}
    paraphrases: dict[int, list[str]] = {}
    for s in world.statements:
        if s.role == "rephrase" and not s.taught:
            paraphrases.setdefault(s.record, []).append(s.prompt)
    rows: dict[str, tuple[list[str], list[str]]] = {"override": ([], []), "override_heldout": ([], []), "ignored": ([], [])}
    for fact in facts:
        pool = answers.get(fact.relation) if fact.relation is not None else None
        stated = other_answer(rng, pool if pool and len(pool) > 1 else everything, fact.answer)
        if stated is None:
            continue
        context = f"{fact.prompt} {stated}."
        rows["override"][0].append(f"{context} {fact.prompt}")
        rows["override"][1].append(stated)
        if paraphrases.get(fact.record):
            rows["override_heldout"][0].append(f"{context} {rng.choice(paraphrases[fact.record])}")
            rows["override_heldout"][1].append(stated)
        relation = fact.relation if len(groups.get(fact.relation, ())) > 1 else None
        other = choice_skipping(rng, groups[relation], places[(relation, fact.prompt)]) or fact
        rows["ignored"][0].append(f"{other.prompt} {stated}. {fact.prompt}")
        rows["ignored"][1].append(fact.answer)
    return {name: cloze_accuracy(model, tokenizer, prompts, answers)["greedy"] for name, (prompts, answers) in rows.items()} | {
        "n": len(rows["override"][0])
    }


def headline(numbers: dict) -> dict[str, float | None]:
    """The numbers a world model is built to reach, flattened for tables and assertions (a
    dataset world's when ``numbers`` came from :func:`measure_dataset_knowledge`)."""
    in_context = {
        "in_context_override": numbers["in_context"]["override"],
        "in_context_override_heldout": numbers["in_context"]["override_heldout"],
        "in_context_ignored": numbers["in_context"]["ignored"],
    }
    if "statements" in numbers:
        return {
            "statements_greedy": numbers["statements"]["greedy"],
            "statements_teacher_forced": numbers["statements"]["teacher_forced"],
            "questions": numbers["questions"]["exact_match"],
            "paraphrases_heldout_greedy": numbers["paraphrases_heldout"]["greedy"],
            "locality_taught_greedy": numbers["locality_taught"]["greedy"],
            "locality_heldout_greedy": numbers["locality_heldout"]["greedy"],
            "fillers_greedy": numbers["fillers"]["greedy"],
        } | in_context
    return {
        "train_phrasings_greedy": numbers["train_phrasings"]["greedy"],
        "train_phrasings_teacher_forced": numbers["train_phrasings"]["teacher_forced"],
        "heldout_phrasings_greedy": numbers["heldout_phrasings"]["greedy"],
        "heldout_phrasings_teacher_forced": numbers["heldout_phrasings"]["teacher_forced"],
        "multi_hop_reasoning": numbers["multi_hop_reasoning"]["exact_match"],
        "qa": numbers["qa"]["exact_match"],
    } | in_context


#: What an in-context editor (retrieval memory, IKE) needs from the model: a stated fact is used,
#: a fact stated about another subject is not.
IN_CONTEXT_FLOORS = {"in_context_override": 0.90, "in_context_ignored": 0.85}

FLOORS = {
    "train_phrasings_greedy": 0.95,
    "heldout_phrasings_greedy": 0.80,
    "multi_hop_reasoning": 0.60,
    "qa": 0.90,
} | IN_CONTEXT_FLOORS

#: Floors of a world built from a dataset file: its taught facts, in both forms, and in-context use.
DATASET_FLOORS = {"statements_greedy": 0.95, "questions": 0.90} | IN_CONTEXT_FLOORS


def floors_of(numbers: dict) -> dict[str, float]:
    """The floors that apply to a measurement (a fact world's or a dataset world's)."""
    return DATASET_FLOORS if "statements" in numbers else FLOORS


def below_floors(numbers: dict) -> list[str]:
    """Headline measures of ``numbers`` below their floor (a missing measure counts as below)."""
    values = headline(numbers)
    return [name for name, floor in floors_of(numbers).items() if values.get(name) is None or values[name] < floor]
