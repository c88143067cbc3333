"""Hook implementations of the eval plugin: its metrics and the ``easyetcon eval`` commands."""

from __future__ import annotations

from typing import Any

from easyetcon.hookspecs import hookimpl


#: name: (the metric instance in easyetcon_eval.scoring, summary). By reference: scoring imports
#: torch, and listing the plugins should not.
METRICS = {
    "exact-match": ("EXACT_MATCH", "Generation judge: SQuAD-normalised exact match against the target and its aliases"),
    "token-accuracy": ("TOKEN_ACCURACY", "Teacher-forced token accuracy of the canonical answer (EasyEdit's number)"),
    "teacher-forced-exact-match": ("TEACHER_FORCED_EXACT_MATCH", "Teacher-forced: every answer token reproduced by argmax"),
    "fluency": ("FLUENCY", "Weighted 2/3-gram entropy of free greedy generation (ROME's fluency)"),
    "perplexity": ("PERPLEXITY", "Perplexity on held-out text (general ability)"),
}


@hookimpl
def easyetcon_register_metrics(register: Any) -> None:
    for name, (attribute, summary) in METRICS.items():
        register(name, f"easyetcon_eval.scoring:{attribute}", summary=summary)


@hookimpl
def easyetcon_register_commands(cli: Any) -> None:
    from easyetcon_eval.cli import compare_command, eval_command
    from easyetcon_eval.demo import demo_command

    cli.add_command(eval_command)
    cli.add_command(compare_command)
    cli.add_command(demo_command)
