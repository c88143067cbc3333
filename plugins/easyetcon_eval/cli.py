"""``easyetcon eval`` (a lifelong run with reports) and ``easyetcon compare-runs``."""

from __future__ import annotations


import click

from easyetcon.cli import CONTEXT_OPTION
from easyetcon_eval.names import DEFAULT_JUDGE, PROTOCOLS


@click.command("eval")
@click.option("--model", "model_name", help="Model folder, model name (default, wide: see `easyetcon plugins`) or hub id (overrides the chain spec's 'model').")
@click.option("--chain", "chain_path", required=True, type=click.Path(dir_okay=False, exists=True), help="Chain spec (YAML or JSON).")
@click.option("--data", required=True, help="Dataset file (KnowEdit, CounterFact, ZsRE, QA, easyetcon requests) or a registered dataset name such as fact-world.")
@click.option("--format", "data_format", help="Dataset format (default: detected from the records); see `easyetcon plugins`.")
@click.option("--data-option", "data_option", multiple=True, help="KEY=VALUE option of a registered dataset (repeatable), e.g. n=50.")
@click.option("--protocol", "protocols", multiple=True, type=click.Choice(list(PROTOCOLS)), help="Repeatable; default teacher-forced and generation.")
@click.option("--schedule", default="end", show_default=True, help="each | end | every:N (retention on everything edited so far).")
@click.option("--limit", type=int, help="Only the first N requests.")
@click.option("--mode", type=click.Choice(["sequential", "batch"]), help="Overrides the chain spec's mode.")
@click.option("--batch-size", type=int, help="Requests per chain application (overrides the spec).")
@click.option("--retention-sample", type=int, help="Score at most N edited requests at each retention point.")
@click.option("--max-new-tokens", type=int, default=48, show_default=True, help="Length cap of generation.")
@click.option("--judge", default=DEFAULT_JUDGE, show_default=True, help="Registered metric that judges generations.")
@click.option("--fluency", is_flag=True, help="Also measure fluency (n-gram entropy of free generation).")
@click.option("--dtype", help="float32, bfloat16, ... (overrides the spec).")
@CONTEXT_OPTION
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Run folder: results.json, results.md, retention.png, journal/.")
@click.option("--no-resume", is_flag=True, help="Refuse to continue an interrupted run in --out.")
def eval_command(model_name, chain_path, data, data_format, data_option, protocols, schedule, limit, mode, batch_size,
                 retention_sample, max_new_tokens, judge, fluency, dtype, context, out_dir, no_resume) -> None:
    """Apply a chain to a dataset's edit requests, measure them under each protocol, and write a
    report (JSON, Markdown table, retention plot) to --out. An interrupted run resumes from its
    journal when started again with the same arguments."""
    from rich.console import Console

    from easyetcon.cli import command_line, exit_interrupted, parse_data_options, prompt_format_of
    from easyetcon.dataset_files import load_requests_from
    from easyetcon.model import load_model
    from easyetcon.spec import load_chain_spec
    from easyetcon_eval.lifelong import LifelongInterrupted, parse_schedule, run_lifelong

    console = Console()
    parse_schedule(schedule)  # fail before loading anything
    spec, chain = load_chain_spec(chain_path)
    requests = load_requests_from(data, data_format, limit=limit, options=parse_data_options(data_option))
    source = model_name or spec.model
    if not source:
        raise click.UsageError("no model: pass --model or set 'model:' in the chain spec")
    # Starting the same command again resumes; --no-resume would refuse the run this one began.
    resume_with = command_line(leave_out=["--no-resume"])
    try:
        model = load_model(source, dtype=dtype or spec.dtype, device_map=spec.device_map,
                           prompt_format=prompt_format_of(spec, context))
        console.print(f"loaded {type(model.torch_model).__name__} from {source}; {len(requests)} request(s); chain {chain!r}")
        result = run_lifelong(
            model, chain, requests, schedule=schedule, protocols=protocols or ("teacher-forced", "generation"),
            mode=mode or spec.mode, batch_size=batch_size or spec.batch_size, out_dir=out_dir,
            resume=not no_resume, retention_sample=retention_sample, max_new_tokens=max_new_tokens,
            judge=judge, fluency=fluency, progress=True, report=False,
        )
    except LifelongInterrupted as interrupt:
        exit_interrupted(
            f"{interrupt.edits} of {interrupt.total} edit(s) done and kept in {str(out_dir)!r}; "
            f"to resume from edit {min(interrupt.edits + 1, interrupt.total)}: {resume_with}"
        )
    except KeyboardInterrupt:
        exit_interrupted(f"stopped before the first edit; to start the run again: {resume_with}")
    from easyetcon_eval.reports import results_table, write_report

    metadata = {"model": source, "chain_spec": str(chain_path), "data": data, "requests": len(requests)}
    paths = write_report(out_dir, result, metadata=metadata)
    click.echo("\n".join(results_table(result.to_json(), rows_per_protocol=CONSOLE_POINTS)))
    click.echo(f"wrote {', '.join(str(p) for p in paths.values())}")


#: How many numbers of edits the table printed at the end of `eval` shows (results.md has all).
CONSOLE_POINTS = 12


@click.command("compare-runs")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Where comparison.md/png go (default: the first run's parent).")
@click.option("--label", "labels", multiple=True,
              help="A label per run (default: its chain, and its folder's name when runs share a chain).")
def compare_command(run_dirs, out_dir, labels) -> None:
    """Put the results of several `easyetcon eval` runs side by side (Markdown table + bar chart)."""
    from easyetcon_eval.reports import compare_runs

    if labels and len(labels) != len(run_dirs):
        raise click.UsageError(f"{len(labels)} --label value(s) for {len(run_dirs)} run folder(s)")
    png, md = compare_runs(run_dirs, out_dir, labels=list(labels) or None)
    click.echo(md.read_text(encoding="utf-8"))
    click.echo(f"wrote {md} and {png}")
