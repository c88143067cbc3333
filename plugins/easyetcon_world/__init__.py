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

from typing import TYPE_CHECKING

from easyetcon.lazy import lazy_exports

# Names are imported on first use: the plugin host imports this package to list commands, and
# that must not pay for torch and transformers.
_EXPORTS = {
    "make_edit_requests": "easyetcon_world.edits",
    "split_of": "easyetcon_world.edits",
    "to_knowedit": "easyetcon_world.edits",
    "WorldCacheError": "easyetcon_world.errors",
    "WorldConfigError": "easyetcon_world.errors",
    "WorldRecordError": "easyetcon_world.errors",
    "DatasetWorld": "easyetcon_world.from_dataset",
    "world_from_dataset": "easyetcon_world.from_dataset",
    "headline": "easyetcon_world.knowledge",
    "record_world": "easyetcon_world.identity",
    "world_of_model": "easyetcon_world.identity",
    "measure_knowledge": "easyetcon_world.knowledge",
    "TrainConfig": "easyetcon_world.pretraining",
    "cache_root": "easyetcon_world.pretraining",
    "default_train_config": "easyetcon_world.pretraining",
    "pretrain": "easyetcon_world.pretraining",
    "RELATIONS": "easyetcon_world.relations",
    "TWO_HOPS": "easyetcon_world.relations",
    "SHIPPED_MODELS": "easyetcon_world.shipped",
    "default_model_path": "easyetcon_world.shipped",
    "has_default_model": "easyetcon_world.shipped",
    "has_shipped_model": "easyetcon_world.shipped",
    "load_pretrained": "easyetcon_world.shipped",
    "load_world": "easyetcon_world.shipped",
    "shipped_model_path": "easyetcon_world.shipped",
    "shipped_train_config": "easyetcon_world.shipped",
    "world_model_folder": "easyetcon_world.shipped",
    "PRESETS": "easyetcon_world.world",
    "World": "easyetcon_world.world",
    "WorldConfig": "easyetcon_world.world",
    "build_world": "easyetcon_world.world",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:  # for type checkers and IDEs
    from easyetcon_world.edits import make_edit_requests, split_of, to_knowedit
    from easyetcon_world.errors import (
        WorldCacheError,
        WorldConfigError,
        WorldRecordError,
    )
    from easyetcon_world.from_dataset import DatasetWorld, world_from_dataset
    from easyetcon_world.identity import record_world, world_of_model
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
