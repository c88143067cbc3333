"""Finding and loading world models: the shipped ones and any pretrained directory."""

from __future__ import annotations

from pathlib import Path

from easyetcon_world.errors import WorldCacheError
from easyetcon_world.from_dataset import DatasetWorld
from easyetcon_world.pretraining import TrainConfig, default_train_config, require_intact
from easyetcon_world.world import World

DEFAULT_PRESET = "default"
DEFAULT_SEED = 0

#: The models shipped for the default world: name -> changes to the preset's training recipe.
#: ``default`` is the small fast one every test, demo and most benchmarks use. ``wide`` has a
#: residual stream of 192 and MLPs of 1536: enough key dimensions for AlphaEdit's null space to
#: hold hundreds of sequential edits (NOTES.md, "A wider residual stream").
SHIPPED_MODELS: dict[str, dict[str, int]] = {
    "default": {},
    "wide": {"hidden_size": 192, "intermediate_size": 1536, "epochs": 32},
}


def _check_shipped_name(name: str) -> None:
    if name not in SHIPPED_MODELS:
        raise WorldCacheError(
            f"no shipped world model named {name!r}; choose one of: {', '.join(SHIPPED_MODELS)}"
        )


def shipped_model_path(name: str = "default") -> Path:
    """The directory of a shipped world model (model, tokenizer, ``world.json``)."""
    _check_shipped_name(name)
    return Path(__file__).parent / "assets" / name


def has_shipped_model(name: str = "default") -> bool:
    return (shipped_model_path(name) / "model.safetensors").is_file()


def shipped_train_config(name: str = "default") -> TrainConfig:
    """The training recipe a shipped model was built with (preset ``default``, seed 0)."""
    _check_shipped_name(name)
    return default_train_config(DEFAULT_PRESET).model_copy(update=SHIPPED_MODELS[name])


def default_model_path() -> Path:
    """The directory of the shipped default world model (model, tokenizer, ``world.json``)."""
    return shipped_model_path("default")


def has_default_model() -> bool:
    return has_shipped_model("default")


def world_model_folder(name_or_path: str | Path | None) -> Path:
    """A shipped model's name (``"default"``, ``"wide"``) or a model directory, as a directory.

    ``None`` is the shipped default. A shipped name whose files are missing is an error that says
    how to rebuild them.
    """
    if name_or_path is None:
        name_or_path = "default"
    if isinstance(name_or_path, str) and name_or_path in SHIPPED_MODELS:
        if not has_shipped_model(name_or_path):
            raise WorldCacheError(
                f"the shipped world model {name_or_path!r} is missing from "
                f"{str(shipped_model_path(name_or_path))!r}; rebuild it with "
                f"`python -m easyetcon_world.build_default --model {name_or_path}`"
            )
        return shipped_model_path(name_or_path)
    return Path(name_or_path)


def load_world(path: str | Path) -> World | DatasetWorld:
    """A world from a ``world.json`` file or from a model directory that contains one."""
    path = Path(path)
    if path.is_dir():
        path = path / "world.json"
    if not path.is_file():
        raise WorldCacheError(
            f"no world file at {str(path)!r}; pass a world.json or a world model directory"
        )
    text = path.read_text(encoding="utf-8")
    if '"easyetcon-dataset-world/' in text[:200]:
        return DatasetWorld.model_validate_json(text)
    return World.model_validate_json(text)


def load_pretrained(path: str | Path | None = None, *, verify: bool = True):
    """``(model, tokenizer, world)`` from a world model directory or a shipped model's name
    (default: the shipped ``default``).

    The directory is an ordinary ``save_pretrained`` output, so ``AutoModelForCausalLM`` works on
    it too; this helper also checks the manifest and loads the world.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = world_model_folder(path)
    if verify:
        require_intact(directory)
    model = AutoModelForCausalLM.from_pretrained(directory)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    return model, tokenizer, load_world(directory)
