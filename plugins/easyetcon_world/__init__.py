"""easyetcon-world: a generated ground-truth fact world and a tiny Llama pretrained on it.

Every editing method can be measured on a CPU in minutes with exact ground truth::

    from easyetcon_world import build_world, load_pretrained, make_edit_requests, measure_knowledge

    model, tokenizer, world = load_pretrained()          # the shipped default, no training
    wide = load_pretrained("wide")                       # the wider shipped model of the same world
    requests = make_edit_requests(world, "test", n=100)  # counterfactual EditRequests
    numbers = measure_knowledge(model, tokenizer, world, sample=200)

Other worlds: ``pretrain(build_world("small", seed=3))`` trains once and caches the result
(``$EASYETCON_CACHE/worlds/<hash>/``); ``world_from_dataset(path)`` turns an edit-dataset file
into a corpus so its edits change facts the model really held.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Names are imported on first use: the plugin host imports this package to list commands, and
# that must not pay for torch and transformers.
_EXPORTS = {
    "make_edit_requests": "edits",
    "split_of": "edits",
    "to_knowedit": "edits",
    "WorldCacheError": "errors",
    "WorldConfigError": "errors",
    "WorldRecordError": "errors",
    "DatasetWorld": "from_dataset",
    "world_from_dataset": "from_dataset",
    "headline": "knowledge",
    "measure_knowledge": "knowledge",
    "TrainConfig": "pretraining",
    "cache_root": "pretraining",
    "default_train_config": "pretraining",
    "pretrain": "pretraining",
    "RELATIONS": "relations",
    "TWO_HOPS": "relations",
    "SHIPPED_MODELS": "shipped",
    "default_model_path": "shipped",
    "has_default_model": "shipped",
    "has_shipped_model": "shipped",
    "load_pretrained": "shipped",
    "load_world": "shipped",
    "shipped_model_path": "shipped",
    "shipped_train_config": "shipped",
    "world_model_folder": "shipped",
    "PRESETS": "world",
    "World": "world",
    "WorldConfig": "world",
    "build_world": "world",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'easyetcon_world' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"easyetcon_world.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # for type checkers and IDEs
    from easyetcon_world.edits import make_edit_requests, split_of, to_knowedit
    from easyetcon_world.errors import (
        WorldCacheError,
        WorldConfigError,
        WorldRecordError,
    )
    from easyetcon_world.from_dataset import DatasetWorld, world_from_dataset
    from easyetcon_world.knowledge import headline, measure_knowledge
    from easyetcon_world.pretraining import (
        TrainConfig,
        cache_root,
        default_train_config,
        pretrain,
    )
    from easyetcon_world.relations import RELATIONS, TWO_HOPS
    from easyetcon_world.shipped import (
        SHIPPED_MODELS,
        default_model_path,
        has_default_model,
        has_shipped_model,
        load_pretrained,
        load_world,
        shipped_model_path,
        shipped_train_config,
        world_model_folder,
    )
    from easyetcon_world.world import PRESETS, World, WorldConfig, build_world
