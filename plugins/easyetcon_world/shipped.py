"""Finding and loading world models: the shipped default and any pretrained directory."""

from __future__ import annotations

from pathlib import Path

from easyetcon_world.errors import WorldCacheError
from easyetcon_world.from_dataset import DatasetWorld
from easyetcon_world.pretraining import require_intact
from easyetcon_world.world import World

DEFAULT_PRESET = "default"
DEFAULT_SEED = 0


def default_model_path() -> Path:
    """The directory of the shipped default world model (model, tokenizer, ``world.json``)."""
    return Path(__file__).parent / "assets" / DEFAULT_PRESET


def has_default_model() -> bool:
    return (default_model_path() / "model.safetensors").is_file()


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
    """``(model, tokenizer, world)`` from a world model directory (default: the shipped one).

    The directory is an ordinary ``save_pretrained`` output, so ``AutoModelForCausalLM`` works on
    it too; this helper also checks the manifest and loads the world.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = Path(path) if path is not None else default_model_path()
    if path is None and not has_default_model():
        raise WorldCacheError(
            f"the shipped default world model is missing from {str(directory)!r}; rebuild it with "
            "`python -m easyetcon_world.build_default`"
        )
    if verify:
        require_intact(directory)
    model = AutoModelForCausalLM.from_pretrained(directory)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    return model, tokenizer, load_world(directory)
