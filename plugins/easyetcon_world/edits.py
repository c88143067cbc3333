"""Counterfactual edit requests with exact ground truth, drawn from a world.

For a fact ``(s, r, o)`` the request asks for ``o'``, another entity of o's kind; ``o'`` is chosen
so that every multi-hop answer that starts with this fact changes too, where the world allows it.

* ``rephrase_prompts``: the fact's held-out templates (never seen with ``s`` in pretraining).
* ``locality``: ``"same-subject"`` probes (s's other facts) and ``"other-subject"`` probes (the
  same relation for other subjects); facts edited by another request of the same set are never
  used, so a sequential run over the whole set keeps every probe valid.
* ``portability``: each multi-hop question that starts with the edited fact, with the answer that
  follows from the *new* fact, as a plain cloze prompt (``"two-hop"``) and in the question-answer
  reasoning form (``"two-hop-reasoning"``: generate, then read ``<answer> ... </answer>``).

* ``long_form``: with ``long_form=N``, ``target_new`` is the new object followed by ``N``
  sentences the world states about it (:func:`long_form_target`), a many-token target for
  editors of long-form knowledge; ``metadata["target_object"]`` is the object alone.

Splits ``tune`` and ``test`` are disjoint by subject and fixed per world, whatever the edit seed.
By default only person facts are edited (:func:`leaf_relations`). Edits of a city, country or
company fact can be asked for with ``relations=``; their portability answers assume that edit
alone, which a sequential run that also edits a fact further along the chain invalidates.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from typing import TYPE_CHECKING, Any, Literal

from easyetcon.requests import EditRequest, Probe
from easyetcon_world.errors import WorldConfigError
from easyetcon_world.relations import RELATIONS, TWO_HOPS, qa_prompt, statement

if TYPE_CHECKING:
    from easyetcon_world.world import Fact, World

Split = Literal["tune", "test"]
SPLITS = ("tune", "test")
TUNE_FRACTION = 0.2


def split_of(world: World, subject: str) -> Split:
    """The split a subject belongs to: a hash of world seed and name, so it never moves."""
    digest = hashlib.sha256(f"{world.config.seed}:{subject}".encode()).digest()
    return "tune" if int.from_bytes(digest[:4], "big") / 2**32 < TUNE_FRACTION else "test"


def leaf_relations() -> list[str]:
    """Relations whose subjects are never anyone's object (the person facts).

    No multi-hop chain passes *through* such a fact, so any set of edits to them can be applied
    together and every request's portability answers stay right. They are the default.
    """
    object_kinds = {r.object_kind for r in RELATIONS.values()}
    return [name for name, r in RELATIONS.items() if r.subject_kind not in object_kinds]


def editable_facts(world: World, split: str, relations: list[str] | None = None) -> list[Fact]:
    """Facts of ``split`` with one of ``relations`` (default: :func:`leaf_relations`)."""
    relations = leaf_relations() if relations is None else relations
    if split not in SPLITS:
        raise WorldConfigError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    unknown = sorted(set(relations or []) - set(RELATIONS))
    if unknown:
        raise WorldConfigError(f"unknown relations {unknown}; choose from: {', '.join(RELATIONS)}")
    return [
        f for f in world.facts if split_of(world, f.subject) == split and f.relation in relations
    ]


def _chains_from(relation: str) -> list[str]:
    return [kind for kind, spec in TWO_HOPS.items() if spec.first_relation == relation]


def _downstream(world: World, relation: str) -> dict[str, tuple[str, ...]]:
    """For every possible object of ``relation``: the final answers of the chains that start with it."""
    tails = [TWO_HOPS[k].chain[1:] for k in _chains_from(relation)]
    return {
        o: tuple(world.follow(o, tail)[-1].object for tail in tails)
        for o in world.entities[RELATIONS[relation].object_kind]
    }


def choose_target(
    world: World,
    fact: Fact,
    rng: random.Random,
    downstream: dict[str, tuple[str, ...]] | None = None,
) -> str:
    """Another object of the same kind; preferably one that changes every dependent multi-hop answer."""
    downstream = downstream if downstream is not None else _downstream(world, fact.relation)
    old = downstream[fact.object]
    pool = [o for o in downstream if o != fact.object]
    preferred = [o for o in pool if all(new != was for new, was in zip(downstream[o], old))]
    return rng.choice(preferred or pool)


def long_form_target(world: World, obj: str, sentences: int) -> str:
    """``obj`` and a full stop, then up to ``sentences`` sentences the world states about it, in
    canonical phrasing, breadth-first along its facts and their objects' facts:
    ``"Pelmora. Pelmora is a city in Varnia. The official language of Varnia is Lorian."``.
    Fewer where the chain ends sooner (a language has no facts)."""
    parts, queue = [f"{obj}."], [obj]
    while queue and len(parts) <= sentences:
        subject = queue.pop(0)
        for fact in world.facts_of(subject)[: sentences + 1 - len(parts)]:
            parts.append(statement(fact.relation, 0, subject, fact.object))
            queue.append(fact.object)
    return " ".join(parts)


def make_edit_requests(
    world: World,
    split: str = "test",
    n: int | None = None,
    seed: int = 0,
    *,
    relations: list[str] | None = None,
    other_subject_probes: int = 2,
    long_form: int = 0,
) -> list[EditRequest]:
    """``n`` distinct counterfactual edits (all of the split's facts when ``n`` is None).

    ``relations`` limits the edited relations (default: the person facts, see :func:`leaf_relations`).
    ``long_form`` > 0: each target is the new object and that many sentences about it
    (:func:`long_form_target`); the same facts and objects as without.

    Deterministic from the world and ``seed``; at most one request per fact, so the set can be
    applied sequentially without two edits contradicting each other.
    """
    if long_form < 0:
        raise WorldConfigError(f"long_form={long_form}: give the number of sentences after the new object (0: the object alone)")
    candidates = editable_facts(world, split, relations)
    if n is not None and (n < 1 or n > len(candidates)):
        raise WorldConfigError(
            f"n={n} edits requested but the {split!r} split of preset {world.config.preset!r} has "
            f"{len(candidates)} editable facts; ask for 1..{len(candidates)} or use a larger preset"
        )
    rng = random.Random(f"easyetcon-edits:{world.config.seed}:{seed}:{split}")
    shuffled = rng.sample(candidates, len(candidates))
    # one fact per subject first, then second facts, ...: small sets keep same-subject probes
    per_subject: Counter[str] = Counter()
    ranked = []
    for f in shuffled:
        ranked.append((per_subject[f.subject], f))
        per_subject[f.subject] += 1
    chosen = [f for _, f in sorted(ranked, key=lambda item: item[0])][: n or len(candidates)]
    edited = {(f.subject, f.relation) for f in chosen}
    fact_ids = {(f.subject, f.relation): i for i, f in enumerate(world.facts)}
    tag = world.fingerprint()[:8]
    by_relation: dict[str, list[Fact]] = {}
    for f in world.facts:
        if (f.subject, f.relation) not in edited:
            by_relation.setdefault(f.relation, []).append(f)

    downstream = {r: _downstream(world, r) for r in {f.relation for f in chosen}}
    requests = []
    for fact in chosen:
        target = choose_target(world, fact, rng, downstream[fact.relation])
        same_subject = [
            Probe(prompt=f.prompt(0), answer=f.object, kind="same-subject")
            for f in world.facts_of(fact.subject)
            if (f.subject, f.relation) not in edited
        ]
        pool = by_relation.get(fact.relation, [])
        drawn = rng.sample(pool, min(other_subject_probes + 1, len(pool)))
        other_subject = [
            Probe(prompt=f.prompt(0), answer=f.object, kind="other-subject")
            for f in drawn
            if f.subject != fact.subject
        ][:other_subject_probes]
        portability, old_answers = [], {}
        override = {(fact.subject, fact.relation): target}
        for kind in _chains_from(fact.relation):
            spec = TWO_HOPS[kind]
            new_answer = world.follow(fact.subject, spec.chain, override)[-1].object
            old_answers[kind] = world.follow(fact.subject, spec.chain)[-1].object
            portability.append(
                Probe(prompt=spec.plain.format(s=fact.subject), answer=new_answer, kind="two-hop")
            )
            portability.append(
                Probe(
                    prompt=qa_prompt(spec.question.format(s=fact.subject)),
                    answer=new_answer,
                    kind="two-hop-reasoning",
                )
            )
        questions = RELATIONS[fact.relation].questions
        metadata: dict[str, Any] = {
            "source": "fact-world",
            "world": tag,
            "preset": world.config.preset,
            "world_seed": world.config.seed,
            "split": split,
            "fact": [fact.subject, fact.relation, fact.object],
            "qa_prompts": [
                qa_prompt(questions[q].format(s=fact.subject)) for q in fact.trained_questions
            ],
            "qa_heldout_prompts": [
                qa_prompt(questions[q].format(s=fact.subject)) for q in fact.heldout_questions
            ],
            "old_multi_hop_answers": old_answers,
        }
        if long_form:
            metadata["target_object"] = target
        requests.append(
            EditRequest(
                prompt=fact.prompt(0),
                subject=fact.subject,
                target_new=long_form_target(world, target, long_form) if long_form else target,
                ground_truth=fact.object,
                rephrase_prompts=[fact.prompt(t) for t in fact.heldout_templates],
                locality=same_subject + other_subject,
                portability=portability,
                relation=fact.relation,
                case_id=f"fw-{tag}-{fact_ids[(fact.subject, fact.relation)]}",
                metadata=metadata,
            )
        )
    return requests


def to_knowedit(requests: list[EditRequest]) -> list[dict[str, Any]]:
    """KnowEdit records (the layout of ``train_cf.json``, which the ``knowedit-counterfact``
    loader reads back), one per request; every paraphrase in ``rephrase_prompt`` (a list)."""

    def group(probes: list[Probe], kind: str) -> list[dict[str, str]]:
        return [{"prompt": p.prompt, "ground_truth": p.answer} for p in probes if p.kind == kind]

    records = []
    for r in requests:
        records.append(
            {
                "case_id": r.case_id,
                "subject": r.subject,
                "prompt": r.prompt,
                "target_new": r.target_new,
                "ground_truth": r.ground_truth,
                "rephrase_prompt": r.rephrase_prompts,
                "locality": {
                    "Relation_Specificity": group(r.locality, "same-subject"),
                    "Neighborhood": group(r.locality, "other-subject"),
                },
                "portability": {
                    "Reasoning": group(r.portability, "two-hop"),
                    "Reasoning_Chain": group(r.portability, "two-hop-reasoning"),
                },
            }
        )
    return records
