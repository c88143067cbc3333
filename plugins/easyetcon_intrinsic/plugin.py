"""The intrinsic-editing family: FT-L, FT-M, LocFT-BF, ROME, MEMIT, NAMET, AlphaEdit, EMMET, AnyEdit, UltraEdit and MEND.

Each editor's algorithm reads top to bottom in its own module. They are registered by reference
("module:Class"): a module, and torch with it, is imported when its editor is first used.
"""

from __future__ import annotations

from typing import Any

from easyetcon.hookspecs import hookimpl


@hookimpl
def easyetcon_register_intrinsic_editors(register: Any) -> None:
    register(
        "ft-l", "easyetcon_intrinsic.ft:FineTuneLast", config="easyetcon_intrinsic.ft:FineTuneConfig", subfamily="fine-tuning",
        summary="FT-L: fine-tune MLP weights on the target scored at the last prompt position, optional L-inf bound.",
    )
    register(
        "ft-m", "easyetcon_intrinsic.ft:FineTuneMasked", config="easyetcon_intrinsic.ft:FTMConfig", subfamily="fine-tuning",
        summary="FT-M: fine-tune MLP weights with a teacher-forced loss on the target tokens only, optional L-inf bound.",
    )
    register(
        "locft-bf", "easyetcon_intrinsic.ft:FineTuneMasked", config="easyetcon_intrinsic.ft:LocFTBFConfig", subfamily="fine-tuning",
        summary="LocFT-BF: FT-M on one layer in shuffled mini-batches over several passes, targets ending with EOS.",
    )
    register(
        "rome", "easyetcon_intrinsic.rome:Rome", config="easyetcon_intrinsic.rome:RomeConfig", subfamily="locate-then-edit",
        summary="ROME: rank-one update of one MLP output projection; the same prefix-averaged key on both sides.",
    )
    register(
        "memit", "easyetcon_intrinsic.memit:Memit", config="easyetcon_intrinsic.memit:MemitConfig", subfamily="locate-then-edit",
        summary="MEMIT: batch edits spread over several MLP layers, least squares against key statistics.",
    )
    register(
        "namet", "easyetcon_intrinsic.memit:Memit", config="easyetcon_intrinsic.namet:NametConfig", subfamily="locate-then-edit",
        summary="NAMET: MEMIT with noise in the value optimisation (δ at left-padded positions), a linear norm anchor, per-prefix residuals.",
    )
    register(
        "alphaedit", "easyetcon_intrinsic.alphaedit:AlphaEdit", config="easyetcon_intrinsic.alphaedit:AlphaEditConfig", subfamily="locate-then-edit",
        summary="AlphaEdit: MEMIT-style update projected onto the null space of preserved keys' statistics.",
    )
    register(
        "emmet", "easyetcon_intrinsic.emmet:Emmet", config="easyetcon_intrinsic.emmet:EmmetConfig", subfamily="locate-then-edit",
        summary="EMMET: batched ROME, every new key's value met exactly over MEMIT's spread of layers.",
    )
    register(
        "anyedit", "easyetcon_intrinsic.anyedit:AnyEdit", config="easyetcon_intrinsic.anyedit:AnyEditConfig", subfamily="locate-then-edit",
        summary="AnyEdit: a long target edited chunk by chunk, each after the chunks before it, by MEMIT, AlphaEdit or EMMET.",
    )
    register(
        "ultraedit", "easyetcon_intrinsic.ultraedit:UltraEdit", config="easyetcon_intrinsic.ultraedit:UltraEditConfig",
        subfamily="closed-form",
        summary="UltraEdit: training- and subject-free ridge update from one backward pass, lifelong normalisation.",
    )
    register(
        "mend", "easyetcon_intrinsic.mend:Mend", config="easyetcon_intrinsic.mend:MendConfig", subfamily="meta-learning",
        summary="MEND: a hypernetwork trained on edit requests turns the edit's gradient into a low-rank update.",
    )


@hookimpl
def easyetcon_register_hparams_converters(register: Any) -> None:
    for alg_name, converter, summary in (
        ("ROME", "convert_rome", "EasyEdit ROME -> rome"),
        ("R-ROME", "convert_rome", "EasyEdit R-ROME -> rome (easyetcon's ROME is R-ROME's)"),
        ("MEMIT", "convert_memit", "EasyEdit MEMIT -> memit"),
        ("AlphaEdit", "convert_alphaedit", "EasyEdit AlphaEdit -> alphaedit"),
        ("EMMET", "convert_emmet", "EasyEdit EMMET -> emmet"),
        ("FT", "convert_ft", "EasyEdit FT -> ft-l (prompt_last) or ft-m (target_new)"),
        ("ULTRAEDIT", "convert_ultraedit", "EasyEdit UltraEdit -> ultraedit"),
    ):
        register(alg_name, f"easyetcon_intrinsic.hparams:{converter}", summary=summary)
