"""The intrinsic-editing family: FT-L, FT-M, ROME, MEMIT and AlphaEdit.

Each editor's algorithm reads top to bottom in its own module; the modules are imported when
the host loads this plugin, which only costs importing torch and pydantic (already loaded).
"""

from __future__ import annotations

from typing import Any

from easyetcon.hookspecs import hookimpl


@hookimpl
def easyetcon_register_intrinsic_editors(register: Any) -> None:
    from easyetcon_intrinsic.alphaedit import AlphaEdit, AlphaEditConfig
    from easyetcon_intrinsic.ft import FineTuneConfig, FineTuneLast, FineTuneMasked, FTMConfig
    from easyetcon_intrinsic.memit import Memit, MemitConfig
    from easyetcon_intrinsic.rome import Rome, RomeConfig

    register(
        "ft-l", FineTuneLast, config=FineTuneConfig, subfamily="fine-tuning",
        summary="FT-L: fine-tune MLP weights on the target scored at the last prompt position, optional L-inf bound.",
    )
    register(
        "ft-m", FineTuneMasked, config=FTMConfig, subfamily="fine-tuning",
        summary="FT-M: fine-tune MLP weights with a teacher-forced loss on the target tokens only, optional L-inf bound.",
    )
    register(
        "rome", Rome, config=RomeConfig, subfamily="locate-then-edit",
        summary="ROME: rank-one update of one MLP output projection; the same prefix-averaged key on both sides.",
    )
    register(
        "memit", Memit, config=MemitConfig, subfamily="locate-then-edit",
        summary="MEMIT: batch edits spread over several MLP layers, least squares against key statistics.",
    )
    register(
        "alphaedit", AlphaEdit, config=AlphaEditConfig, subfamily="locate-then-edit",
        summary="AlphaEdit: MEMIT-style update projected onto the null space of preserved keys' statistics.",
    )
