"""A world built from an edit-dataset file, fair to every editor family.

The records are read by whichever registered dataset format fits the file (KnowEdit, CounterFact
in the ROME and EasyEdit schemas, ZsRE-MEND, plain QA, easyetcon's own request files: the data
plugin's loaders through :func:`easyetcon.dataset_files.load_edit_dataset`), so a world keeps
exactly the locality probes, paraphrases and portability probes the evaluation later reads. The
corpus then teaches what a fair test needs, in the spirit of the generated fact world:

* each record's old fact after its prompt, and in the question form with answer tags
  (``Question: ... Answer: <answer> X </answer>``, the question :mod:`easyetcon.questions`
  derives), so TPSFT's and GRPO's tagged answers exist on this model too;
* a share of the locality probes; the rest (``heldout_locality``) are held out, so locality is
  also measured on prompts the model was never trained on verbatim;
* **no paraphrase**: paraphrases are held out like the fact world's held-out templates, so
  generalization measures an edit, not a memorised sentence;
* every ``target_new`` as the answer of some taught fact: a target no record teaches gets
  statements about *filler subjects* (invented names, the request's prompt and question with the
  subject replaced; ``fillers_per_target`` of them), so ROME or AlphaEdit can reach it;
* in-context updates (see :func:`easyetcon_world.corpus.dataset_context_documents`), so in-context
  editors can be measured.

Every choice is a pure function of the file and :class:`DatasetWorldOptions`, and part of the
world's fingerprint (and so of the pretrained model's cache key).
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from easyetcon.dataset_files import load_edit_dataset
from easyetcon.questions import GENERIC_QUESTION, QUESTION_FORM, RELATION_QUESTIONS
from easyetcon.requests import EditRequest
from easyetcon.text import ANSWER_CLOSE, ANSWER_OPEN
from easyetcon_world.errors import WorldRecordError

FORMAT = "easyetcon-dataset-world/2"


class Statement(BaseModel):
    """One fact of the world: ``prompt`` followed by `` answer`` (a question's answer in tags)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str
    answer: str
    role: str  # "prompt", "question", "rephrase", "locality", "filler" or "filler-question"
    record: int  # position of the record's request in the file's requests
    taught: bool = True  # False: held out from pretraining, only measured
    relation: str | None = None  # the record's relation when the dataset names it

    def text(self) -> str:
        """The statement as the corpus writes it."""
        if self.role in ("question", "filler-question"):
            return f"{self.prompt} {ANSWER_OPEN} {self.answer} {ANSWER_CLOSE}"
        return f"{self.prompt} {self.answer}"


class DatasetWorldOptions(BaseModel):
    """What a dataset world teaches and holds out."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    heldout_locality: float = Field(
        default=0.25, ge=0.0, le=1.0,
        description="share of the locality probes held out from pretraining (chosen by a hash of the prompt)",
    )
    questions: bool = Field(
        default=True,
        description="teach each record's fact in the question form with answer tags (and give "
        "its request that question as qa_prompts, so TPSFT/GRPO answer in tags)",
    )
    fillers_per_target: int = Field(
        default=2, ge=0,
        description="statements about invented subjects for each target_new no record teaches as an answer",
    )
    seed: int = Field(default=0, description="seeds the held-out choice and the filler names")


class DatasetWorld(BaseModel):
    """Statements to pretrain on (or hold out) plus the dataset's edit requests."""

    model_config = ConfigDict(extra="forbid")

    format: str = FORMAT
    source: str
    dataset_format: str | None = None
    options: DatasetWorldOptions = DatasetWorldOptions()
    statements: list[Statement]
    requests: list[EditRequest]
    skipped: list[int] = []  # records without a ground truth, skipped on request
    unchanged: list[int] = []  # records whose target_new equals the ground truth: taught, not edited
    unreachable: list[str] = []  # request ids whose target could not get a filler (no subject in the prompt)

    @field_validator("format")
    @classmethod
    def _current_format(cls, value: str) -> str:
        if value != FORMAT:
            raise ValueError(
                f"this world was built by another version of easyetcon_world ({value!r}, this one "
                f"reads {FORMAT!r}); rebuild it with `easyetcon world build --from-dataset FILE`"
            )
        return value

    def fingerprint(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()

    @property
    def taught(self) -> list[Statement]:
        return [s for s in self.statements if s.taught]

    def summary(self) -> dict[str, object]:
        def count(role: str, taught: bool | None = None) -> int:
            return sum(s.role == role and (taught is None or s.taught == taught) for s in self.statements)

        return {
            "source": self.source,
            "format": self.dataset_format,
            "records": len(self.requests),
            "skipped": len(self.skipped),
            "unchanged": len(self.unchanged),
            "statements taught": len(self.taught),
            "paraphrases held out": count("rephrase", False),
            "locality probes taught / held out": f"{count('locality', True)} / {count('locality', False)}",
            "filler statements": count("filler") + count("filler-question"),
            "targets without a filler": len(self.unreachable),
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=1), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> DatasetWorld:
        return cls.model_validate_json(Path(path).read_text(encoding="utf-8"))


def question_of(request: EditRequest) -> str:
    """The question form of a request's fact, always with ``Answer:`` last (so the answer comes
    in tags): the relation's question, a question prompt wrapped in the form, else the generic one."""
    relation_question = RELATION_QUESTIONS.get(request.relation or "")
    if relation_question is not None:
        return QUESTION_FORM.format(question=relation_question.format(subject=request.subject))
    prompt = request.prompt.strip()
    if prompt.endswith("?"):
        return QUESTION_FORM.format(question=prompt)
    return GENERIC_QUESTION.format(prompt=prompt)


def _held_out(prompt: str, options: DatasetWorldOptions) -> bool:
    digest = hashlib.sha256(f"easyetcon-heldout:{options.seed}:{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < options.heldout_locality


def world_from_dataset(
    path: str | Path,
    *,
    format: str | None = None,
    skip_missing: bool = False,
    limit: int | None = None,
    options: DatasetWorldOptions | None = None,
    registry: Any = None,
) -> DatasetWorld:
    """Read an edit-dataset file into a :class:`DatasetWorld` (see the module docstring).

    ``format`` names a registered dataset format (detected from the records otherwise). A record
    without a ground-truth answer raises :class:`WorldRecordError` naming it, or is skipped (and
    counted in ``skipped``) when ``skip_missing`` is true. ``limit`` keeps the first ``limit``
    usable records.
    """
    path = Path(path)
    if not path.is_file():
        raise WorldRecordError(f"dataset file {str(path)!r} does not exist")
    if limit is not None and limit < 1:
        raise WorldRecordError(f"limit must be at least 1, not {limit}")
    options = options or DatasetWorldOptions()
    dataset_format = format or _detected_format(path, registry)
    loaded = load_edit_dataset(path, dataset_format, registry=registry)

    statements: dict[str, Statement] = {}  # prompt -> statement; a later contradiction is dropped

    def add(statement: Statement) -> None:
        known = statements.get(statement.prompt)
        if known is None or (statement.taught and not known.taught):
            statements[statement.prompt] = statement  # taught anywhere means taught

    requests: list[EditRequest] = []
    records: list[int] = []  # each request's position in the file's requests
    skipped: list[int] = []
    unchanged: list[int] = []
    for index, request in enumerate(loaded):
        if limit is not None and len(requests) >= limit:
            break
        truth = request.ground_truth
        if truth is None and "ground_truth_equals_target" in request.metadata:
            unchanged.append(index)  # real datasets have a few; the fact is still worth teaching
            add(Statement(prompt=request.prompt, answer=request.target_new, role="prompt", record=index, relation=request.relation))
            continue
        if truth is None:
            if skip_missing:
                skipped.append(index)
                continue
            raise WorldRecordError(
                f"{path.name}: record {index} (request {request.request_id!r}) has no ground-truth "
                f"answer, so the model cannot be taught the old fact; pass skip_missing=True "
                f"(--skip-missing) to skip such records"
            )
        question = question_of(request)
        add(Statement(prompt=request.prompt, answer=truth, role="prompt", record=index, relation=request.relation))
        if options.questions:
            add(Statement(prompt=question, answer=truth, role="question", record=index, relation=request.relation))
        for rephrase in request.rephrase_prompts:
            add(Statement(prompt=rephrase, answer=truth, role="rephrase", record=index, taught=False))
        for probe in request.locality:
            add(Statement(prompt=probe.prompt, answer=probe.answer, role="locality", record=index,
                          taught=not _held_out(probe.prompt, options)))
        if options.questions:
            metadata = {**request.metadata, "qa_prompts": [question]}
            request = request.model_copy(update={"metadata": metadata})
        requests.append(request)
        records.append(index)
    if not requests:
        raise WorldRecordError(
            f"{path.name}: no usable records (skipped {len(skipped)} without ground truth, "
            f"{len(unchanged)} whose target equals the ground truth)"
        )
    unreachable = _add_fillers(requests, records, statements, add, options)
    return DatasetWorld(
        source=path.name,
        dataset_format=dataset_format,
        options=options,
        statements=list(statements.values()),
        requests=requests,
        skipped=skipped,
        unchanged=unchanged,
        unreachable=unreachable,
    )


def _detected_format(path: Path, registry: Any) -> str | None:
    from easyetcon.dataset_files import DatasetFormatError, detect_format, read_records

    try:
        return detect_format(read_records(path), registry=registry)
    except DatasetFormatError:
        return None  # no format plugin loaded (the core reads its own request files), or none
        # fits: load_edit_dataset then detects again and raises the error naming the records


def _add_fillers(
    requests: list[EditRequest], records: list[int], statements: dict[str, Statement], add, options: DatasetWorldOptions
) -> list[str]:
    """Teach each target no taught statement answers, about invented subjects; return the ids
    of requests whose target could not get one (their subject is not in the prompt)."""
    from easyetcon_world.world import _word

    answers = {s.answer.strip() for s in statements.values() if s.taught}
    taken = {r.subject for r in requests}
    rng = random.Random(f"easyetcon-fillers:{options.seed}")
    unreachable: list[str] = []
    for index, request in zip(records, requests):
        target = request.target_new.strip()
        if target in answers or options.fillers_per_target == 0:
            continue
        if request.subject not in request.prompt:
            unreachable.append(request.request_id)
            continue
        answers.add(target)
        for _ in range(options.fillers_per_target):
            name = f"{_word(rng, 'first')} {_word(rng, 'last')}"
            while name in taken:
                name = f"{_word(rng, 'first')} {_word(rng, 'last')}"
            taken.add(name)
            prompt = request.prompt.replace(request.subject, name)
            add(Statement(prompt=prompt, answer=target, role="filler", record=index, relation=request.relation))
            if options.questions:
                asked = question_of(request.model_copy(update={"subject": name, "prompt": prompt}))
                add(Statement(prompt=asked, answer=target, role="filler-question", record=index, relation=request.relation))
    return unreachable
