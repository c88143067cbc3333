"""easyetcon built-in plugin: external memory (``retrieval-memory`` and ``grace``).

.. code-block:: python

    from easyetcon import EditChain
    from easyetcon_memory import calibrate_threshold, relation_examples_from, save_memory, load_memory

    calibration = calibrate_threshold(tune_requests)          # threshold from rephrases vs locality
    chain = EditChain([("retrieval-memory", {"threshold": calibration.threshold})])
    chain.apply(model, requests)
    model.generate(["..."])                                   # in-scope prompts get the new fact
    save_memory("memory/", model, chain.steps[0])             # and load_memory("memory/", model)
"""

from easyetcon_memory.grace import Grace, GraceConfig, RadiusCalibration, calibrate_radius
from easyetcon_memory.retrieval import (
    Match,
    RetrievalMemory,
    RetrievalMemoryConfig,
    RetrieverFallbackWarning,
    ScopeCalibration,
    calibrate_threshold,
    embeddings_available,
    mask_subject,
    relation_examples_from,
)
from easyetcon_memory.scope import CutoffChoice, sweep_cutoff
from easyetcon_memory.storage import EmptyMemoryError, load_memory, read_store, save_memory, save_store

__all__ = [
    "CutoffChoice",
    "EmptyMemoryError",
    "Grace",
    "GraceConfig",
    "Match",
    "RadiusCalibration",
    "RetrievalMemory",
    "RetrievalMemoryConfig",
    "RetrieverFallbackWarning",
    "ScopeCalibration",
    "calibrate_radius",
    "calibrate_threshold",
    "embeddings_available",
    "load_memory",
    "mask_subject",
    "read_store",
    "relation_examples_from",
    "save_memory",
    "save_store",
    "sweep_cutoff",
]
