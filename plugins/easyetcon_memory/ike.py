"""ike: In-Context Knowledge Editing (Zheng et al., EMNLP 2023, "Can We Edit Factual Knowledge
by In-Context Learning?"). No weight changes; every prompt is asked after a few demonstrations
of how to use a new fact, then the new fact itself.

A *demonstration* shows a new fact and a prompt answered the way the fact demands. Each edit
fact gives three kinds:

* copy: the fact's own prompt, answered with the new target;
* update: a paraphrase of it (a rephrase prompt), answered with the new target;
* retain: an unrelated prompt (a locality probe), answered with its original answer.

The *pool* of demonstrations comes from ``demonstrations_from`` (a dataset file, or a registered
dataset such as ``fact-world`` with ``demonstrations_options: {split: tune}``: the paper's
training facts), or, by default, from the requests edited so far (each edit adds its own three
kinds). The pool is stored in the memory store, so undo, the journal and a saved memory carry it.

At inference a prompt rewriter turns each query into::

    <k demonstrations, least similar first> <new fact + query>   (query_template)

1. *Fact*: the stored edit whose prompt is most similar to the query, among edits whose subject
   the query names when there are any (``prefer_subject``). IKE has no scope classifier: every
   query, in scope or not, is asked after the nearest fact; the retain demonstrations are what
   teach the model to leave unrelated queries alone.
2. *Demonstrations*: the ``k`` pool demonstrations most similar (sentence embeddings, or TF-IDF)
   to the query as asked with that fact, never one built from the fact's own request and never
   one that asks the query itself (a test prompt must not be answered in its own context).
3. *Context*: the whole prompt, in the model's prompt format, must leave ``answer_tokens`` of the
   model's positions (``max_context_tokens``, default its ``max_position_embeddings``) for the
   answer; the least similar demonstrations, which come first, are dropped until it does (a
   fact and query longer than that on their own are asked as they are).
"""

from __future__ import annotations

import hashlib
import json
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import ConfigDict, Field, field_validator

from easyetcon.errors import ConfigError
from easyetcon.records import MemoryStore
from easyetcon.requests import EditRequest
from easyetcon_memory.retrieval import (
    ContextTemplate,
    FactTemplate,
    SentenceEmbedder,
    SentenceRetrieverOptions,
    TfidfRetriever,
    check_template,
    choose_retriever,
    make_scorer,
    mentions_subject,
    fact_entry,
    fact_sentence,
    forget_same_fact,
)
from easyetcon_memory.storage import StoreCache, require_entries

DEMONSTRATION_KINDS = ("copy", "update", "retain")


class IkeConfig(SentenceRetrieverOptions):
    """Options of ``ike``."""

    model_config = ConfigDict(extra="forbid")

    k: int = Field(
        default=32, ge=0, le=256,
        description="demonstrations in front of each query (the paper: 32; EasyEdit's YAMLs: 16); fewer when the context is short",
    )
    demonstrations_from: str | None = Field(
        default=None,
        description="dataset file or registered dataset whose requests form the demonstration pool; "
        "default: the requests edited so far",
    )
    demonstrations_options: dict[str, Any] = Field(
        default_factory=dict, description="options of the registered dataset in demonstrations_from (e.g. {split: tune})"
    )
    demonstrations_limit: int | None = Field(
        default=None, ge=1, description="use only the first N requests of demonstrations_from"
    )
    prefer_subject: bool = Field(
        default=True, description="the fact shown is chosen among edits whose subject the query names, when any does"
    )
    fact_template: FactTemplate = Field(default="{prompt} {target}", description="the new fact; fields: prompt, target, subject")
    demonstration_template: str = Field(
        default="New Fact: {fact}\nPrompt: {prompt} {answer}\n\n",
        description="one demonstration; fields: fact, prompt, answer",
    )
    query_template: ContextTemplate = Field(
        default="New Fact: {fact}\nPrompt: {prompt}", description="the new fact and the query, last; fields: fact, prompt"
    )
    max_context_tokens: int | None = Field(
        default=None, ge=8,
        description="positions the prompt may use; default: the model's max_position_embeddings (or n_positions)",
    )
    answer_tokens: int = Field(default=24, ge=0, description="positions kept free for the answer")

    @field_validator("demonstration_template")
    @classmethod
    def _demonstration_fields(cls, value: str) -> str:
        return check_template(value, allowed={"fact", "prompt", "answer"}, required={"prompt", "answer"})

@dataclass(frozen=True)
class Demonstration:
    """One demonstration: a new fact and a prompt answered as that fact demands."""

    kind: Literal["copy", "update", "retain"]
    fact: str
    prompt: str
    answer: str
    request_id: str

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "fact": self.fact, "prompt": self.prompt, "answer": self.answer,
                "request_id": self.request_id}


@dataclass
class IkePrompt:
    """How ``ike`` asks one query: the chosen fact, the demonstrations (least similar first)
    and the final text, before the model's prompt format."""

    query: str
    text: str
    fact: str | None = None
    fact_request_id: str | None = None
    demonstrations: list[Demonstration] = field(default_factory=list)
    dropped: int = 0  # demonstrations left out so the prompt fits the context


def demonstrations_of(request: EditRequest, fact: str) -> list[Demonstration]:
    """The copy, update and retain demonstrations an edit fact gives."""
    rid = request.request_id
    return [
        Demonstration("copy", fact, request.prompt, request.target_new, rid),
        *(Demonstration("update", fact, p, request.target_new, rid) for p in request.rephrase_prompts),
        *(Demonstration("retain", fact, probe.prompt, probe.answer, rid) for probe in request.locality),
    ]


@dataclass
class _Index:
    """The store's facts and the demonstration pool, ready for scoring."""

    facts: list[dict[str, Any]] = field(default_factory=list)
    pool: list[Demonstration] = field(default_factory=list)
    pool_texts: list[str] = field(default_factory=list)


class Ike:
    """The ``ike`` editor (see the module docstring)."""

    def __init__(self, config: IkeConfig) -> None:
        self.config = config
        self.retriever = choose_retriever(config.retriever, config.embedding_model, editor="ike")
        self._scorer: SentenceEmbedder | TfidfRetriever | None = None
        self._indexes: weakref.WeakKeyDictionary[MemoryStore, StoreCache] = weakref.WeakKeyDictionary()
        self._stores: weakref.WeakValueDictionary[int, MemoryStore] = weakref.WeakValueDictionary()
        self._pool: dict[str, Any] | None = None  # demonstrations_from, read once per editor

    @property
    def scorer(self) -> SentenceEmbedder | TfidfRetriever:
        if self._scorer is None:
            self._scorer = make_scorer(self.retriever, self.config.embedding_model, self.config.device)
        return self._scorer

    def describe(self) -> dict[str, Any]:
        return {"retriever": self.retriever, "k": self.config.k,
                "pool": self.config.demonstrations_from or "the requests edited so far"}

    # ---- the MemoryEditor protocol -------------------------------------------------------------
    def attach(self, model: Any, store: MemoryStore) -> None:
        """Install the prompt rewriter that puts demonstrations and the nearest fact in front."""
        self._stores[id(model)] = store

        def rewrite(prompts: list[str]) -> list[str]:
            if not any(entry.data["kind"] == "fact" for _, entry in store.items()):
                return list(prompts)  # nothing edited (or everything undone): the model is untouched
            return [asked.text for asked in self._build(model, store, prompts)]

        model.add_prompt_rewriter(f"ike:{store.name}", rewrite)

    def edit(self, model: Any, store: MemoryStore, requests: Sequence[EditRequest]) -> None:
        """Store one fact entry per request (with its own demonstrations), and on the first
        edit the demonstration pool of ``demonstrations_from``. A newer edit of the same
        subject and relation replaces the older one."""
        if self.config.demonstrations_from is not None and not any(e.data["kind"] == "pool" for _, e in store.items()):
            if self._pool is None:
                self._pool = self._load_pool()
            store.add(self._pool)
        for request in requests:
            forget_same_fact(store, request, is_fact=lambda data: data["kind"] == "fact")
            entry = fact_entry(request, self.config.fact_template)
            store.add({
                "kind": "fact", **entry,
                "demonstrations": [d.as_dict() for d in demonstrations_of(request, entry["fact"])],
            })

    def _load_pool(self) -> dict[str, Any]:
        from easyetcon.dataset_files import load_requests_from

        source = self.config.demonstrations_from
        try:
            requests = load_requests_from(
                source, limit=self.config.demonstrations_limit, options=self.config.demonstrations_options or None
            )
        except Exception as error:  # noqa: BLE001 - any failure to read the pool is the option's fault
            raise ConfigError(f"ike: demonstrations_from {source!r} could not be loaded: {error}") from error
        demonstrations = []
        for request in requests:
            fact = fact_sentence(self.config.fact_template, request)
            demonstrations += [d.as_dict() for d in demonstrations_of(request, fact)]
        if not demonstrations:
            raise ConfigError(f"ike: demonstrations_from {source!r} holds no requests")
        digest = hashlib.sha256(json.dumps(demonstrations, sort_keys=True).encode()).hexdigest()
        return {"kind": "pool", "source": source, "sha256": digest, "demonstrations": demonstrations}

    # ---- queries ---------------------------------------------------------------------------------
    def explain(self, memory: Any, queries: Sequence[str] | str) -> list[IkePrompt]:
        """How each query is asked: the fact, demonstrations and text (``memory``: the model
        this editor is attached to). Raises :class:`~easyetcon_memory.EmptyMemoryError` when
        nothing is edited."""
        store = self._stores.get(id(memory))
        if store is None:
            raise ConfigError("this ike memory is not attached to that model; apply a chain with it first")
        require_entries(store, "ike memory")
        return self._build(memory, store, [queries] if isinstance(queries, str) else list(queries))

    def _index(self, store: MemoryStore) -> _Index:
        cache = self._indexes.setdefault(store, StoreCache())
        return cache.get(store, self._build_index)

    def _build_index(self, items: list[tuple[str, Any]]) -> _Index:
        index = _Index()
        external: list[Demonstration] = []
        own: list[Demonstration] = []
        for _, entry in items:
            data = entry.data
            demonstrations = [Demonstration(**d) for d in data["demonstrations"]]
            if data["kind"] == "pool":
                external += demonstrations
            else:
                index.facts.append(data)
                own += demonstrations
        index.pool = external if self.config.demonstrations_from is not None else own
        index.pool_texts = [self._demonstration_text(d) for d in index.pool]
        self.scorer.fit([*index.pool_texts, *(f["prompt"] for f in index.facts)])
        return index

    def _demonstration_text(self, demonstration: Demonstration) -> str:
        return self.config.demonstration_template.format(
            fact=demonstration.fact, prompt=demonstration.prompt, answer=demonstration.answer
        )

    def _nearest_facts(self, index: _Index, queries: Sequence[str]) -> list[dict[str, Any]]:
        similarity = self.scorer.encode(list(queries)) @ self.scorer.encode([f["prompt"] for f in index.facts]).T
        chosen = []
        for q, query in enumerate(queries):
            folded = query.casefold()
            named = [e for e, f in enumerate(index.facts) if mentions_subject(folded, f["subject"].casefold())]
            candidates = named if self.config.prefer_subject and named else range(len(index.facts))
            # ties go to the newer edit
            best = max(candidates, key=lambda e: (float(similarity[q, e]), e))
            chosen.append(index.facts[best])
        return chosen

    def _build(self, model: Any, store: MemoryStore, queries: Sequence[str]) -> list[IkePrompt]:
        index = self._index(store)
        facts = self._nearest_facts(index, queries)
        asked = [self.config.query_template.format(fact=f["fact"], prompt=q) for f, q in zip(facts, queries)]
        if self.config.k and index.pool:
            similarity = self.scorer.encode(asked) @ self.scorer.encode(index.pool_texts).T
        budget = self._budget(model)
        prompts = []
        for q, (query, fact, tail) in enumerate(zip(queries, facts, asked)):
            picked: list[int] = []
            if self.config.k and index.pool:
                allowed = torch.tensor([
                    d.request_id != fact["request_id"] and d.prompt.strip() != query.strip() for d in index.pool
                ])
                scores = similarity[q].masked_fill(~allowed, float("-inf"))
                count = min(self.config.k, int(allowed.sum()))
                picked = scores.topk(count).indices.tolist()[::-1]  # least similar first: the best sits next to the query
            demonstrations = [index.pool[i] for i in picked]
            texts = [index.pool_texts[i] for i in picked]
            dropped = 0
            while texts and budget is not None and _length(model, "".join(texts) + tail) > budget:
                texts, demonstrations, dropped = texts[1:], demonstrations[1:], dropped + 1
            prompts.append(IkePrompt(query, "".join(texts) + tail, fact["fact"], fact["request_id"], demonstrations, dropped))
        return prompts

    def _budget(self, model: Any) -> int | None:
        limit = self.config.max_context_tokens
        if limit is None:
            config = getattr(getattr(model, "torch_model", None), "config", None)
            limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        return None if limit is None else max(limit - self.config.answer_tokens, 1)


def _length(model: Any, text: str) -> int:
    """Tokens the model reads for ``text``, in its prompt format."""
    return len(model.tokenizer(model.format_prompt(text))["input_ids"])
