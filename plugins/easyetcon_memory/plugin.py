"""Hook implementations of the memory plugin: the external-memory editors."""

from __future__ import annotations

from easyetcon.hookspecs import hookimpl


@hookimpl
def easyetcon_register_memory_editors(register) -> None:
    from easyetcon_memory.grace import Grace, GraceConfig
    from easyetcon_memory.retrieval import RetrievalMemory, RetrievalMemoryConfig

    register(
        "retrieval-memory",
        RetrievalMemory,
        config=RetrievalMemoryConfig,
        subfamily="retrieval",
        summary="Stores edits with sentence embeddings and puts in-scope facts in front of prompts (in-context editing).",
    )
    register(
        "grace",
        Grace,
        config=GraceConfig,
        subfamily="codebook",
        summary="GRACE: a codebook of keys, trained values and radii that replaces one layer's output in range.",
    )
