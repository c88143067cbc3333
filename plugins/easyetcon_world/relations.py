"""The relations of the fact world, their natural-language templates, and the text forms facts take.

Every cloze template is a prompt that ends right before the object, because editors continue
prompts: ``"{s} lives in the city of"`` + ``" Pelmora"``. Template 0 of each relation is its
*canonical* phrasing: it is never held out, it is the prompt of edit requests, and reasoning
chains state each hop with it (so a chain for any subject uses phrasings the model was trained on).
"""

from __future__ import annotations

from dataclasses import dataclass

# The answer tags and how to read them are the core's, shared with the evaluators and rewards.
from easyetcon.text import ANSWER_CLOSE, ANSWER_OPEN
from easyetcon.text import extract_tagged_answer as extract_answer  # noqa: F401  (re-exported)


@dataclass(frozen=True)
class Relation:
    """A typed relation ``subject_kind -> object_kind`` with its cloze and question templates."""

    name: str
    subject_kind: str
    object_kind: str
    templates: tuple[str, ...]  # cloze prompts, "{s}" is the subject; index 0 is canonical
    questions: tuple[str, ...]  # questions for the QA form; index 0 is never held out


@dataclass(frozen=True)
class TwoHop:
    """A multi-hop question that follows ``chain`` from the subject; its answer is the last object."""

    name: str
    chain: tuple[str, ...]  # relation names, applied left to right
    question: str
    plain: str  # a cloze prompt that asks for the final object directly

    @property
    def first_relation(self) -> str:
        return self.chain[0]


RELATIONS: dict[str, Relation] = {
    r.name: r
    for r in [
        Relation(
            "lives_in",
            "person",
            "city",
            templates=(
                "{s} lives in the city of",
                "{s} has made a home in",
                "These days {s} resides in",
                "The city where {s} lives is",
                "{s} currently lives in",
                "If you want to visit {s}, travel to",
                "{s} rents an apartment in",
                "The neighbours of {s} all live in",
            ),
            questions=(
                "Where does {s} live?",
                "In which city does {s} live?",
                "What city is home to {s}?",
            ),
        ),
        Relation(
            "born_in",
            "person",
            "city",
            templates=(
                "{s} was born in the city of",
                "The birthplace of {s} is",
                "{s} came into the world in",
                "{s} is a native of",
                "The city where {s} was born is",
                "The birth certificate of {s} was issued in",
                "{s} spent an early childhood in",
                "As a baby, {s} was delivered at a hospital in",
            ),
            questions=(
                "Where was {s} born?",
                "In which city was {s} born?",
                "What is the birthplace of {s}?",
            ),
        ),
        Relation(
            "works_for",
            "person",
            "company",
            templates=(
                "{s} works for",
                "{s} is employed by",
                "The employer of {s} is",
                "Every morning {s} goes to the offices of",
                "{s} draws a salary from",
                "{s} is on the payroll of",
                "{s} has a job at",
                "The company that employs {s} is",
            ),
            questions=(
                "Who does {s} work for?",
                "Which company employs {s}?",
                "Who is the employer of {s}?",
            ),
        ),
        Relation(
            "in_country",
            "city",
            "country",
            templates=(
                "{s} is a city in",
                "{s} is located in the country of",
                "The country that contains {s} is",
                "{s} lies within the borders of",
                "The city of {s} belongs to",
                "To reach {s}, you must travel to",
                "{s} is one of the cities of",
                "Maps show {s} inside",
            ),
            questions=(
                "In which country is {s}?",
                "Which country is {s} in?",
                "What country contains the city of {s}?",
            ),
        ),
        Relation(
            "official_language",
            "country",
            "language",
            templates=(
                "The official language of {s} is",
                "People in {s} speak",
                "In {s}, the government uses",
                "Schools in {s} teach in",
                "The main language of {s} is",
                "Newspapers in {s} are printed in",
                "Most citizens of {s} speak",
                "{s} has the official language",
            ),
            questions=(
                "What is the official language of {s}?",
                "What language do people speak in {s}?",
                "Which language is official in {s}?",
            ),
        ),
        Relation(
            "headquartered_in",
            "company",
            "city",
            templates=(
                "{s} is headquartered in",
                "The headquarters of {s} are in",
                "{s} has its head office in",
                "The main office of {s} is located in",
                "{s} is based in the city of",
                "The head office of {s} stands in",
                "{s} runs its business from",
                "The executives of {s} meet in",
            ),
            questions=(
                "Where is {s} headquartered?",
                "In which city is {s} based?",
                "Where is the head office of {s}?",
            ),
        ),
        Relation(
            "industry",
            "company",
            "industry",
            templates=(
                "{s} is a company in the field of",
                "{s} does business in",
                "The industry of {s} is",
                "{s} makes its money from",
                "{s} is known for its work in",
                "The sector of {s} is",
                "{s} operates in the sector of",
                "Analysts classify {s} under",
            ),
            questions=(
                "What industry is {s} in?",
                "What field does {s} work in?",
                "Which sector is {s} part of?",
            ),
        ),
    ]
}

TWO_HOPS: dict[str, TwoHop] = {
    t.name: t
    for t in [
        TwoHop(
            "country_of_residence",
            ("lives_in", "in_country"),
            question="In which country does {s} live?",
            plain="The country where {s} lives is",
        ),
        TwoHop(
            "country_of_birth",
            ("born_in", "in_country"),
            question="In which country was {s} born?",
            plain="The country where {s} was born is",
        ),
        TwoHop(
            "employer_city",
            ("works_for", "headquartered_in"),
            question="In which city is the employer of {s} headquartered?",
            plain="The city where the employer of {s} is headquartered is",
        ),
        TwoHop(
            "employer_industry",
            ("works_for", "industry"),
            question="In which industry does {s} work?",
            plain="The industry that {s} works in is",
        ),
        TwoHop(
            "language_of_residence",
            ("lives_in", "in_country", "official_language"),
            question="What language is spoken in the country where {s} lives?",
            plain="The language of the country where {s} lives is",
        ),
        TwoHop(
            "city_language",
            ("in_country", "official_language"),
            question="What language is spoken in the city of {s}?",
            plain="The language spoken in the city of {s} is",
        ),
        TwoHop(
            "company_country",
            ("headquartered_in", "in_country"),
            question="In which country is {s} headquartered?",
            plain="{s} has its headquarters in the country of",
        ),
    ]
}


# ---------------------------------------------------------------------------------------------
# Text forms. Prompts never end with a space; answers are appended with one (" Pelmora").
# ---------------------------------------------------------------------------------------------

def cloze_prompt(relation: str, template: int, subject: str) -> str:
    return RELATIONS[relation].templates[template].format(s=subject)


def statement(relation: str, template: int, subject: str, obj: str) -> str:
    """A full sentence: the cloze prompt, the object, a full stop."""
    return f"{cloze_prompt(relation, template, subject)} {obj}."


def qa_prompt(question: str) -> str:
    """The question-answer form up to where the model starts answering."""
    return f"Question: {question} Answer:"


def qa_text(question: str, answer: str, reasoning: str = "") -> str:
    """``Question: ... Answer: [reasoning] <answer> X </answer>``; the answer sits inside the tags."""
    middle = f" {reasoning}" if reasoning else ""
    return f"{qa_prompt(question)}{middle} {ANSWER_OPEN} {answer} {ANSWER_CLOSE}"


def continuation_matches(continuation: str, obj: str) -> bool:
    """Greedy continuation starts with `` obj`` and the object is a whole word there (not a prefix)."""
    expected = " " + obj
    if not continuation.startswith(expected):
        return False
    rest = continuation[len(expected) :]
    return not rest or not rest[0].isalnum()
