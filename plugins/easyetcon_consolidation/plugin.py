"""Hook implementations of the consolidation plugin: TPSFT, GRPO and the edit rewards."""

from __future__ import annotations

from typing import Any

from easyetcon.hookspecs import hookimpl

# The editors' modules import torch: they load when the registry is built, not when the plugin
# is (so `easyetcon --help` stays fast).


@hookimpl
def easyetcon_register_consolidators(register: Any) -> None:
    from easyetcon_consolidation.grpo import GRPOConsolidation, GRPOConsolidationConfig
    from easyetcon_consolidation.tpsft import TPSFT, TPSFTConfig

    register(
        "tpsft",
        TPSFT,
        config=TPSFTConfig,
        subfamily="proximal-SFT",
        summary="EtCon's edit stage: trust-region (clipped-ratio) fine-tuning of selected FFN weights.",
    )
    register(
        "grpo",
        GRPOConsolidation,
        config=GRPOConsolidationConfig,
        subfamily="RL",
        summary="EtCon's consolidation: GRPO (TRL) with correctness/format/cleanliness/consistency rewards.",
    )


@hookimpl
def easyetcon_register_rewards(register: Any) -> None:
    from easyetcon_consolidation.rewards import BUILTIN_REWARDS

    for name, (function, summary) in BUILTIN_REWARDS.items():
        register(name, function, summary=summary)
