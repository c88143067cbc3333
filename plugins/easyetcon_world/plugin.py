"""The fact world as an easyetcon plugin: the ``fact-world`` dataset and the ``world`` commands."""

from __future__ import annotations

import json
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Literal

import click
from pydantic import BaseModel, ConfigDict, Field, field_validator

from easyetcon.hookspecs import hookimpl
from easyetcon.requests import EditRequest, save_requests
from easyetcon_world.relations import RELATIONS
from easyetcon_world.world import PRESETS


class FactWorldDatasetConfig(BaseModel):
    """Options of the ``fact-world`` dataset: which world, which split, how many edits."""

    model_config = ConfigDict(extra="forbid")

    preset: str = Field(default="default", description=f"world size: one of {', '.join(PRESETS)}")
    seed: int = Field(
        default=0, description="world seed (the shipped model is preset default, seed 0)"
    )
    split: Literal["tune", "test"] = "test"
    n: int | None = Field(
        default=None, ge=1, description="number of edits; all of the split if unset"
    )
    edit_seed: int = Field(default=0, description="which facts are edited and to what")
    relations: list[str] | None = Field(
        default=None,
        description="relations to edit; default: the person facts (lives_in, born_in, works_for)",
    )

    long_form: int = Field(
        default=0, ge=0, le=8,
        description="0: each target is the new object; N: the object and N sentences the world states about it",
    )

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        if value not in PRESETS:
            raise ValueError(f"unknown preset {value!r}; choose one of: {', '.join(PRESETS)}")
        return value

    @field_validator("relations")
    @classmethod
    def _known_relations(cls, value: list[str] | None) -> list[str] | None:
        unknown = sorted(set(value or []) - set(RELATIONS))
        if unknown:
            raise ValueError(f"unknown relations {unknown}; choose from: {', '.join(RELATIONS)}")
        return value


def load_fact_world(config: FactWorldDatasetConfig) -> list[EditRequest]:
    """Counterfactual edit requests of a generated world (see :mod:`easyetcon_world.edits`)."""
    from easyetcon_world.edits import make_edit_requests
    from easyetcon_world.world import build_world

    world = build_world(config.preset, config.seed)
    return make_edit_requests(
        world, config.split, config.n, config.edit_seed, relations=config.relations, long_form=config.long_form
    )


@hookimpl
def easyetcon_register_datasets(register) -> None:
    register(
        "fact-world",
        load_fact_world,
        config=FactWorldDatasetConfig,
        summary="Counterfactual edits of a generated fact world, exact ground truth, shipped tiny Llama",
    )


#: The shipped models (``shipped.SHIPPED_MODELS``) as model names; kept here so that building the
#: registry does not import torch.
SHIPPED_MODEL_SUMMARIES = {
    "default": "the shipped fact-world Llama (4 M parameters): tests, demo, most benchmarks",
    "wide": "the shipped fact-world Llama with MLPs of 1536: enough key dimensions for long sequential runs",
}


def _shipped_folder(name: str) -> Path:
    from easyetcon_world.shipped import world_model_folder

    return world_model_folder(name)  # raises, saying how to rebuild it, when its files are missing


@hookimpl
def easyetcon_register_models(register) -> None:
    for name, summary in SHIPPED_MODEL_SUMMARIES.items():
        register(name, lambda name=name: _shipped_folder(name), summary=summary)


@hookimpl
def easyetcon_register_text_sources(register) -> None:
    register(
        "world", "easyetcon_world.identity:world_texts",
        summary="the pretraining corpus of a fact-world model (world.json beside its weights, or its config.json's entry)",
    )


@hookimpl
def easyetcon_register_commands(cli: click.Group) -> None:
    cli.add_command(world_group)


# ---------------------------------------------------------------------------------------------
# Commands. Heavy imports (torch, transformers) happen inside them, so `easyetcon --help` is fast.
# ---------------------------------------------------------------------------------------------

preset_option = click.option(
    "--preset",
    type=click.Choice(list(PRESETS)),
    default="default",
    show_default=True,
    help="world size",
)
seed_option = click.option("--seed", type=int, default=0, show_default=True, help="world seed")


@click.group("world")
def world_group() -> None:
    """The generated fact world: pretrain its tiny model, inspect it, export its edits."""


@world_group.command("build")
@preset_option
@seed_option
@click.option(
    "--from-dataset",
    "dataset",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="build the world from an edit-dataset file (any format `easyetcon eval --data` reads) "
    "instead of generating one; --seed then seeds its held-out probes and filler names",
)
@click.option("--format", "dataset_format", default=None, help="with --from-dataset: the file's format (detected if unset)")
@click.option("--limit", type=int, default=None, help="with --from-dataset: keep the first N usable records")
@click.option("--skip-missing", is_flag=True, help="with --from-dataset: skip records without a ground truth")
@click.option(
    "--heldout-locality", type=click.FloatRange(0, 1), default=None,
    help="with --from-dataset: share of locality probes held out from pretraining [default: 0.25]",
)
@click.option(
    "--export-requests",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="write the world's edit requests (easyetcon's request format) to this file",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="where pretrained worlds are cached [default: $EASYETCON_CACHE/worlds or ~/.cache/easyetcon/worlds]",
)
@click.option(
    "--retrain", is_flag=True, help="train even if a cached (or the shipped) model matches"
)
@click.option("--sample", type=int, default=None, help="measure knowledge on this many facts only")
@click.option(
    "--train-option",
    "train_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="change the preset's training recipe, e.g. intermediate_size=1536 or "
    "corpus.context_updates=0.5 (VALUE is JSON; repeatable); the model is cached under its own key",
)
def build_command(
    preset: str,
    seed: int,
    dataset: Path | None,
    dataset_format: str | None,
    limit: int | None,
    skip_missing: bool,
    heldout_locality: float | None,
    export_requests: Path | None,
    cache_dir: Path | None,
    retrain: bool,
    sample: int | None,
    train_options: tuple[str, ...],
) -> None:
    """Pretrain the world's model (or load it from the cache) and print what it knows.

    With --from-dataset the world is an edit-dataset file's: each record's old fact is taught
    (after its prompt and as a question with answer tags), paraphrases and a share of the
    locality probes are held out, and every target gets statements about invented subjects
    when no record teaches it as an answer (see the docs, "The fact world" > "From a dataset file").
    """
    from rich.console import Console
    from rich.table import Table

    from easyetcon_world.knowledge import PROTOCOL, below_floors, measure_knowledge
    from easyetcon_world.pretraining import (
        dataset_train_config,
        default_train_config,
        pretrain,
        record_knowledge,
    )
    from easyetcon_world.shipped import load_pretrained
    from easyetcon_world.world import build_world

    console = Console()
    dataset_only = {"--format": dataset_format, "--limit": limit, "--skip-missing": skip_missing or None,
                    "--heldout-locality": heldout_locality, "--export-requests": export_requests}
    if dataset is None:
        given = [name for name, value in dataset_only.items() if value is not None]
        if given:
            raise click.UsageError(f"{', '.join(given)} only apply with --from-dataset FILE (the "
                                   f"edits of a generated world come from `easyetcon world export`)")
        world = build_world(preset, seed)
        config = with_train_options(default_train_config(preset), train_options)
        directory = None if retrain else _matching_shipped_model(world, config)
    else:
        from easyetcon_world.from_dataset import DatasetWorldOptions, world_from_dataset

        options = DatasetWorldOptions(seed=seed, **({} if heldout_locality is None else {"heldout_locality": heldout_locality}))
        world = world_from_dataset(dataset, format=dataset_format, skip_missing=skip_missing, limit=limit, options=options)
        config = with_train_options(dataset_train_config(), train_options)
        directory = None
        summary = Table(title=f"world from {dataset.name}", show_header=False)
        for key, value in world.summary().items():
            summary.add_row(key, str(value))
        console.print(summary)
    if directory is not None:
        console.print(f"using the shipped model (same world and recipe): {directory}")
    else:
        directory = pretrain(world, config, cache_dir=cache_dir, force=retrain)
        console.print(f"world model: {directory}")
    model, tokenizer, _ = load_pretrained(directory)
    stored = directory / "knowledge.json"
    numbers = json.loads(stored.read_text()) if stored.is_file() and sample is None else None
    if numbers is None or numbers.get("protocol") != PROTOCOL:
        with console.status("measuring knowledge"):
            numbers = measure_knowledge(model, tokenizer, world, sample=sample)
        if sample is None and _writable(directory):
            record_knowledge(directory, numbers)
    console.print(knowledge_table(numbers))
    missed = below_floors(numbers)
    if missed:
        console.print(f"[yellow]below the floor: {', '.join(missed)}[/yellow] (edits measured on this model "
                      f"may say more about the model than about the editor)")
    if export_requests is not None:
        save_requests(world.requests, export_requests)
        console.print(f"{len(world.requests)} edit requests written to {export_requests}")


def with_train_options(config: Any, options: Sequence[str]) -> Any:
    """``config`` (a ``TrainConfig``) with ``KEY=VALUE`` overrides; ``corpus.KEY`` reaches the
    corpus options. Values are JSON (a bare word is a string). Unknown keys and invalid values
    are a usage error naming them."""
    from pydantic import ValidationError

    from easyetcon.registry import format_field_errors

    data = config.model_dump()
    for option in options:
        key, sep, raw = option.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{option!r} is not KEY=VALUE", param_hint="--train-option")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        *parents, leaf = key.split(".")
        target = data
        for parent in parents:
            if not isinstance(target.get(parent), dict):
                raise click.BadParameter(f"{key!r}: {parent!r} has no options", param_hint="--train-option")
            target = target[parent]
        if leaf not in target:
            raise click.BadParameter(
                f"unknown option {key!r}; choose from {', '.join(sorted(target))}", param_hint="--train-option"
            )
        target[leaf] = value
    try:
        return type(config).model_validate(data)
    except ValidationError as error:
        raise click.BadParameter("; ".join(format_field_errors(error)), param_hint="--train-option") from None


@world_group.command("info")
@preset_option
@seed_option
def info_command(preset: str, seed: int) -> None:
    """Sizes, relations and facts of a world, where its model is cached, and the shipped models."""
    from rich.console import Console
    from rich.table import Table

    from easyetcon_world.edits import editable_facts
    from easyetcon_world.pretraining import cache_key, cache_root, default_train_config
    from easyetcon_world.shipped import SHIPPED_MODELS, has_shipped_model, shipped_model_path
    from easyetcon_world.world import build_world

    world = build_world(preset, seed)
    summary = world.summary()
    table = Table(title=f"fact world: preset {preset!r}, seed {seed}", show_header=False)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")  # paths are folded onto the next line, never cut
    table.add_row("entities", ", ".join(f"{n} {k}" for k, n in summary["entities"].items()))
    table.add_row(
        "relations",
        ", ".join(f"{r} ({len(spec.templates)} templates)" for r, spec in RELATIONS.items()),
    )
    table.add_row("facts", str(summary["facts"]))
    table.add_row(
        "multi-hop questions",
        f"{summary['multi_hop_questions']} ({summary['multi_hop_in_pretraining']} shown in pretraining)",
    )
    table.add_row(
        "edits (tune / test)",
        f"{len(editable_facts(world, 'tune'))} / {len(editable_facts(world, 'test'))}",
    )
    entry = cache_root() / cache_key(world, default_train_config(preset))
    table.add_row("cache entry", f"{entry} ({'present' if entry.is_dir() else 'not built'})")
    for name in SHIPPED_MODELS:
        shipped = shipped_model_path(name)
        table.add_row(
            f"shipped model {name!r}",
            f"{shipped} ({'present' if has_shipped_model(name) else 'missing'}; --model {name})",
        )
    Console().print(table)


@world_group.command("export")
@preset_option
@seed_option
@click.option("--split", type=click.Choice(["tune", "test"]), default="test", show_default=True)
@click.option(
    "--n", "count", type=int, default=None, help="number of edits [default: the whole split]"
)
@click.option("--edit-seed", type=int, default=0, show_default=True)
@click.option(
    "--relation",
    "relations",
    multiple=True,
    type=click.Choice(list(RELATIONS)),
    help="edit this relation (repeatable) [default: the person facts]",
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["easyetcon", "knowedit"]),
    default="easyetcon",
    show_default=True,
)
def export_command(
    preset: str,
    seed: int,
    split: str,
    count: int | None,
    edit_seed: int,
    relations: tuple[str, ...],
    out: Path,
    fmt: str,
) -> None:
    """Write the world's counterfactual edit requests to a JSON file."""
    from easyetcon_world.edits import make_edit_requests, to_knowedit
    from easyetcon_world.world import build_world

    world = build_world(preset, seed)
    requests = make_edit_requests(world, split, count, edit_seed, relations=list(relations) or None)
    if fmt == "knowedit":
        out.write_text(json.dumps(to_knowedit(requests), indent=1), encoding="utf-8")
    else:
        save_requests(requests, out)
    click.echo(f"wrote {len(requests)} {split} edits ({fmt}) to {out}")


def knowledge_table(numbers: dict):
    """A rich table of a :func:`~easyetcon_world.knowledge.measure_knowledge` result: every
    headline measure, its floor where it has one, and how many items it scored."""
    from rich.table import Table

    from easyetcon_world.knowledge import floors_of, headline

    floors = floors_of(numbers)
    table = Table(title=f"knowledge ({numbers['protocol']})")
    for column in ("measure", "accuracy", "floor", "n"):
        table.add_column(column)
    for name, value in headline(numbers).items():
        measure = next((key for key in sorted(numbers, key=len, reverse=True) if name.startswith(key)), None)
        count = numbers[measure].get("n") if isinstance(numbers.get(measure), dict) else None
        floor = floors.get(name)
        table.add_row(
            name,
            "-" if value is None else f"{value:.3f}",
            "" if floor is None else f"{floor:.2f}",
            "" if count is None else str(count),
        )
    return table


def _matching_shipped_model(world, config) -> Path | None:
    """The shipped model trained on ``world`` with ``config``, if one is."""
    from easyetcon_world.shipped import (
        SHIPPED_MODELS,
        has_shipped_model,
        load_world,
        shipped_model_path,
    )

    for name in SHIPPED_MODELS:
        if not has_shipped_model(name):
            continue
        shipped = shipped_model_path(name)
        stored = json.loads((shipped / "train_config.json").read_text())["train"]
        if load_world(shipped).fingerprint() == world.fingerprint() and stored == config.model_dump(
            mode="json"
        ):
            return shipped
    return None


def _writable(directory: Path) -> bool:
    import os

    return os.access(directory, os.W_OK)
