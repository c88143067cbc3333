"""Hook implementations of the consolidation plugin: TPSFT, GRPO and the edit rewards."""

from __future__ import annotations

from typing import Any

from easyetcon.hookspecs import hookimpl

# The editors are registered by reference ("module:Class"): their modules import torch and TRL,
# and load when an editor is first used, so listing the plugins stays fast.


@hookimpl
def easyetcon_register_consolidators(register: Any) -> None:
    register(
        "tpsft",
        "easyetcon_consolidation.tpsft:TPSFT",
        config="easyetcon_consolidation.tpsft:TPSFTConfig",
        subfamily="proximal-SFT",
        summary="EtCon's edit stage: trust-region (clipped-ratio) fine-tuning of selected FFN weights.",
    )
    register(
        "grpo",
        "easyetcon_consolidation.grpo:GRPOConsolidation",
        config="easyetcon_consolidation.grpo:GRPOConsolidationConfig",
        subfamily="RL",
        summary="EtCon's consolidation: GRPO (TRL) with correctness/format/cleanliness/consistency rewards.",
    )


@hookimpl
def easyetcon_register_rewards(register: Any) -> None:
    from easyetcon_consolidation.rewards import BUILTIN_REWARDS

    for name, (function, summary) in BUILTIN_REWARDS.items():
        register(name, function, summary=summary)
