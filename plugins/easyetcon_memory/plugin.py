"""Hook implementations of the memory plugin: the external-memory editors, registered by
reference ("module:Class") so their modules (torch, sentence-transformers) load on first use."""

from __future__ import annotations

from typing import Any

from easyetcon.hookspecs import hookimpl


@hookimpl
def easyetcon_register_memory_editors(register) -> None:
    register(
        "retrieval-memory",
        "easyetcon_memory.retrieval:RetrievalMemory",
        config="easyetcon_memory.retrieval:RetrievalMemoryConfig",
        subfamily="retrieval",
        summary="Stores edits with sentence embeddings and puts in-scope facts in front of prompts (in-context editing).",
    )
    register(
        "ike",
        "easyetcon_memory.ike:Ike",
        config="easyetcon_memory.ike:IkeConfig",
        subfamily="in-context",
        summary="IKE: k retrieved demonstrations (copy, update, retain) and the nearest new fact in front of every prompt.",
    )
    register(
        "serac",
        "easyetcon_memory.serac:Serac",
        config="easyetcon_memory.serac:SeracConfig",
        subfamily="scope-classifier",
        summary="SERAC: a trained scope classifier sends in-scope queries to the model with the edit stated in front.",
    )
    register(
        "grace",
        "easyetcon_memory.grace:Grace",
        config="easyetcon_memory.grace:GraceConfig",
        subfamily="codebook",
        summary="GRACE: a codebook of keys, trained values and radii that replaces one layer's output in range.",
    )
    register(
        "wise",
        "easyetcon_memory.wise:Wise",
        config="easyetcon_memory.wise:WiseConfig",
        subfamily="side-memory",
        summary="WISE: edits trained into masked shards of a side copy of one FFN value matrix, merged TIES-style; "
        "a router sends inputs whose activation score passes a threshold through it.",
    )


@hookimpl
def easyetcon_register_hparams_converters(register: Any) -> None:
    register("GRACE", "easyetcon_memory.hparams:convert_grace", summary="EasyEdit GRACE -> grace")
    register("IKE", "easyetcon_memory.hparams:convert_ike", summary="EasyEdit IKE -> ike")
    register("WISE", "easyetcon_memory.hparams:convert_wise", summary="EasyEdit WISE -> wise")
