"""Hook implementations of the eval plugin: its metrics and the ``easyetcon eval`` commands."""

from __future__ import annotations

from typing import Any

from easyetcon.hookspecs import hookimpl


@hookimpl
def easyetcon_register_metrics(register: Any) -> None:
    from easyetcon_eval.scoring import METRICS

    for name, (metric, summary) in METRICS.items():
        register(name, metric, summary=summary)


@hookimpl
def easyetcon_register_commands(cli: Any) -> None:
    from easyetcon_eval.cli import compare_command, eval_command

    cli.add_command(eval_command)
    cli.add_command(compare_command)
