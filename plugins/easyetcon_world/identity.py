"""Which fact world a model was pretrained on, recorded where ``save_pretrained`` keeps it.

A world model's ``config.json`` holds an ``easyetcon_world`` entry: the world's fingerprint and,
for a generated world, the :class:`WorldConfig` it is a function of. The entry travels with the
model config, so an edited world model saved with a plain ``model.save_pretrained(folder)`` (or
by ``easyetcon edit --out``) is still known as a world model, and its world can be regenerated
without the ``world.json`` of the folder it came from. A world built from a dataset file cannot
be regenerated: its ``world.json`` has to be copied beside the weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from easyetcon_world.errors import WorldCacheError
from easyetcon_world.from_dataset import DatasetWorld
from easyetcon_world.world import World, WorldConfig, build_world

#: The model config attribute (a key of ``config.json``) naming the model's world.
CONFIG_KEY = "easyetcon_world"
WORLD_FILE = "world.json"


class WorldIdentity(BaseModel):
    """The ``easyetcon_world`` entry of a world model's config."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["easyetcon-world-identity/1"] = "easyetcon-world-identity/1"
    fingerprint: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the world (World.fingerprint)")
    generator: WorldConfig | None = Field(
        default=None, description="what a generated world is a function of; None for a world from a dataset file"
    )


def identity_of_world(world: World | DatasetWorld) -> WorldIdentity:
    return WorldIdentity(
        fingerprint=world.fingerprint(), generator=world.config if isinstance(world, World) else None
    )


def record_world(model_config: Any, world: World | DatasetWorld) -> None:
    """Write ``world``'s identity into ``model_config`` (a ``transformers`` config), so that
    ``save_pretrained`` stores it in ``config.json``."""
    setattr(model_config, CONFIG_KEY, identity_of_world(world).model_dump(mode="json"))


def recorded_identity(model_config: Any) -> WorldIdentity | None:
    """The identity in ``model_config``; ``None`` when it names no world. A malformed entry is an error."""
    entry = getattr(model_config, CONFIG_KEY, None)
    if entry is None:
        return None
    try:
        return WorldIdentity.model_validate(entry)
    except ValidationError as error:
        raise WorldCacheError(
            f"the model config's {CONFIG_KEY!r} entry is not a fact-world identity ({error.error_count()} "
            f"problem(s): {error.errors()[0]['msg']}); remove it from config.json, or restore the one "
            f"the world model was built with"
        ) from None


@dataclass
class WorldOfModel:
    """A model's fact world and a sentence saying how it was found."""

    world: World | DatasetWorld
    found: str

    @property
    def fingerprint(self) -> str:
        return self.world.fingerprint()

    def pretraining_texts(self) -> list[str]:
        """The world's pretraining corpus, epoch 0 (the default corpus options)."""
        from easyetcon_world.corpus import CorpusConfig, epoch_documents

        return epoch_documents(self.world, 0, CorpusConfig())


def world_of_model(folder: Path | None, model_config: Any) -> WorldOfModel | None:
    """The fact world of a model loaded from ``folder`` with ``model_config``; ``None`` when it is
    not a world model.

    Looked for in the folder's ``world.json``, then in the config's ``easyetcon_world`` entry (a
    generated world is regenerated and checked against the recorded fingerprint). A model found
    through ``world.json`` whose config names no world gets the entry, in memory, so a model saved
    from it is still a world model.
    """
    from easyetcon_world.shipped import load_world

    identity = recorded_identity(model_config)
    if folder is not None and (folder / WORLD_FILE).is_file():
        world = load_world(folder)
        if identity is None:
            record_world(model_config, world)
        elif identity.fingerprint != world.fingerprint():
            raise WorldCacheError(
                f"{str(folder / WORLD_FILE)!r} is not the world the model's config.json names "
                f"(fingerprint {world.fingerprint()[:12]}, config {identity.fingerprint[:12]}); "
                f"put the model's own world.json back, or remove the file"
            )
        return WorldOfModel(world, f"{WORLD_FILE} beside its weights in {str(folder)!r}")
    if identity is None:
        return None
    if identity.generator is None:
        where = f"into {str(folder)!r}" if folder is not None else "beside its weights"
        raise WorldCacheError(
            f"the model's config.json names fact world {identity.fingerprint[:12]}, built from a dataset "
            f"file, but no {WORLD_FILE} is beside its weights: copy the {WORLD_FILE} of the world model "
            f"it was edited from {where}, or choose statistics.source model-samples or dataset:<path>"
        )
    world = regenerate(identity.generator)
    if world.fingerprint() != identity.fingerprint:
        raise WorldCacheError(
            f"the model's config.json names fact world {identity.fingerprint[:12]} (preset "
            f"{identity.generator.preset!r}, seed {identity.generator.seed}), but this version of "
            f"easyetcon_world generates {world.fingerprint()[:12]} from it: copy the {WORLD_FILE} of the "
            f"world model it was edited from beside its weights"
        )
    generator = identity.generator
    return WorldOfModel(
        world,
        f"its config.json names fact world {identity.fingerprint[:12]} "
        f"(preset {generator.preset!r}, seed {generator.seed}), regenerated",
    )


def world_texts(model: Any) -> Any:
    """The ``world`` text source: a fact-world model's pretraining corpus (an
    :class:`easyetcon.statistics.TextSource`), ``None`` for any other model."""
    from easyetcon.statistics import TextSource

    folder = Path(str(model.source)).expanduser() if model.source else None
    found = world_of_model(folder, getattr(model.torch_model, "config", None))
    if found is None:
        return None
    return TextSource(f"the model is a fact-world model: {found.found}", f"world:{found.fingerprint[:16]}", found.pretraining_texts)


def regenerate(config: WorldConfig) -> World:
    """The generated world of ``config``."""
    options = config.model_dump(exclude={"preset", "seed", "size"})
    return build_world(config.preset, config.seed, **config.size.model_dump(), **options)
