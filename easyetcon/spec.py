"""Chain spec files (YAML or JSON). YAML is only the file format: the pydantic models here and
each editor's config model are the truth.

.. code-block:: yaml

    model: ./my-model          # optional: a folder (relative to this file), a model name
                               # (default, wide) or a hub id; the CLI's --model overrides it
    prompt_format:             # optional: how the model is asked (easyetcon.prompting)
      context: chat            # auto (default), question, instruction or chat
    mode: sequential           # or batch
    batch_size: 1
    chain:
      - editor: example-ft-last
        steps: 10              # every other key is an option of that editor
      - editor: example-ft-last
        label: second-pass     # step label (needed when an editor appears twice)
        learning_rate: 0.01

Validation runs in two passes — look every editor up, then validate each step's options
against its editor's config model — and reports every problem at once with its step index.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from easyetcon.chain import EditChain
from easyetcon.errors import ConfigError, UnknownNameError
from easyetcon.plugins import PluginHost, get_host
from easyetcon.prompting import PromptFormat
from easyetcon.registry import format_field_errors

RESERVED_STEP_KEYS = ("editor", "label")


class ChainSpec(BaseModel):
    """The top level of a chain spec file."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        default=None, description="Model folder (relative to the spec file), registered model name (default, wide) or hub id."
    )
    dtype: str | None = Field(default=None, description="float32, bfloat16, float16 or auto.")
    device_map: str | dict[str, Any] | None = Field(default=None, description="Passed to from_pretrained.")
    prompt_format: PromptFormat = Field(
        default_factory=PromptFormat,
        description="How the model is asked while it is edited and evaluated (context: auto, question, instruction, chat).",
    )
    mode: Literal["sequential", "batch"] = "sequential"
    batch_size: int = Field(default=1, ge=1)
    chain: list[dict[str, Any]] = Field(min_length=1, description="Steps: 'editor' plus its options.")


def read_spec_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"chain spec {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"chain spec {str(path)!r} is not valid {path.suffix.lstrip('.') or 'YAML'}: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"chain spec {str(path)!r}: the top level must be a mapping with a 'chain' list")
    return data


def parse_chain_spec(data: dict[str, Any], *, host: PluginHost | None = None, source: str = "chain spec") -> tuple[ChainSpec, EditChain]:
    """Validate a spec mapping; return it with the :class:`EditChain` it describes."""
    host = host or get_host()
    try:
        spec = ChainSpec.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"{source} is invalid", format_field_errors(error)) from None

    problems: list[str] = []
    # Pass 1: every editor must exist.
    infos = []
    for index, step in enumerate(spec.chain):
        name = step.get("editor")
        if not isinstance(name, str) or not name:
            problems.append(f"step {index}: missing 'editor' (found keys: {sorted(step) or 'none'})")
            infos.append(None)
            continue
        try:
            infos.append(host.registry.editor(name))
        except UnknownNameError as error:
            problems.append(f"step {index}: {error}")
            infos.append(None)
    # Pass 2: every known editor's options must validate.
    for index, (step, info) in enumerate(zip(spec.chain, infos)):
        if info is None:
            continue
        options = {k: v for k, v in step.items() if k not in RESERVED_STEP_KEYS}
        try:
            info.config_model.model_validate(options)
        except ValidationError as error:
            problems.extend(format_field_errors(error, prefix=f"step {index} ({info.name}): "))
    if problems:
        raise ConfigError(f"{source} is invalid", problems)
    return spec, EditChain(spec.chain, host=host)


def load_chain_spec(path: str | Path, *, host: PluginHost | None = None) -> tuple[ChainSpec, EditChain]:
    """Read and validate a YAML/JSON chain spec file.

    A relative ``model:`` path is relative to the file's folder, as a path in any config file is:
    one written ``./name`` or ``../name`` always, a bare ``name`` when that folder holds it
    (otherwise it stays a model name or hub id)."""
    spec, chain = parse_chain_spec(read_spec_file(path), host=host, source=f"chain spec {str(path)!r}")
    model = spec.model
    if model and not Path(model).expanduser().is_absolute() and not model.startswith("~"):
        beside = Path(path).absolute().parent / model
        if model.startswith(("./", "../", ".\\", "..\\")) or beside.is_dir():
            spec = spec.model_copy(update={"model": str(beside.resolve())})
    return spec, chain
