"""Hook implementations of the merging plugin: the merging-family editors, registered by
reference ("module:Class") so PEFT and torch load on first use."""

from __future__ import annotations

from typing import Any

from easyetcon.hookspecs import hookimpl


@hookimpl
def easyetcon_register_merging_editors(register) -> None:
    register(
        "lora-merge",
        "easyetcon_merging.lora_merge:LoraMerge",
        config="easyetcon_merging.lora_merge:LoraMergeConfig",
        subfamily="adapter-merge",
        summary="Trains a LoRA adapter per edit with PEFT and merges adapters into the weights (linear, TIES, DARE, magnitude pruning).",
    )


@hookimpl
def easyetcon_register_hparams_converters(register: Any) -> None:
    register("LoRA", "easyetcon_merging.hparams:convert_lora", summary="EasyEdit LoRA -> lora-merge (merged with weight 1)")
