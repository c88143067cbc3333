"""The ``easyetcon`` command line. Core commands: ``plugins``, ``edit``, ``undo``, ``journal``,
``convert-hparams``, ``export``, ``apply``; plugins add more through the ``easyetcon_register_commands`` hook."""

from __future__ import annotations

import itertools
import json
import logging
import os
import shlex
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NoReturn

import click
from rich import box
from rich.console import Console
from rich.table import Table

from easyetcon.errors import EasyEtconError
from easyetcon.plugins import get_host

console = Console()


#: The exit code of a command stopped by Ctrl-C: 128 + SIGINT, as shells report it.
INTERRUPTED_EXIT_CODE = 130
_ARGUMENTS_KEY = "easyetcon.arguments"


#: ``--context``: how the model is asked (easyetcon.prompting), shared by `edit` and `eval`.
CONTEXT_OPTION = click.option(
    "--context", type=click.Choice(["auto", "question", "instruction", "chat"]),
    help="How the model is asked, overriding the spec's prompt_format.context: auto (chat when the "
    "tokenizer has a chat template, else question), question, instruction or chat.",
)


class _Group(click.Group):
    """Turns easyetcon's own errors into one clear line and exit code 2, and Ctrl-C into one
    line saying how to run the command again and exit code 130, not a traceback."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta[_ARGUMENTS_KEY] = list(args)  # for command_line(): what to run to resume
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        from easyetcon.files import describe_os_error

        try:
            return super().invoke(ctx)
        except EasyEtconError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(2)
        except OSError as error:  # a full disk, a read-only folder: the user's files are as they were
            click.echo(f"error: {describe_os_error(error, 'complete the command')}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:  # a command without its own message for Ctrl-C
            exit_interrupted(f"the command stopped before it finished; to run it again: {command_line(ctx)}")


def command_line(ctx: click.Context | None = None, *, leave_out: Iterable[str] = ()) -> str:
    """The running ``easyetcon`` command as a shell line to paste, less the flags in
    ``leave_out`` (flags without a value, such as ``--no-resume``)."""
    ctx = ctx or click.get_current_context()
    arguments = ctx.find_root().meta.get(_ARGUMENTS_KEY, [])
    dropped = set(leave_out)
    return shlex.join(["easyetcon", *(a for a in arguments if a not in dropped)])


def exit_interrupted(message: str) -> NoReturn:
    """End a command stopped by Ctrl-C: ``interrupted: <message>`` on stderr, exit code 130."""
    click.echo(f"interrupted: {message}", err=True)
    sys.exit(INTERRUPTED_EXIT_CODE)


class _InfoLines(logging.Handler):
    """Shows what easyetcon and its plugins log at INFO or above (the ``easyetcon`` logger and
    its children, e.g. the layer a traced editor chose) as plain lines on stderr, above any
    progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - a failed info line must never end the command
            self.handleError(record)


def show_info_lines() -> None:
    """Send the ``easyetcon`` loggers' INFO lines to stderr (once per process)."""
    logger = logging.getLogger("easyetcon")
    if not any(isinstance(handler, _InfoLines) for handler in logger.handlers):
        logger.addHandler(_InfoLines())
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)


@click.group(cls=_Group)
@click.version_option(package_name="easyetcon")
def cli() -> None:
    """Edit the knowledge of language models, then consolidate it."""
    show_info_lines()


# ---------------------------------------------------------------------------------------------
@cli.command()
@click.option("--family", help="Only this family: external-memory, merging, intrinsic, consolidation.")
@click.option("--subfamily", help="Only this subfamily, e.g. locate-then-edit.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(family: str | None, subfamily: str | None, as_json: bool) -> None:
    """List registered editors (the taxonomy) and the other things plugins registered."""
    host = get_host()
    registry = host.registry
    editors = registry.editors(family=family, subfamily=subfamily)
    if as_json:
        payload = {
            "editors": [
                {
                    "name": e.name, "family": e.family.value, "subfamily": e.subfamily,
                    "distribution": e.distribution, "summary": e.summary,
                    "options": e.config_model.model_json_schema().get("properties", {}),
                }
                for e in editors
            ],
            "datasets": [{"name": d.name, "distribution": d.distribution, "summary": d.summary} for d in registry.datasets()],
            "metrics": _parts_json(registry, "metric"),
            "rewards": _parts_json(registry, "reward"),
            "adapters": _parts_json(registry, "adapter"),
            "models": _parts_json(registry, "model"),
            "text_sources": _parts_json(registry, "text-source"),
            "hparams_converters": _parts_json(registry, "hparams-converter"),
            "plugins": [{"name": n, "distribution": d} for n, d in host.plugins()],
        }
        click.echo(json.dumps(payload, indent=2))
        return
    # one table, a section per family; names and labels never wrap, summaries wrap by words,
    # so it reads at 80 columns
    table = Table(title="easyetcon editors", box=box.SIMPLE_HEAD, padding=(0, 1), expand=False)
    table.add_column("name", no_wrap=True, style="bold")
    table.add_column("subfamily", no_wrap=True)
    table.add_column("summary", overflow="fold")
    for index, family_editors in enumerate(_by_family(editors)):
        if index:
            table.add_section()
        table.add_row(f"[cyan]{family_editors[0].family.value}[/cyan]", "", "")
        for e in family_editors:
            origin = "" if e.distribution == "easyetcon" else f" [dim](from {e.distribution})[/dim]"
            table.add_row(f"  {e.name}", e.subfamily, e.summary + origin)
    if editors:
        console.print(table)
    else:
        console.print("no editors match" if (family or subfamily) else registry.describe_known_editors())
    if family is None and subfamily is None:
        for kind, names in (
            ("datasets", [d.name for d in registry.datasets()]),
            ("metrics", [p.name for p in registry.parts("metric")]),
            ("rewards", [p.name for p in registry.parts("reward")]),
            ("model adapters", [p.name for p in registry.parts("adapter")]),
            ("model names", [p.name for p in registry.parts("model")]),
            ("text sources", [p.name for p in registry.parts("text-source")]),
            ("EasyEdit hparams converters", [p.name for p in registry.parts("hparams-converter")]),
        ):
            console.print(f"[bold]{kind}:[/bold] {', '.join(names) or '(none)'}")


def _by_family(editors: list[Any]) -> list[list[Any]]:
    """``editors`` (sorted by family, as the registry lists them) in one list per family."""
    return [list(group) for _, group in itertools.groupby(editors, key=lambda e: e.family)]


def _parts_json(registry: Any, kind: str) -> list[dict[str, str]]:
    return [{"name": p.name, "distribution": p.distribution, "summary": p.summary} for p in registry.parts(kind)]


# ---------------------------------------------------------------------------------------------
@cli.command()
@click.option("--model", "model_name", help="Model folder, model name (default, wide: see `easyetcon plugins`) or hub id (overrides the spec's 'model').")
@click.option("--chain", "chain_path", required=True, type=click.Path(dir_okay=False), help="Chain spec (YAML or JSON).")
@click.option("--data", "data_path", required=True,
              help="Edit requests: a dataset file (easyetcon requests, KnowEdit, CounterFact, ZsRE, QA) or a registered dataset's name such as fact-world.")
@click.option("--format", "data_format", help="Dataset format of the file (default: detected from the records); see `easyetcon plugins`.")
@click.option("--data-option", "data_option", multiple=True, help="KEY=VALUE option of a registered dataset (repeatable), e.g. n=50.")
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N requests.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for the edited model and journal (new or empty).")
@click.option("--mode", type=click.Choice(["sequential", "batch"]), help="Overrides the spec's mode.")
@click.option("--batch-size", type=int, help="Overrides the spec's batch_size.")
@click.option("--dtype", help="Overrides the spec's dtype (float32, bfloat16, ...).")
@CONTEXT_OPTION
def edit(model_name, chain_path, data_path, data_format, data_option, limit, out_dir, mode, batch_size, dtype, context) -> None:
    """Apply a chain of editors to a model and save the edited model with its journal.

    Writes OUT/model (save_pretrained) and OUT/journal. The input model is never changed.
    Under `accelerate launch` every process edits its own copy of the model and only the
    main one writes OUT, once all ended with the same weights.
    """
    from easyetcon.dataset_files import load_requests_from
    from easyetcon.model import load_model
    from easyetcon.spec import load_chain_spec

    from easyetcon.distributed import (
        is_main_process,
        process_count,
        release_processes,
        replica_device_map,
        require_same_weights,
    )
    from easyetcon.files import locked_folder, remove_abandoned_staging, staging_folder
    from easyetcon.journal import Journal
    from easyetcon.requests import require_unique_ids

    out = Path(out_dir).absolute()
    main_process = is_main_process()
    if main_process:  # OUT is the main process's alone: the others never look at it
        _require_empty_output(out)
    # Validate everything cheap before loading the model.
    spec, chain = load_chain_spec(chain_path)
    requests = load_requests_from(data_path, data_format, limit=limit, options=parse_data_options(data_option))
    require_unique_ids(requests, source=str(data_path))
    model_source = model_name or spec.model
    if not model_source:
        raise click.UsageError("no model: pass --model or set 'model:' in the chain spec")
    device_map = replica_device_map(spec.device_map)
    if not main_process:  # another process of accelerate launch: it edits its replica in step and writes nothing
        model = load_model(model_source, dtype=dtype or spec.dtype, device_map=device_map, prompt_format=prompt_format_of(spec, context))
        result = chain.apply(model, requests, mode=mode or spec.mode, batch_size=batch_size or spec.batch_size, release_tensors=True)
        require_same_weights(result)
        release_processes()  # its last collective: the main process only saves from here on
        return
    try:
        with locked_folder(out):
            for removed in remove_abandoned_staging(out.parent):
                console.print(f"removed {removed}, left behind by an interrupted run")
            _require_empty_output(out)  # another run may have finished into it meanwhile
            model = load_model(
                model_source, dtype=dtype or spec.dtype, device_map=device_map, prompt_format=prompt_format_of(spec, context),
            )
            console.print(f"loaded {type(model.torch_model).__name__} from {model_source} (adapter {model.adapter.name})")
            # Build the run in a hidden folder beside OUT, then rename it onto OUT in one step, so
            # OUT is either untouched or complete.
            with staging_folder(out.parent, out.name) as staging:
                built = staging / "run"
                journal = Journal(built / "journal", metadata={
                    "model": model_source, "chain_spec": spec.model_dump(mode="json"),
                    "prompt_format": model.prompt_format.describe(),
                })
                result = chain.apply(
                    model, requests, mode=mode or spec.mode, batch_size=batch_size or spec.batch_size,
                    journal=journal, progress=True,
                )
                require_same_weights(result)
                model.save_pretrained(built / "model")
                os.rename(built, out)  # replaces the empty OUT in one step
    except KeyboardInterrupt:
        if (out / "journal").is_dir():  # stopped after the rename: the run is complete
            exit_interrupted(f"the run had finished and is saved in {str(out)!r}")
        # `edit` saves nothing until the whole chain has run, so there is nothing to resume.
        exit_interrupted(
            f"the chain was rolled back and {str(out)!r} was not written (edit saves its run only "
            f"once every request is edited); to start it again: {command_line()}"
        )
    timing = ", ".join(f"{name} {seconds:.2f}s" for name, seconds in result.seconds_by_step().items())
    console.print(f"applied {len(result.records)} step(s) to {len(requests)} request(s) ({timing})")
    if process_count() > 1:
        release_processes()
        console.print(f"all {process_count()} processes ended with the same weights")
    console.print(f"saved edited model to {out / 'model'} and journal to {out / 'journal'}")


def prompt_format_of(spec: Any, context: str | None) -> Any:
    """The spec's prompt format, its context replaced by ``--context`` when given."""
    return spec.prompt_format if context is None else spec.prompt_format.model_copy(update={"context": context})


def parse_data_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``--data-option KEY=VALUE`` pairs as a dict, each value read as YAML (``n=50`` is a number)."""
    import yaml

    options: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise click.UsageError(f"--data-option {pair!r}: use KEY=VALUE")
        key, value = pair.split("=", 1)
        options[key.strip()] = yaml.safe_load(value)
    return options


def _require_empty_output(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise click.UsageError(f"--out {str(out)!r} exists and is not empty; choose a new folder")


# ---------------------------------------------------------------------------------------------
UNDO_BACKUP, UNDO_STAGING = ".model-before-undo", ".easyetcon-staging-undo"


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--last", type=click.IntRange(min=1), help="Undo only the newest N applied steps (N >= 1).")
def undo(run_dir: str, last: int | None) -> None:
    """Roll back the edits recorded in RUN_DIR's journal and save the restored model in place.

    The saved model is first checked, weight by weight, against the state the journal
    describes; the restored weights are rebuilt from the records and checked against their
    digests before anything on disk changes.
    """
    from easyetcon.files import locked_folder
    from easyetcon.journal import UNDONE, Journal

    run = Path(run_dir)
    if not (run / "journal").is_dir():
        raise click.UsageError(f"{run_dir!r} has no journal/ folder; pass the --out folder of 'easyetcon edit'")
    with locked_folder(run):
        journal = Journal.open(run / "journal")
        if not (run / "model").is_dir() and not (run / UNDO_BACKUP).is_dir():
            raise click.UsageError(
                f"{run_dir!r} has a journal but no saved model (an 'easyetcon eval' run keeps only its "
                f"journal): replay it onto the base model from Python with Journal.replay, or rerun it"
            )
        model = _finish_interrupted_undo(run, journal)
        if not journal.entries("applied"):
            console.print("nothing to undo: every step of this journal is already undone")
            return
        chosen = journal.rollback(model, last=last, mark=False)
        staging = run / UNDO_STAGING
        if staging.exists():
            shutil.rmtree(staging)
        model.save_pretrained(staging / "model")
        # The order makes every crash point recoverable: the next undo keeps whichever of the
        # two saved models matches the journal (see _finish_interrupted_undo).
        os.rename(run / "model", run / UNDO_BACKUP)
        os.rename(staging / "model", run / "model")
        journal.set_status(chosen, UNDONE)
        shutil.rmtree(run / UNDO_BACKUP)
        shutil.rmtree(staging, ignore_errors=True)
    console.print(f"undid {len(chosen)} step(s); restored model saved to {run / 'model'}")


@cli.command(name="convert-hparams")
@click.argument("hparams_file", type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), help="Write the chain spec to this new YAML file instead of printing it.")
def convert_hparams_command(hparams_file: str, out: str | None) -> None:
    """Turn an EasyEdit hparams YAML into an easyetcon chain spec.

    Prints the spec (or writes it to --out), then every key of the file: the easyetcon option it
    became, or why easyetcon has none. The methods that convert are those the installed plugins
    register converters for (`easyetcon plugins` lists them).
    """
    import yaml

    from easyetcon.hparams import convert_hparams, read_hparams

    converted = convert_hparams(read_hparams(hparams_file), get_host().registry)
    text = yaml.safe_dump(converted.spec, sort_keys=False, allow_unicode=True)
    if out is not None:
        target = Path(out)
        if target.exists():
            raise click.UsageError(f"{out!r} exists; choose a new file for the chain spec")
        target.write_text(text, encoding="utf-8")
        console.print(f"wrote the chain spec ({converted.editor}) to {out}")
    else:
        click.echo(text, nl=False)
    table = Table(title=f"{Path(hparams_file).name} -> {converted.editor}", box=box.SIMPLE_HEAD, padding=(0, 1))
    table.add_column("EasyEdit key", no_wrap=True, style="bold")
    table.add_column("easyetcon", overflow="fold")
    for key, option in converted.mapped.items():
        table.add_row(key, option)
    for key, reason in converted.unmapped.items():
        table.add_row(key, f"[dim]no equivalent: {reason}[/dim]")
    Console(stderr=out is None).print(table)  # the spec alone on stdout, so it can be redirected


def _finish_interrupted_undo(run: Path, journal: Any) -> Any:
    """Load RUN/model, after settling an undo that was cut off: of RUN/model and the backup it
    left, keep the one the journal describes. Raise if the saved model matches neither."""
    from easyetcon.errors import JournalError
    from easyetcon.model import load_model

    candidates = [p for p in (run / "model", run / UNDO_BACKUP) if p.is_dir()]
    for path in candidates:
        model = load_model(path, dtype="auto")
        try:
            journal.check_current(model, what=f"the saved model {str(path)!r}")
        except JournalError as error:
            problem = error
            continue
        if path.name == UNDO_BACKUP:
            if (run / "model").exists():
                shutil.rmtree(run / "model")
            os.rename(path, run / "model")
            console.print("an interrupted undo had not finished; the model before it was put back")
        elif (run / UNDO_BACKUP).exists():
            shutil.rmtree(run / UNDO_BACKUP)
            console.print("an interrupted undo had finished; its leftover backup was removed")
        shutil.rmtree(run / UNDO_STAGING, ignore_errors=True)
        return model
    raise JournalError(f"{problem}. Nothing was changed")


# ---------------------------------------------------------------------------------------------
@cli.command(name="journal")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def show_journal(run_dir: str, as_json: bool) -> None:
    """Show the steps recorded in RUN_DIR's journal (RUN_DIR or RUN_DIR/journal)."""
    from easyetcon.journal import Journal

    folder = Path(run_dir)
    journal = Journal.open(folder / "journal" if (folder / "journal").is_dir() else folder)
    entries = journal.entries()
    if as_json:
        click.echo(json.dumps({"metadata": journal.metadata, "steps": entries}, indent=2))
        return
    table = Table(title=f"journal {journal.directory}", box=box.SIMPLE_HEAD, padding=(0, 1), show_edge=False, pad_edge=False)
    # Names, numbers and statuses are never cut or broken (the editor and family go under the
    # step's label, so the table reads at 80 columns); the request ids take the remaining width
    # and wrap between ids.
    table.add_column("#", no_wrap=True, justify="right")
    table.add_column("step / editor · family", no_wrap=True)
    table.add_column("requests", overflow="fold", ratio=1)
    table.add_column("seconds", no_wrap=True, justify="right")
    table.add_column("status", no_wrap=True)
    for e in entries:
        table.add_row(
            str(e["position"]), f"{e['step_name']}\n[dim]{e['editor']} · {e['family']}[/dim]",
            request_ids_cell(e["request_ids"]), f"{e['seconds']:.2f}", e["status"],
        )
    console.print(table)


#: How many request ids a journal row lists before it gives only their count.
JOURNAL_IDS_SHOWN = 5


def request_ids_cell(ids: list[str]) -> str:
    """The request ids of a journal row, each whole; a batch of more than
    :data:`JOURNAL_IDS_SHOWN` lists the first ones and how many more there are."""
    shown = ", ".join(ids[:JOURNAL_IDS_SHOWN])
    more = len(ids) - JOURNAL_IDS_SHOWN
    return f"{shown}, … (+{more} more; --json lists all)" if more > 0 else shown


# ---------------------------------------------------------------------------------------------
@cli.command(name="export")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False), help="The file to write (new), e.g. edits.safetensors.")
def export_command(run_dir: str, out_file: str) -> None:
    """Write the net change of RUN_DIR's edits to one file.

    The file (safetensors) holds low-rank changes (ROME, MEMIT, AlphaEdit, EMMET) as factors, other changes whole, and
    memory stores with their entries; its metadata names the base model's hash and every
    weight's final digest. RUN_DIR/model is first checked against the journal.
    """
    from easyetcon.deltas import build_export
    from easyetcon.errors import ExportError, JournalError
    from easyetcon.files import locked_folder
    from easyetcon.journal import APPLIED, Journal
    from easyetcon.model import load_model

    run, out = Path(run_dir), Path(out_file)
    _require_new_file(out)
    if not (run / "journal").is_dir():
        raise click.UsageError(f"{run_dir!r} has no journal/ folder; pass the --out folder of 'easyetcon edit'")
    with locked_folder(run):  # no undo can swap RUN_DIR/model while it is read
        journal = Journal.open(run / "journal")
        if not (run / "model").is_dir():
            raise click.UsageError(
                f"{run_dir!r} has a journal but no saved model (an 'easyetcon eval' run keeps only its "
                f"journal): replay it onto the base model from Python with Journal.replay, then use "
                f"easyetcon.deltas.build_export"
            )
        if not journal.entries(APPLIED):
            raise ExportError(f"nothing to export: every step of {run_dir!r}'s journal is undone; {str(out)!r} was not written")
        model = load_model(run / "model", dtype="auto")
        try:
            export = build_export(journal, model, what=f"the saved model {str(run / 'model')!r}")
        except JournalError as error:
            raise JournalError(f"{error}. Nothing was written") from error
        _require_new_file(out)  # another command may have written it meanwhile
        export.save(out)
    run_summary = export.document["run"]
    console.print(f"exported {describe_export(export)} from {run_summary['steps']} applied step(s) ({run_summary['requests']} request(s))")
    dense = f" (the changed weights whole: {export.dense_bytes():,} bytes)" if export.weights else ""
    console.print(f"wrote {out}: {out.stat().st_size:,} bytes{dense}")
    console.print(f"made for base model {export.base_model[:16]} ({export.dtype})")


def describe_export(export: Any) -> str:
    """``3 weight(s) (2 factored, 1 whole)``, and the memory stores, where there are any."""
    counts = export.counts()
    parts = [f"{len(export.weights)} weight(s) ({counts['factored']} factored, {counts['whole']} whole)"] if export.weights else []
    if counts["stores"]:
        parts.append(f"{counts['stores']} memory store(s) ({counts['entries']} entries)")
    return " and ".join(parts) or "no change (the applied steps left every weight as it was)"


def _require_new_file(path: Path) -> None:
    if path.exists():
        raise click.UsageError(f"--out {str(path)!r} exists; choose a new file")
    if not path.absolute().parent.is_dir():
        raise click.UsageError(f"--out {str(path)!r}: the folder {str(path.absolute().parent)!r} does not exist")


@cli.command(name="apply")
@click.argument("model_name", metavar="MODEL")
@click.argument("export_file", metavar="EXPORT", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for the edited model (new or empty).")
def apply_command(model_name: str, export_file: str, out_dir: str) -> None:
    """Apply an edit export to another copy of its base model.

    EXPORT is a file written by `easyetcon export`. MODEL (a folder, model name or hub id) must
    be the base model of its run, bit for bit; every rebuilt weight is checked against its
    final digest before anything is written. Writes OUT/model, and OUT/memory.safetensors when
    the export has memory stores.
    """
    from easyetcon.deltas import MEMORY_FILE, apply_export, read_export
    from easyetcon.files import locked_folder, remove_abandoned_staging, staging_folder
    from easyetcon.model import load_model

    out = Path(out_dir).absolute()
    _require_empty_output(out)
    export = read_export(export_file)  # a damaged file is refused before the model is loaded
    try:
        with locked_folder(out):
            for removed in remove_abandoned_staging(out.parent):
                console.print(f"removed {removed}, left behind by an interrupted run")
            _require_empty_output(out)
            model = load_model(model_name, dtype=export.dtype)
            console.print(f"loaded {type(model.torch_model).__name__} from {model_name} (adapter {model.adapter.name})")
            apply_export(model, export, what=repr(model_name))
            with staging_folder(out.parent, out.name) as staging:
                built = staging / "applied"
                model.save_pretrained(built / "model")
                if export.memories:
                    export.memory_only().save(built / MEMORY_FILE)
                os.rename(built, out)  # replaces the empty OUT in one step
    except KeyboardInterrupt:
        if (out / "model").is_dir():
            exit_interrupted(f"the edited model had been saved in {str(out)!r}")
        exit_interrupted(f"{str(out)!r} was not written; to start again: {command_line()}")
    checked = "; every weight matches its final digest" if export.weights else ""
    console.print(f"applied {describe_export(export)}{checked}")
    console.print(f"saved edited model to {out / 'model'}")
    if export.memories:
        console.print(f"saved its memory stores to {out / MEMORY_FILE}; easyetcon.deltas.load_applied loads both")


_commands_registered = False


def main() -> None:
    """Entry point of the ``easyetcon`` script."""
    global _commands_registered
    from easyetcon.files import exit_cleanly_on_sigterm

    exit_cleanly_on_sigterm()
    if not _commands_registered:
        try:
            get_host().register_commands(cli)
        except EasyEtconError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(2)
        _commands_registered = True
    cli()


if __name__ == "__main__":
    main()
