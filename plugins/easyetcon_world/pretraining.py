"""Pretrain a tiny ``LlamaForCausalLM`` on a world's corpus, and cache the result on disk.

A cache entry is a plain ``save_pretrained`` directory (model + tokenizer, loadable by
``AutoModelForCausalLM`` / ``AutoTokenizer`` with no special code) plus ``world.json``,
``train_config.json`` and ``manifest.json``. The directory name is a hash of the world and the
training config, so a second call loads in seconds. The manifest holds the sha256 of every file:
a truncated or missing file is detected and the entry is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from easyetcon_world.corpus import CorpusConfig, context_documents, epoch_documents
from easyetcon_world.errors import WorldCacheError, WorldConfigError
from easyetcon_world.identity import record_world
from easyetcon_world.tokenizer import train_tokenizer
from easyetcon_world.world import World

if TYPE_CHECKING:
    from easyetcon_world.from_dataset import DatasetWorld

CACHE_ENV = "EASYETCON_CACHE"
CACHE_FORMAT = "easyetcon-world-cache/1"
MANIFEST = "manifest.json"
REQUIRED_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "world.json",
    "train_config.json",
)


class TrainConfig(BaseModel):
    """The tiny model's shape and how it is trained. Part of the cache key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hidden_size: int = Field(default=128, ge=8)
    layers: int = Field(default=4, ge=1)
    heads: int = Field(default=4, ge=1)
    intermediate_size: int = Field(default=384, ge=8)
    vocab_size: int = Field(default=2048, ge=300, description="BPE vocabulary incl. 256 bytes")
    block_size: int = Field(default=256, ge=32, description="tokens per packed training sequence")
    batch_size: int = Field(default=8, ge=1)
    epochs: int = Field(default=24, ge=1)
    max_steps: int | None = Field(default=None, ge=1, description="stop early (smoke tests)")
    lr: float = Field(default=2e-3, gt=0)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    warmup_steps: int = Field(default=100, ge=0)
    weight_decay: float = Field(default=0.01, ge=0)
    seed: int = 0
    corpus: CorpusConfig = CorpusConfig()


def default_train_config(preset: str) -> TrainConfig:
    """The training recipe of a world preset (see NOTES.md for how it was chosen)."""
    recipes = {
        "tiny": TrainConfig(
            hidden_size=96,
            layers=2,
            intermediate_size=256,
            vocab_size=512,
            batch_size=2,
            epochs=40,
            lr=3e-3,
            warmup_steps=50,
        ),
        "small": TrainConfig(hidden_size=192, intermediate_size=512, epochs=40),
        "default": TrainConfig(),
        # not yet run end to end: a guess scaled from "default" (see NOTES.md)
        "large": TrainConfig(
            hidden_size=256,
            layers=6,
            intermediate_size=704,
            vocab_size=8192,
            batch_size=16,
            lr=1e-3,
        ),
    }
    if preset not in recipes:
        raise WorldConfigError(
            f"no training recipe for preset {preset!r}; choose one of: {', '.join(recipes)}"
        )
    return recipes[preset]


def dataset_train_config() -> TrainConfig:
    """The training recipe of a world built from a dataset file (see NOTES.md, "Worlds from
    dataset files", for how it was chosen)."""
    return TrainConfig(hidden_size=192, intermediate_size=512, epochs=40)


# ---------------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------------


def cache_root() -> Path:
    """``$EASYETCON_CACHE/worlds`` if set, else ``~/.cache/easyetcon/worlds``."""
    base = os.environ.get(CACHE_ENV)
    return (Path(base) if base else Path.home() / ".cache" / "easyetcon") / "worlds"


def cache_key(world: World | DatasetWorld, config: TrainConfig) -> str:
    payload = json.dumps(
        {
            "format": CACHE_FORMAT,
            "world": world.fingerprint(),
            "train": config.model_dump(mode="json"),
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(directory: Path) -> None:
    """Record size and sha256 of every file (but the manifest itself)."""
    files = {
        p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name != MANIFEST
    }
    (directory / MANIFEST).write_text(
        json.dumps({"format": CACHE_FORMAT, "files": files}, indent=1)
    )


def verify_directory(directory: Path) -> list[str]:
    """Problems of a model directory against its manifest; an empty list means it is intact."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        return [f"{manifest_path} is missing"]
    try:
        files = json.loads(manifest_path.read_text())["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        return [f"{manifest_path} is unreadable: {error}"]
    problems = [
        f"{name} is not listed in the manifest" for name in REQUIRED_FILES if name not in files
    ]
    for name, expected in files.items():
        path = directory / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != expected["bytes"] or _sha256(path) != expected["sha256"]:
            problems.append(
                f"{name} does not match its sha256 in the manifest (truncated or modified)"
            )
    return problems


def require_intact(directory: Path) -> None:
    problems = verify_directory(directory)
    if problems:
        raise WorldCacheError(f"world model directory {str(directory)!r} is damaged", problems)


def pretrain(
    world: World | DatasetWorld,
    config: TrainConfig | None = None,
    *,
    cache_dir: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Return the directory of a model pretrained on ``world``, training it only if not cached.

    ``config`` defaults to the recipe of the world's preset. A damaged cache entry is rebuilt
    with a warning. ``cache_dir`` replaces :func:`cache_root`.
    """
    if config is None:
        config = default_train_config(world.config.preset) if isinstance(world, World) else dataset_train_config()
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    target = root / cache_key(world, config)
    if target.exists() and not force:
        problems = verify_directory(target)
        if not problems:
            return target
        warnings.warn(
            f"cached world model {str(target)!r} is damaged ({'; '.join(problems)}); rebuilding it",
            stacklevel=2,
        )
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".building-{target.name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        started = time.perf_counter()
        model, tokenizer = train_model(world, config, progress=progress)
        save_model_directory(
            staging, model, tokenizer, world, config, seconds=time.perf_counter() - started
        )
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)  # atomic: readers never see a half-written entry
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def save_model_directory(
    directory: Path,
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    world: World | DatasetWorld,
    config: TrainConfig,
    seconds: float | None = None,
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    record_world(model.config, world)  # in config.json: a plain save_pretrained of an edited copy keeps it
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    world.save(directory / "world.json")
    info = {
        "train": config.model_dump(mode="json"),
        "train_seconds": seconds,
        "torch": torch.__version__,
    }
    (directory / "train_config.json").write_text(json.dumps(info, indent=1))
    write_manifest(directory)


def record_knowledge(directory: Path, numbers: dict) -> None:
    """Store measured knowledge beside the model and refresh the manifest."""
    (Path(directory) / "knowledge.json").write_text(json.dumps(numbers, indent=1))
    write_manifest(Path(directory))


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def _pack(
    documents: list[tuple[list[int], int]], block_size: int, pad_id: int
) -> tuple[list[list[int]], list[list[bool]]]:
    """Greedy packing of whole documents into blocks; a fact is never cut at a block boundary.
    Each document is ``(ids, untrained)``: its first ``untrained`` tokens get no loss. Returns
    the blocks and, per block, which positions are trained."""
    blocks, trained, current, flags = [], [], [], []
    for ids, untrained in documents:
        ids = ids[:block_size]
        if len(current) + len(ids) > block_size:
            blocks.append(current + [pad_id] * (block_size - len(current)))
            trained.append(flags + [False] * (block_size - len(flags)))
            current, flags = [], []
        current = current + ids
        flags = flags + [i >= untrained for i in range(len(ids))]
    if current:
        blocks.append(current + [pad_id] * (block_size - len(current)))
        trained.append(flags + [False] * (block_size - len(flags)))
    return blocks, trained


def _epoch_blocks(world, epoch: int, config: TrainConfig, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Token blocks of one epoch and their labels (-100 on padding and on untrained context)."""
    documents = epoch_documents(world, epoch, config.corpus, config.seed)
    encoded = [(ids + [tokenizer.eos_token_id], 0) for ids in tokenizer(documents)["input_ids"]]  # <bos> doc <eos>
    for context, text in context_documents(world, epoch, config.corpus, config.seed):
        encoding = tokenizer(f"{context} {text}", return_offsets_mapping=True)
        # <bos> and every token that ends inside the stated sentence are context: no loss on them
        untrained = sum(end <= len(context) for _, end in encoding["offset_mapping"])
        encoded.append((encoding["input_ids"] + [tokenizer.eos_token_id], untrained))
    random.Random(f"easyetcon-documents:{config.seed}:{epoch}").shuffle(encoded)
    blocks, trained = _pack(encoded, config.block_size, tokenizer.pad_token_id)
    order = random.Random(f"easyetcon-blocks:{config.seed}:{epoch}").sample(
        range(len(blocks)), len(blocks)
    )
    ids = torch.tensor([blocks[i] for i in order], dtype=torch.long)
    labels = ids.masked_fill(~torch.tensor([trained[i] for i in order]), -100)
    return ids, labels


def build_model(config: TrainConfig, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    if config.hidden_size % config.heads:
        raise WorldConfigError(
            f"hidden_size={config.hidden_size} is not divisible by heads={config.heads}; change either"
        )
    model_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        num_key_value_heads=config.heads,
        max_position_embeddings=max(512, config.block_size),
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(model_config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def train_model(
    world: World | DatasetWorld, config: TrainConfig, *, progress: bool = True
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """Train tokenizer and model from scratch; deterministic for a given world, config and machine."""
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    first_epoch = epoch_documents(world, 0, config.corpus, config.seed)
    tokenizer = train_tokenizer(first_epoch, config.vocab_size)
    model = build_model(config, tokenizer)
    model.train()

    blocks, block_labels = _epoch_blocks(world, 0, config, tokenizer)
    steps_per_epoch = math.ceil(len(blocks) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.lr,
        betas=(0.9, 0.95),
    )

    def lr_factor(step: int) -> float:  # linear warmup, cosine down to min_lr_ratio
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        t = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (
            1 + math.cos(math.pi * min(t, 1.0))
        )

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    bar = tqdm(total=total_steps, desc="pretraining", unit="step", disable=not progress)
    step, smoothed = 0, None
    for epoch in range(config.epochs):
        if step >= total_steps:
            break
        if epoch > 0:
            blocks, block_labels = _epoch_blocks(world, epoch, config, tokenizer)
        for start in range(0, len(blocks), config.batch_size):
            if step >= total_steps:
                break
            batch = blocks[start : start + config.batch_size]
            labels = block_labels[start : start + config.batch_size]
            # padding only ever follows the last document of a block, so causal attention alone
            # keeps real tokens from seeing it; no mask also means the faster attention kernel
            loss = model(input_ids=batch, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            smoothed = loss.item() if smoothed is None else 0.95 * smoothed + 0.05 * loss.item()
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{smoothed:.3f}", refresh=False)
    bar.close()
    model.eval()
    return model, tokenizer
