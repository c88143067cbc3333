"""Hook implementations of the merging plugin: the merging-family editors."""

from __future__ import annotations

from easyetcon.hookspecs import hookimpl


@hookimpl
def easyetcon_register_merging_editors(register) -> None:
    from easyetcon_merging.lora_merge import LoraMerge, LoraMergeConfig

    register(
        "lora-merge",
        LoraMerge,
        config=LoraMergeConfig,
        subfamily="adapter-merge",
        summary="Trains a LoRA adapter per edit with PEFT and merges adapters into the weights (linear, TIES, DARE, magnitude pruning).",
    )
