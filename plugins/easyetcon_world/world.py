"""A generated ground-truth knowledge world: entities with made-up names and typed facts about them.

The world is a pure function of ``(preset, seed, overrides)``. Names are pronounceable syllable
strings ("Zarvik Tollen", "Pelmora", "Vastria") so no fact can be real-world knowledge the model
brought with it. Relations chain (person -lives_in-> city -in_country-> country
-official_language-> language), so editing one fact changes the answers of multi-hop questions.

Each fact keeps two of its cloze templates (and one question) *held out*: pretraining states the
fact with the other templates only, while the held-out ones are used with other subjects. They
are the rephrase prompts of edit requests and measure whether knowledge generalises across
phrasings.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from easyetcon_world.errors import WorldConfigError
from easyetcon_world.relations import RELATIONS, TWO_HOPS, cloze_prompt

# Objects of kind "industry" are ordinary words: a category, not a made-up entity.
INDUSTRY_WORDS = (
    "shipping",
    "mining",
    "textiles",
    "banking",
    "software",
    "farming",
    "publishing",
    "aviation",
    "brewing",
    "furniture",
    "fishing",
    "insurance",
    "glassware",
    "robotics",
    "printing",
    "pottery",
    "railways",
    "perfume",
    "timber",
    "cheesemaking",
)


class WorldSize(BaseModel):
    """How many entities of each kind the world has."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    people: int = Field(ge=1)
    cities: int = Field(ge=2)
    countries: int = Field(ge=2)
    languages: int = Field(ge=2)
    companies: int = Field(ge=2)
    industries: int = Field(ge=2, le=len(INDUSTRY_WORDS))


PRESETS: dict[str, WorldSize] = {
    # unit tests and quick experiments: pretrains in about 40 s on one CPU thread
    "tiny": WorldSize(people=24, cities=8, countries=4, languages=3, companies=6, industries=4),
    # recipe search: about 10 minutes
    "small": WorldSize(people=80, cities=16, countries=6, languages=4, companies=10, industries=6),
    # the shipped model: enough facts for 800 distinct counterfactual test edits; ~9 minutes
    "default": WorldSize(
        people=300, cities=40, countries=10, languages=7, companies=24, industries=10
    ),
    # serious benchmarking; pretraining takes hours on 2 CPU cores
    "large": WorldSize(
        people=2000, cities=160, countries=30, languages=18, companies=120, industries=20
    ),
}


class WorldConfig(BaseModel):
    """Everything a generated world is a function of."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: str = "default"
    seed: int = 0
    size: WorldSize
    heldout_templates: int = Field(default=2, ge=1, description="cloze templates held out per fact")
    heldout_questions: int = Field(default=1, ge=0, description="QA questions held out per fact")
    two_hop_train_fraction: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="share of subjects whose multi-hop questions (reasoning form) are in pretraining",
    )


def make_world_config(
    preset: str = "default", seed: int = 0, **overrides: int | float
) -> WorldConfig:
    """Validate a preset name plus optional size/holdout overrides; every problem is reported at once."""
    if preset not in PRESETS:
        raise WorldConfigError(
            f"unknown world preset {preset!r}; choose one of: {', '.join(PRESETS)}"
        )
    size_fields = set(WorldSize.model_fields)
    world_fields = set(WorldConfig.model_fields) - {"preset", "seed", "size"}
    problems = []
    for name, value in overrides.items():
        if name not in size_fields | world_fields:
            problems.append(
                f"{name!r} is not a world option; valid: {', '.join(sorted(size_fields | world_fields))}"
            )
        elif isinstance(value, (int, float)) and value < 0:
            problems.append(f"{name!r} must not be negative (got {value})")
    size = PRESETS[preset].model_dump() | {k: v for k, v in overrides.items() if k in size_fields}
    # every object must be the answer of some fact, or the model never learns its name
    for fewer, more, link in [
        ("languages", "countries", "each language is the official one of a country"),
        ("countries", "cities", "each country has a city"),
        ("industries", "companies", "each industry has a company"),
        ("companies", "people", "each company employs someone"),
    ]:
        if not problems and size[fewer] > size[more]:
            problems.append(f"{fewer}={size[fewer]} exceeds {more}={size[more]}, but {link}")
    if problems:
        raise WorldConfigError("invalid world options", problems)
    options = {k: v for k, v in overrides.items() if k in world_fields}
    try:
        return WorldConfig(preset=preset, seed=seed, size=WorldSize(**size), **options)
    except ValueError as error:  # pydantic's ValidationError is a ValueError
        raise WorldConfigError(f"invalid world options for preset {preset!r}: {error}") from None


# ---------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------

# consonant-vowel syllables with a closing consonant read like names: "Zarik", "Velanese"
_ONSETS = "b d f g h k l m n p r s t v z b d k l m n r s t v th sh br dr kr tr".split()
_VOWELS = "a e i o u a e i o ai".split()  # repeats weight the plain vowels
_CODAS = "n r l s k th x m nd rn".split()
_ENDINGS = {
    "first": ["", "", "", "a", "o"],
    "last": ["", "", "en", "ar", "ov", "ell"],
    "city": ["ora", "mere", "dale", "holm", "wick", "ton", "grad", "port"],
    "country": ["ia", "and", "onia", "eth"],
    "language": ["ish", "ese", "ic", "ian"],
    "company": [""],
}
_COMPANY_SUFFIXES = (
    "Industries",
    "Group",
    "Works",
    "Holdings",
    "Systems",
    "Labs",
    "Foundry",
    "Trading",
    "Partners",
)


def _word(rng: random.Random, style: str) -> str:
    syllables = 2 if style in ("first", "last", "company") else rng.choice([1, 2])
    stem = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables))
    ending = rng.choice(_ENDINGS[style])
    if not ending or ending[0] in "aeiou" or style in ("first", "last"):
        stem += rng.choice(_CODAS)  # "Vas" + "ia", not "Va" + "ia"
    return (stem + ending).capitalize()


def _unique_names(rng: random.Random, count: int, make, taken: set[str]) -> list[str]:
    names: list[str] = []
    while len(names) < count:
        name = make()
        # a name must not be another name or a first word of one: answers are matched as whole words
        if name in taken or any(w in taken for w in name.split()) or len(name.split()[0]) > 11:
            continue
        taken.add(name)
        names.append(name)
    return names


def _generate_entities(size: WorldSize, rng: random.Random) -> dict[str, list[str]]:
    taken: set[str] = set(INDUSTRY_WORDS)
    entities = {
        "country": _unique_names(rng, size.countries, lambda: _word(rng, "country"), taken),
        "language": _unique_names(rng, size.languages, lambda: _word(rng, "language"), taken),
        "city": _unique_names(rng, size.cities, lambda: _word(rng, "city"), taken),
        "company": _unique_names(
            rng,
            size.companies,
            lambda: f"{_word(rng, 'company')} {rng.choice(_COMPANY_SUFFIXES)}",
            taken,
        ),
        "industry": list(INDUSTRY_WORDS[: size.industries]),
    }
    # people share first and last names, like real ones; only the full name is unique
    firsts = _unique_names(rng, max(4, size.people // 4), lambda: _word(rng, "first"), taken)
    lasts = _unique_names(rng, max(4, size.people // 2), lambda: _word(rng, "last"), taken)
    if size.people > len(firsts) * len(lasts):
        raise WorldConfigError(f"people={size.people} is too many for the name pools")
    people: list[str] = []
    seen: set[str] = set()
    while len(people) < size.people:
        name = f"{rng.choice(firsts)} {rng.choice(lasts)}"
        if name not in seen:
            seen.add(name)
            people.append(name)
    entities["person"] = people
    return entities


# ---------------------------------------------------------------------------------------------
# Facts and the world
# ---------------------------------------------------------------------------------------------


class Fact(BaseModel):
    """``subject --relation--> object`` plus which of the relation's phrasings pretraining never
    pairs with this subject."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    subject: str
    relation: str
    object: str
    heldout_templates: tuple[int, ...]
    heldout_questions: tuple[int, ...]

    @property
    def trained_templates(self) -> list[int]:
        n = len(RELATIONS[self.relation].templates)
        return [i for i in range(n) if i not in self.heldout_templates]

    @property
    def trained_questions(self) -> list[int]:
        n = len(RELATIONS[self.relation].questions)
        return [i for i in range(n) if i not in self.heldout_questions]

    def prompt(self, template: int = 0) -> str:
        return cloze_prompt(self.relation, template, self.subject)


@dataclass(frozen=True)
class Hop:
    subject: str
    relation: str
    object: str


@dataclass(frozen=True)
class MultiHopQuestion:
    """A multi-hop question about ``subject``; ``hops`` is the chain of facts that answers it."""

    subject: str
    kind: str  # a key of TWO_HOPS
    hops: tuple[Hop, ...]
    trained: bool  # whether pretraining shows this question in the reasoning form

    @property
    def answer(self) -> str:
        return self.hops[-1].object


Overrides = dict[tuple[str, str], str]  # (subject, relation) -> object that replaces the true one


class World(BaseModel):
    """Entities and facts. Build one with :func:`build_world`; save/load it as JSON."""

    model_config = ConfigDict(extra="forbid")

    format: str = "easyetcon-fact-world/1"
    config: WorldConfig
    entities: dict[str, list[str]]
    facts: list[Fact]
    two_hop_trained: list[tuple[str, str]]  # (subject, two-hop kind) shown in pretraining

    _index: dict[tuple[str, str], Fact] = PrivateAttr(default_factory=dict)
    _kind_of: dict[str, str] = PrivateAttr(default_factory=dict)
    _by_subject: dict[str, list[Fact]] = PrivateAttr(default_factory=dict)

    def model_post_init(self, __context: object) -> None:
        self._index = {(f.subject, f.relation): f for f in self.facts}
        for f in self.facts:
            self._by_subject.setdefault(f.subject, []).append(f)
        self._kind_of = {name: kind for kind, names in self.entities.items() for name in names}

    # --- lookups -------------------------------------------------------------------------------
    def fact(self, subject: str, relation: str) -> Fact:
        try:
            return self._index[(subject, relation)]
        except KeyError:
            raise KeyError(f"the world has no fact ({subject!r}, {relation!r})") from None

    def object_of(self, subject: str, relation: str, overrides: Overrides | None = None) -> str:
        if overrides and (subject, relation) in overrides:
            return overrides[(subject, relation)]
        return self.fact(subject, relation).object

    def kind_of(self, name: str) -> str:
        return self._kind_of[name]

    def facts_of(self, subject: str) -> list[Fact]:
        return list(self._by_subject.get(subject, []))

    def subjects(self) -> list[str]:
        return sorted({f.subject for f in self.facts})

    def follow(
        self, subject: str, chain: tuple[str, ...], overrides: Overrides | None = None
    ) -> tuple[Hop, ...]:
        """Walk ``chain`` from ``subject``; ``overrides`` answers "what if this fact were edited"."""
        hops = []
        for relation in chain:
            obj = self.object_of(subject, relation, overrides)
            hops.append(Hop(subject, relation, obj))
            subject = obj
        return tuple(hops)

    def multi_hop_questions(self, overrides: Overrides | None = None) -> list[MultiHopQuestion]:
        trained = set(map(tuple, self.two_hop_trained))
        questions = []
        for kind, spec in TWO_HOPS.items():
            first = RELATIONS[spec.first_relation]
            for subject in self.entities[first.subject_kind]:
                questions.append(
                    MultiHopQuestion(
                        subject,
                        kind,
                        self.follow(subject, spec.chain, overrides),
                        (subject, kind) in trained,
                    )
                )
        return questions

    def summary(self) -> dict[str, object]:
        multi = self.multi_hop_questions()
        return {
            "preset": self.config.preset,
            "seed": self.config.seed,
            "entities": {kind: len(names) for kind, names in self.entities.items()},
            "relations": len(RELATIONS),
            "facts": len(self.facts),
            "multi_hop_questions": len(multi),
            "multi_hop_in_pretraining": sum(q.trained for q in multi),
        }

    # --- identity and storage ------------------------------------------------------------------
    def fingerprint(self) -> str:
        """sha256 of the world's canonical JSON: two worlds with the same fingerprint are identical."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=1), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> World:
        return cls.model_validate_json(Path(path).read_text(encoding="utf-8"))


def _heldout_schedule(index: int, count: int, choices: int) -> tuple[int, ...]:
    """Held-out indices among ``1..choices`` for the ``index``-th fact of a relation.

    Rotating rather than random, so every template is held out for some subjects and trained for
    the others, even in a world with four countries.
    """
    if count == 0 or choices == 0:
        return ()
    start = (index * count) % choices
    return tuple(sorted(1 + (start + j) % choices for j in range(min(count, choices))))


def build_world(preset: str = "default", seed: int = 0, **overrides: int | float) -> World:
    """Generate the world of ``preset`` deterministically from ``seed``.

    ``overrides`` change sizes (``people=50``) or holdout options (``heldout_templates=3``).
    Raises :class:`WorldConfigError` for an unknown preset or a bad option.
    """
    config = make_world_config(preset, seed, **overrides)
    rng = random.Random(f"easyetcon-world:{seed}")
    entities = _generate_entities(config.size, rng)

    objects: dict[tuple[str, str], str] = {}

    def assign(relation: str, subjects: list[str], pool: list[str], cover: bool) -> None:
        # cover=True: every object is used at least once (each country has a city, ...)
        shuffled = rng.sample(pool, len(pool)) if cover else []
        for i, subject in enumerate(subjects):
            objects[(subject, relation)] = shuffled[i] if i < len(shuffled) else rng.choice(pool)

    assign("official_language", entities["country"], entities["language"], cover=True)
    assign("in_country", entities["city"], entities["country"], cover=True)
    assign("headquartered_in", entities["company"], entities["city"], cover=False)
    assign("industry", entities["company"], entities["industry"], cover=True)
    assign("lives_in", entities["person"], entities["city"], cover=False)
    assign("born_in", entities["person"], entities["city"], cover=False)
    assign("works_for", entities["person"], entities["company"], cover=True)

    facts: list[Fact] = []
    for relation, spec in RELATIONS.items():
        subjects = entities[spec.subject_kind]
        order = rng.sample(range(len(subjects)), len(subjects))
        for rank, i in enumerate(order):
            subject = subjects[i]
            facts.append(
                Fact(
                    subject=subject,
                    relation=relation,
                    object=objects[(subject, relation)],
                    heldout_templates=_heldout_schedule(
                        rank, config.heldout_templates, len(spec.templates) - 1
                    ),
                    heldout_questions=_heldout_schedule(
                        rank, config.heldout_questions, len(spec.questions) - 1
                    ),
                )
            )
    facts.sort(key=lambda f: (list(RELATIONS).index(f.relation), f.subject))

    two_hop_trained: list[tuple[str, str]] = []
    for kind, spec in TWO_HOPS.items():
        subjects = entities[RELATIONS[spec.first_relation].subject_kind]
        shown = rng.sample(subjects, round(config.two_hop_train_fraction * len(subjects)))
        two_hop_trained.extend((s, kind) for s in sorted(shown))

    world = World(config=config, entities=entities, facts=facts, two_hop_trained=two_hop_trained)
    _check_every_template_trained(world)
    return world


def _check_every_template_trained(world: World) -> None:
    """A held-out phrasing only measures generalisation if pretraining uses it with *other* subjects."""
    problems = []
    for relation, spec in RELATIONS.items():
        trained = {t for f in world.facts if f.relation == relation for t in f.trained_templates}
        missing = set(range(len(spec.templates))) - trained
        if missing:
            problems.append(f"relation {relation!r}: templates {sorted(missing)} are never trained")
    if problems:
        raise WorldConfigError(
            "held-out templates leave some phrasings unseen; lower heldout_templates or grow the world",
            problems,
        )
