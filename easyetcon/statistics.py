"""Second-moment statistics of MLP keys, streamed from any text source and cached on disk.

ROME, MEMIT and AlphaEdit need ``C = E[k kᵀ]``, the uncentred second moment of a layer's keys
(the inputs of its MLP output projection) over ordinary text: ROME and MEMIT to spread an
update along directions the layer rarely sees, AlphaEdit to find the directions it never sees.

* Text comes from a ``datasets`` dataset (local files or a hub id), samples drawn from the model
  itself, a source a plugin registers (:func:`~easyetcon.hookspecs.easyetcon_register_text_sources`;
  the world plugin's ``world`` is the fact world's corpus) or any iterable of strings
  (:meth:`LayerStatistics.use_texts`).
* Texts are batched by token length, so little padding runs through the model; keys are
  multiplied in fp32 in blocks of up to ``KEY_BUFFER_ROWS`` and the products summed in fp64,
  with a progress bar in tokens/s; the forward pass stops at the deepest layer needed. One pass
  serves every layer missing at that moment, including layers declared ahead with
  :meth:`LayerStatistics.reserve`.
* ``auto`` is the first registered text source that has texts for the model (the world's corpus
  for a fact-world model), else model samples.
  Each time statistics are computed or read from the cache, one INFO line (logger
  ``easyetcon.intrinsic.statistics``) names the layers, the source, why it was chosen, and the
  texts and tokens behind them.
* Results are cached under ``$EASYETCON_CACHE/stats`` (default ``~/.cache/easyetcon/stats``),
  keyed by the weights hash of the model they were computed from, the module, the source, the
  corpus and the sample count. Editors compute them in ``prepare``, on the unedited model, so a resumed run
  (a fresh unedited model, then the journal replayed) finds the same file instead of recomputing
  the statistics on the edited model. An unreadable or mismatching cache file is reported and
  recomputed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from easyetcon.errors import ConfigError
from easyetcon.activations import StopForward
from easyetcon.devices import execution_device
from easyetcon.text import pad_id_of, pad_rows

CACHE_ENV = "EASYETCON_CACHE"
CACHE_FORMAT = 2  # 2: the key names the source's kind, the file the number of texts
#: The sources the core reads itself; plugins add named ones (``world``).
CORE_SOURCES = ("auto", "model-samples", "dataset:<path or hub id>")

#: A child of the ``easyetcon`` logger, whose INFO lines the command line shows.
logger = logging.getLogger("easyetcon.intrinsic.statistics")


class StatisticsConfig(BaseModel):
    """Where the key statistics come from and how many texts they use."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(
        default="auto",
        description=(
            "'model-samples' (text sampled from the model, offline), 'dataset:<path or hub id>' (a datasets "
            "dataset: a saved folder, a .json/.jsonl/.txt/.csv/.parquet file, or a hub id when online), a "
            "text source a plugin registers ('world': the fact world's corpus of a world model), or 'auto' "
            "(the first registered source with texts for the model, else model-samples)"
        ),
    )
    samples: int = Field(default=1000, ge=1, description="number of texts")
    max_length: int = Field(default=128, ge=4, description="tokens per text (longer texts are cut)")
    batch_size: int = Field(default=16, ge=1, description="texts per forward pass")
    text_column: str = Field(default="text", description="column of a dataset holding the text")
    split: str = Field(default="train", description="split of a dataset")
    cache: bool = Field(default=True, description="read and write the on-disk cache")
    progress: bool = Field(default=True, description="show a progress bar while collecting")

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: str) -> str:
        if value in ("auto", "model-samples"):
            return value
        if value.startswith("dataset:") and value[len("dataset:") :].strip():
            return value
        registered = registered_text_sources()
        if value in registered:
            return value
        raise ValueError(f"unknown statistics source {value!r}; use one of: {', '.join([*CORE_SOURCES, *registered])}")


def registered_text_sources() -> dict[str, str]:
    """The text sources the loaded plugins register, in registration order: name -> summary."""
    from easyetcon.plugins import get_host

    return {part.name: part.summary for part in get_host().registry.parts("text-source")}


@dataclass
class TextSource:
    """Texts a plugin has for a model: what its registered ``find(model)`` returns
    (:func:`~easyetcon.hookspecs.easyetcon_register_text_sources`).

    ``found`` is a sentence saying why these texts belong to the model (shown in the statistics
    line); ``corpus`` identifies the texts in the statistics cache (other texts, another string);
    ``open_texts()`` returns them, called only when statistics must be computed.
    """

    found: str
    corpus: str
    open_texts: Callable[[], Iterable[str]]


class FewerTextsWarning(UserWarning):
    """The statistics source ran out before ``statistics.samples`` texts were read."""


@dataclass
class SecondMoment:
    """``mom2 = E[k kᵀ]`` (fp32, ``(d_in, d_in)``) over ``tokens`` key vectors of ``texts`` texts."""

    mom2: torch.Tensor
    tokens: int
    texts: int | None = None


# --------------------------------------------------------------------------------------------
# Text sources
# --------------------------------------------------------------------------------------------


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@torch.no_grad()
def model_sample_texts(model: Any, count: int, length: int, *, batch_size: int = 16, seed: int = 0) -> Iterator[str]:
    """``count`` texts sampled from the model (temperature 1), deterministic in ``seed``."""
    torch_model, tokenizer = model.torch_model, model.tokenizer
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    produced = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        while produced < count:
            rows = min(batch_size, count - produced)
            prompt = torch.full((rows, 1), start, dtype=torch.long, device=model.device)
            output = torch_model.generate(
                input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=True, top_k=0,
                max_new_tokens=length, min_new_tokens=length, pad_token_id=pad_id_of(tokenizer),
            )
            for text in tokenizer.batch_decode(output[:, 1:], skip_special_tokens=True):
                produced += 1
                yield text


def dataset_texts(spec: str, *, split: str, column: str) -> tuple[Iterator[str], str]:
    """Texts of a ``datasets`` dataset: a ``save_to_disk`` folder, a local data file, or a hub id."""
    import datasets

    builders = {".json": "json", ".jsonl": "json", ".txt": "text", ".csv": "csv", ".parquet": "parquet"}
    path = Path(spec).expanduser()
    try:
        if path.is_dir() and (path / "dataset_info.json").is_file():
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                loaded = loaded[split]
            identity = f"{path.resolve()}:{split}:{loaded._fingerprint}"
        elif path.is_file() and path.suffix in builders:
            loaded = datasets.load_dataset(builders[path.suffix], data_files=str(path), split="train")
            identity = f"{path.resolve()}:{_file_digest(path)[:16]}"
        elif path.exists():
            raise ConfigError(
                f"statistics source {spec!r} is neither a saved dataset folder nor a "
                f"{'/'.join(builders)} file"
            )
        else:
            loaded = datasets.load_dataset(spec, split=split, streaming=True)
            identity = f"hub:{spec}:{split}"
    except ConfigError:
        raise
    except Exception as error:  # datasets raises many types (offline, missing split, bad file)
        raise ConfigError(f"cannot read statistics source dataset {spec!r} (split {split!r}): {error}") from None
    columns = getattr(loaded, "column_names", None)
    if columns is not None and column not in columns:
        raise ConfigError(
            f"statistics source dataset {spec!r} has no column {column!r}; its columns are {columns}. "
            f"Set statistics.text_column."
        )
    return (row[column] for row in loaded), f"dataset:{identity}:{column}"


@dataclass
class StatisticsSource:
    """The texts one collection reads: which source, why it was chosen, and their cache identity."""

    kind: str  # "model-samples", "dataset", "texts" (LayerStatistics.use_texts) or a text source's name ("world")
    name: str  # as a user would write it: "world", "model-samples", "dataset:<spec>", "texts"
    reason: str  # why this source
    corpus: str | None  # the texts' identity in the cache key; None: not cached
    open_texts: Callable[[], Iterable[str]]  # called once, only when something must be computed


def _plugin_source(model: Any, name: str) -> tuple[Any, TextSource | None]:
    """The registered text source ``name`` and what it has for ``model`` (``None``: nothing)."""
    from easyetcon.plugins import get_host

    part = get_host().registry.part("text-source", name)
    found = part.obj(model)
    if found is not None and not isinstance(found, TextSource):
        raise ConfigError(
            f"text source {name!r} ({part.distribution}) returned {type(found).__name__}, not an "
            f"easyetcon.statistics.TextSource"
        )
    return part, found


def choose_source(model: Any, config: StatisticsConfig) -> StatisticsSource:
    """The source ``config.source`` names for ``model``. ``auto`` asks each registered text source
    in turn (:func:`~easyetcon.hookspecs.easyetcon_register_text_sources`) and takes the first
    with texts for the model, else ``model-samples``; the reason says which and why."""
    source = config.source
    if source == "auto":
        registered = registered_text_sources()
        for name in registered:
            _, found = _plugin_source(model, name)
            if found is not None:
                return StatisticsSource(name, name, f"auto: {found.found}", found.corpus, found.open_texts)
        asked = (
            "no registered text source has texts for the model ("
            + "; ".join(f"{name}: {summary}" for name, summary in registered.items()) + ")"
            if registered else "no plugin registers a text source"
        )
        source, reason = "model-samples", f"auto: {asked}"
    else:
        reason = "set by statistics.source"
    if source == "model-samples":
        return StatisticsSource(
            "model-samples", "model-samples", reason, f"model-samples:seed=0:length={config.max_length}",
            lambda: model_sample_texts(model, config.samples, config.max_length, batch_size=config.batch_size),
        )
    if source.startswith("dataset:"):
        spec = source[len("dataset:") :].strip()
        texts, identity = dataset_texts(spec, split=config.split, column=config.text_column)
        return StatisticsSource("dataset", f"dataset:{spec}", reason, identity, lambda: texts)
    part, found = _plugin_source(model, source)
    if found is None:
        raise ConfigError(
            f"statistics source {source!r} ({part.summary}) has no texts for model {model.source!r}; use "
            f"source 'model-samples' or 'dataset:<path>'"
        )
    return StatisticsSource(source, source, f"{reason}: {found.found}", found.corpus, found.open_texts)


def resolve_texts(model: Any, config: StatisticsConfig) -> tuple[Iterator[str], str]:
    """The texts named by ``config.source`` and a string identifying them in the cache key."""
    chosen = choose_source(model, config)
    return iter(chosen.open_texts()), chosen.corpus


# --------------------------------------------------------------------------------------------
# Collection
# --------------------------------------------------------------------------------------------


#: Texts read, tokenised and sorted by length together, in units of ``batch_size``.
SORT_WINDOW_BATCHES = 16


def _windows(texts: Iterable[str], size: int, limit: int) -> Iterator[list[str]]:
    """The first ``limit`` non-empty strings of ``texts``, in lists of at most ``size``."""
    window: list[str] = []
    taken = 0
    for text in texts:
        if taken >= limit:
            break
        if not isinstance(text, str) or not text.strip():
            continue
        window.append(text)
        taken += 1
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window


def plan_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices into ``lengths`` grouped into batches of at most ``batch_size`` texts of similar length.

    Longest first, so a batch too large for the device fails at once; equal lengths keep their
    order. Texts of no tokens are left out (they add nothing to the statistics).
    """
    order = sorted((i for i, length in enumerate(lengths) if length > 0), key=lambda i: -lengths[i])
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """The share of padding among the positions the model runs when ``batches`` are padded."""
    positions = sum(len(batch) * max(lengths[i] for i in batch) for batch in batches if batch)
    return 1.0 - sum(lengths[i] for batch in batches for i in batch) / positions if positions else 0.0


#: Keys at least this wide get their Gram matrix by blocks (narrower ones gain nothing measurable).
BLOCKED_GRAM_WIDTH = 1024


def gram_pieces(rows: torch.Tensor, blocks: int | None = None) -> Iterator[tuple[slice, slice, torch.Tensor]]:
    """``rowsᵀ rows`` as disjoint ``(row slice, column slice, block)`` pieces, computing only the
    upper block triangle when ``blocks`` > 1 (the lower one is its transpose).

    With ``b`` column blocks this takes ``(b + 1) / 2b`` of the multiplications (0.56 for 8), which
    matters when the keys are wide: for 1536-dimensional keys the product is about a quarter of the
    cost of collecting statistics. ``None`` chooses: 8 blocks from ``BLOCKED_GRAM_WIDTH`` columns on,
    one product below. Each piece is at most a ``d / b``-row band, so a caller that adds the
    pieces into a sum as they come never holds the whole ``d × d`` product.
    """
    width = rows.shape[1]
    if blocks is None:
        blocks = 8 if width >= BLOCKED_GRAM_WIDTH else 1
    if blocks <= 1 or width < 2 * blocks:
        yield slice(None), slice(None), rows.T @ rows
        return
    edges = [round(i * width / blocks) for i in range(blocks + 1)]
    for start, end in itertools.pairwise(edges):
        band = rows[:, start:end].T @ rows[:, start:]
        yield slice(start, end), slice(start, end), band[:, : end - start].T
        yield slice(start, end), slice(end, None), band[:, end - start :]
        yield slice(end, None), slice(start, end), band[:, end - start :].T


def symmetric_gram(rows: torch.Tensor, blocks: int | None = None) -> torch.Tensor:
    """``rowsᵀ rows`` assembled from :func:`gram_pieces`."""
    gram = rows.new_empty(rows.shape[1], rows.shape[1])
    for row_slice, column_slice, piece in gram_pieces(rows, blocks):
        gram[row_slice, column_slice] = piece
    return gram


#: Keys gathered (per layer, fp32) before their Gram matrix is added to the fp64 sum. Casting a
#: d×d product to fp64 and adding it costs about half the product of ~1000 keys on a CPU.
KEY_BUFFER_ROWS = 4096
#: Rows of a Gram matrix added to the fp64 sum at a time (bounds the cast's temporary).
SUM_BLOCK_ROWS = 1024


class KeyMomentSum:
    """``Σ k kᵀ`` of one layer's keys: keys are gathered into an fp32 buffer of ``rows`` rows, and
    each full buffer's Gram matrix is added to an fp64 sum."""

    def __init__(self, rows: int = KEY_BUFFER_ROWS) -> None:
        self.rows = rows
        self.total: torch.Tensor | None = None
        self._buffer: torch.Tensor | None = None
        self._filled = 0

    def add(self, keys: torch.Tensor) -> None:
        """Add the ``(n, d)`` ``keys`` (any float dtype)."""
        if self._filled + len(keys) > self.rows:
            self.flush()
        if len(keys) >= self.rows:
            self._add_gram(keys.float())  # .float() copies only a half-precision model's keys
            return
        if self._buffer is None:
            self._buffer = keys.new_empty((self.rows, keys.shape[1]), dtype=torch.float32)
        self._buffer[self._filled : self._filled + len(keys)].copy_(keys)
        self._filled += len(keys)

    def finish(self) -> torch.Tensor:
        """The fp64 sum, with the buffer folded in and freed."""
        self.flush()
        self._buffer = None
        total, self.total = self.total, None
        return total

    def flush(self) -> None:
        """Fold the buffered keys into :attr:`total`."""
        if self._filled:
            self._add_gram(self._buffer[: self._filled])
            self._filled = 0

    def _add_gram(self, keys: torch.Tensor) -> None:
        width = keys.shape[1]
        if self.total is None:
            self.total = torch.zeros((width, width), dtype=torch.float64, device=keys.device)
        # piece by piece, and each by row blocks: no d × d fp32 product is held, and adding fp32
        # to fp64 casts through a temporary as large as its operand
        for row_slice, column_slice, piece in gram_pieces(keys):
            target = self.total[row_slice, column_slice]
            for start in range(0, len(piece), SUM_BLOCK_ROWS):
                target[start : start + SUM_BLOCK_ROWS].add_(piece[start : start + SUM_BLOCK_ROWS])


@torch.no_grad()
def collect_second_moments(
    model: Any,
    layers: Iterable[int],
    texts: Iterable[str],
    *,
    samples: int,
    max_length: int = 128,
    batch_size: int = 16,
    progress: bool = True,
) -> dict[int, SecondMoment]:
    """Stream the first ``samples`` non-empty texts through the model once and return ``E[k kᵀ]``
    of each layer's keys.

    Texts are read ``SORT_WINDOW_BATCHES × batch_size`` at a time and batched by token length
    (:func:`plan_batches`), so little padding runs through the model. Batches are padded on the
    right, so each key is the one the text gives alone; padding is excluded from the statistics,
    and the forward pass ends at the deepest requested layer.
    """
    from tqdm.auto import tqdm

    layers = sorted(set(layers))
    torch_model, tokenizer, adapter = model.torch_model, model.tokenizer, model.adapter
    modules = {layer: adapter.module(torch_model, "mlp_out", layer) for layer in layers}
    devices = {layer: execution_device(module) for layer, module in modules.items()}
    sums = {layer: KeyMomentSum() for layer in layers}
    # "rows": flat indices of the batch's real tokens, or None when it has no padding. Absent
    # outside our own forward passes (e.g. a lazy text source generating).
    batch_state: dict[str, torch.Tensor | None] = {}
    deepest = layers[-1]

    def make_hook(layer: int):
        def hook(_module: Any, args: tuple) -> None:
            if "rows" not in batch_state:
                return
            # on the layer's device (a pre-hook sees its input before accelerate moves it there)
            hidden = args[0].to(devices[layer])
            keys = hidden.reshape(-1, hidden.shape[-1])
            if batch_state["rows"] is not None:
                keys = keys.index_select(0, batch_state["rows"].to(keys.device))
            sums[layer].add(keys)
            if layer == deepest:
                raise StopForward

        return hook

    handles = [modules[layer].register_forward_pre_hook(make_hook(layer)) for layer in layers]
    was_training = torch_model.training
    torch_model.eval()
    device, pad_id = model.device, pad_id_of(tokenizer)
    tokens = texts_seen = 0
    started = time.perf_counter()
    bar = tqdm(total=samples, desc=f"key statistics, layers {layers}", unit="text", disable=not progress)
    try:
        for window in _windows(texts, batch_size * SORT_WINDOW_BATCHES, samples):
            texts_seen += len(window)
            encoded = tokenizer(window, truncation=True, max_length=max_length)["input_ids"]
            lengths = [len(row) for row in encoded]
            for batch in plan_batches(lengths, batch_size):
                # right padding whatever the tokenizer's side: each token keeps the position it has alone
                input_ids, mask = pad_rows([encoded[i] for i in batch], pad_id)
                mask = mask.to(device)
                count = sum(lengths[i] for i in batch)
                batch_state["rows"] = None if count == mask.numel() else mask.reshape(-1).nonzero().squeeze(1)
                try:
                    torch_model(input_ids=input_ids.to(device), attention_mask=mask, use_cache=False)
                except StopForward:
                    pass
                finally:
                    batch_state.clear()
                tokens += count
                bar.set_postfix_str(f"{tokens / max(time.perf_counter() - started, 1e-9):,.0f} tokens/s", refresh=False)
                bar.update(len(batch))
            bar.update(len(window) - sum(1 for length in lengths if length > 0))  # texts of no tokens
    finally:
        for handle in handles:
            handle.remove()
        bar.close()
        torch_model.train(was_training)
    if tokens == 0:
        raise ConfigError("the statistics source yielded no text; check statistics.source and text_column")
    if texts_seen < samples:
        warnings.warn(
            f"key statistics of layers {layers}: {samples} texts were asked for (statistics.samples) but the "
            f"source had only {texts_seen} ({tokens:,} tokens); C is estimated from those",
            FewerTextsWarning, stacklevel=2,
        )
    moments = {}
    for layer in layers:
        total = sums.pop(layer).finish()
        # in place, then one fp32 copy: a second fp64 d × d would be the peak of the whole collection
        moments[layer] = SecondMoment(total.div_(tokens).float().cpu(), tokens, texts_seen)
        del total
    return moments


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


def cache_directory() -> Path:
    """``$EASYETCON_CACHE/stats`` if set, else ``~/.cache/easyetcon/stats``."""
    base = os.environ.get(CACHE_ENV)
    return (Path(base) if base else Path.home() / ".cache" / "easyetcon") / "stats"


def cache_key(
    weights_hash: str, module_name: str, corpus: str, samples: int, max_length: int, *, source: str
) -> dict[str, Any]:
    """The identity of one layer's statistics. ``weights_hash`` is the :meth:`EditableModel.state_hash`
    of the model the keys are read from: in an editor's ``prepare``, the unedited model. ``source``
    is the kind of source (:attr:`StatisticsSource.kind`), so statistics of one source are never
    read back for another, whatever their corpus identities are."""
    return {
        "format": CACHE_FORMAT, "weights": weights_hash, "module": module_name, "source": source,
        "corpus": corpus, "samples": samples, "max_length": max_length,
    }


def cache_path(key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return cache_directory() / f"{digest}.pt"


def read_cached(key: dict[str, Any]) -> SecondMoment | None:
    """The cached statistics for ``key``; ``None`` on a miss. A damaged file warns and counts as a miss."""
    path = cache_path(key)
    if not path.is_file():
        return None
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
        if stored.get("key") != key:
            raise ValueError("its key does not match (hash collision or edited file)")
        mom2 = stored["mom2"]
        if not isinstance(mom2, torch.Tensor) or mom2.dim() != 2 or mom2.shape[0] != mom2.shape[1]:
            raise ValueError("it holds no square matrix")
        texts = stored.get("texts")
        return SecondMoment(mom2, int(stored["tokens"]), None if texts is None else int(texts))
    except Exception as error:  # torch.load raises many types on a damaged file
        warnings.warn(f"statistics cache file {str(path)!r} is unusable ({error}); recomputing it", stacklevel=2)
        return None


def write_cached(key: dict[str, Any], moment: SecondMoment) -> Path:
    path = cache_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    torch.save({"key": key, "mom2": moment.mom2, "tokens": moment.tokens, "texts": moment.texts}, partial)
    os.replace(partial, path)  # atomic: readers never see half a file
    return path


#: Per model, ``[open blocks, hash or None]`` of :func:`weights_hashed_once`.
_SCOPED_HASHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@contextmanager
def weights_hashed_once(model: Any) -> Iterator[None]:
    """Within the block, :func:`weights_hash` hashes ``model`` at most once (blocks may nest).

    For an editor's ``prepare``, which reads the weights but never changes them: hashing reads
    every parameter (14 GB for a 7B model in bf16), so several statistics lookups must share one
    hash. Outside a block every lookup hashes afresh, because the weights may have changed.
    """
    entry = _SCOPED_HASHES.setdefault(model.torch_model, [0, None])
    entry[0] += 1
    try:
        yield
    finally:
        entry[0] -= 1
        if entry[0] == 0:
            del _SCOPED_HASHES[model.torch_model]


def weights_hash(model: Any) -> str:
    """``model.state_hash()``, computed once per :func:`weights_hashed_once` block."""
    entry = _SCOPED_HASHES.get(model.torch_model)
    if entry is None:
        return model.state_hash()
    if entry[1] is None:
        entry[1] = model.state_hash()
    return entry[1]


class LayerStatistics:
    """Key statistics an editor needs, computed once per model and layer.

    The statistics describe the model as it was when they were first needed, which is the
    unedited model when the editor's ``prepare`` asks for them: later edits by the same editor
    do not trigger a recomputation (as in the ROME/MEMIT papers).
    """

    def __init__(self, config: StatisticsConfig) -> None:
        self.config = config
        self._memo: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._wanted: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # torch model -> set of layers
        self._texts: Iterable[str] | None = None
        self._corpus_id: str | None = None
        self.last_sources: dict[int, str] = {}  # layer -> "memory" | "cache" | "computed"
        #: changes whenever the statistics' source does, so anything derived from them is remade
        self.generation = 0

    def use_texts(self, texts: Iterable[str], corpus_id: str | None = None) -> None:
        """Collect statistics from ``texts`` (any iterable of strings, e.g. a ``datasets`` column)
        instead of ``config.source``. Without ``corpus_id`` nothing is cached on disk."""
        self._texts = texts
        self._corpus_id = corpus_id
        self._memo = weakref.WeakKeyDictionary()
        self.generation += 1

    @staticmethod
    def _layer_indices(model: Any, layers: Iterable[int]) -> list[int]:
        return sorted({layer % model.adapter.num_layers(model.torch_model) for layer in layers})

    def reserve(self, model: Any, layers: Iterable[int]) -> None:
        """Declare layers whose statistics will be asked for later.

        The next :meth:`get` that has to read or collect anything also covers every reserved
        layer not yet known, so the texts pass through the model once for all of them rather
        than once per request. Reserve before the first ``get`` of ``prepare``: the statistics
        are then all taken from the unedited model. Each layer costs a ``d × d`` fp64 sum on
        the model's device while collecting.
        """
        self._wanted.setdefault(model.torch_model, set()).update(self._layer_indices(model, layers))

    def get(self, model: Any, layers: Iterable[int]) -> dict[int, SecondMoment]:
        """``{layer: SecondMoment}`` of ``layers``, from memory, the disk cache, or one collection
        pass that also covers the reserved layers still missing."""
        layers = self._layer_indices(model, layers)
        memo = self._memo.setdefault(model.torch_model, {})
        missing = [layer for layer in layers if layer not in memo]
        for layer in layers:
            if layer in memo:
                self.last_sources[layer] = "memory"
        if missing:
            reserved = self._wanted.get(model.torch_model, set())
            memo.update(self._load_or_collect(model, sorted(set(missing) | (reserved - memo.keys()))))
        return {layer: memo[layer] for layer in layers}

    def take(self, model: Any, layers: Iterable[int]) -> dict[int, SecondMoment]:
        """:meth:`get`, and forget them: for an editor that keeps only what it derives from them
        (a factor, a projector), so the ``d × d`` statistics are not held twice. Asked again,
        they are read from the disk cache or collected from the model as it is then."""
        found = self.get(model, layers)
        memo = self._memo.get(model.torch_model, {})
        wanted = self._wanted.get(model.torch_model, set())
        for layer in found:
            memo.pop(layer, None)
            wanted.discard(layer)
        return found

    def source(self, model: Any) -> StatisticsSource:
        """Where the statistics of ``model`` come from now: the texts given to :meth:`use_texts`,
        else ``config.source`` (:func:`choose_source`)."""
        if self._texts is None:
            return choose_source(model, self.config)
        if self._corpus_id is None:
            reason, corpus = "given to LayerStatistics.use_texts, without a corpus_id: not cached", None
        else:
            reason, corpus = f"given to LayerStatistics.use_texts as corpus {self._corpus_id!r}", self._corpus_id
        texts = self._texts
        return StatisticsSource("texts", "texts", reason, corpus, lambda: texts)

    def _load_or_collect(self, model: Any, layers: list[int]) -> dict[int, SecondMoment]:
        config = self.config
        source = self.source(model)
        use_cache = config.cache and source.corpus is not None
        found: dict[int, SecondMoment] = {}
        keys: dict[int, dict[str, Any]] = {}
        if use_cache:
            weights = weights_hash(model)
            for layer in layers:
                keys[layer] = cache_key(
                    weights, model.adapter.module_name("mlp_out", layer), source.corpus, config.samples,
                    config.max_length, source=source.kind,
                )
                cached = read_cached(keys[layer])
                if cached is not None:
                    found[layer] = cached
                    self.last_sources[layer] = "cache"
        todo = [layer for layer in layers if layer not in found]
        if todo:
            collected = collect_second_moments(
                model, todo, source.open_texts(), samples=config.samples, max_length=config.max_length,
                batch_size=config.batch_size, progress=config.progress,
            )
            for layer, moment in collected.items():
                found[layer] = moment
                self.last_sources[layer] = "computed"
                if use_cache:
                    write_cached(keys[layer], moment)
        logger.info(describe_statistics(source, found, computed=todo))
        return found


def describe_statistics(source: StatisticsSource, moments: dict[int, SecondMoment], computed: Sequence[int]) -> str:
    """The line a user sees when statistics are computed or read from the cache: the layers, the
    source and why it was chosen, and how many texts and tokens they are estimated from."""
    layers = sorted(moments)
    cached = [layer for layer in layers if layer not in computed]
    if not cached:
        how = "computed"
    elif not computed:
        how = "read from the cache"
    else:
        how = f"layers {cached} read from the cache, layers {sorted(computed)} computed"
    counts = sorted({(moment.texts, moment.tokens) for moment in moments.values()}, key=str)
    amount = "; ".join(
        f"{texts:,} texts ({tokens:,} tokens)" if texts is not None else f"{tokens:,} tokens" for texts, tokens in counts
    )
    return f"key statistics of layers {layers}: source {source.name} ({source.reason}); {how}, from {amount}"
