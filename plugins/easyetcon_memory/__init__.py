"""easyetcon built-in plugin: external memory (``retrieval-memory``, ``ike``, ``serac``, ``grace`` and ``wise``).

.. code-block:: python

    from easyetcon import EditChain
    from easyetcon_memory import calibrate_threshold, relation_examples_from, save_memory, load_memory

    calibration = calibrate_threshold(tune_requests)          # threshold from rephrases vs locality
    chain = EditChain([("retrieval-memory", {"threshold": calibration.threshold})])
    chain.apply(model, requests)
    model.generate(["..."])                                   # in-scope prompts get the new fact
    save_memory("memory/", model, chain.steps[0])             # and load_memory("memory/", model)
"""

from __future__ import annotations

from easyetcon.lazy import lazy_exports

# Names are imported on first use (PEP 562): the plugin host imports this package to list
# commands, and that must not pay for torch.
_EXPORTS = {
    "Grace": "easyetcon_memory.grace",
    "GraceConfig": "easyetcon_memory.grace",
    "RadiusCalibration": "easyetcon_memory.grace",
    "calibrate_radius": "easyetcon_memory.grace",
    "Demonstration": "easyetcon_memory.ike",
    "Ike": "easyetcon_memory.ike",
    "IkeConfig": "easyetcon_memory.ike",
    "IkePrompt": "easyetcon_memory.ike",
    "demonstrations_of": "easyetcon_memory.ike",
    "Match": "easyetcon_memory.retrieval",
    "RetrievalMemory": "easyetcon_memory.retrieval",
    "RetrievalMemoryConfig": "easyetcon_memory.retrieval",
    "RetrieverFallbackWarning": "easyetcon_memory.retrieval",
    "ScopeCalibration": "easyetcon_memory.retrieval",
    "calibrate_threshold": "easyetcon_memory.retrieval",
    "embeddings_available": "easyetcon_memory.retrieval",
    "mask_subject": "easyetcon_memory.retrieval",
    "relation_examples_from": "easyetcon_memory.retrieval",
    "ScopeClassifier": "easyetcon_memory.serac",
    "Serac": "easyetcon_memory.serac",
    "SeracConfig": "easyetcon_memory.serac",
    "SeracDecision": "easyetcon_memory.serac",
    "read_serac_classifier": "easyetcon_memory.serac",
    "scope_examples": "easyetcon_memory.serac",
    "train_serac_classifier": "easyetcon_memory.serac",
    "CutoffChoice": "easyetcon_memory.scope",
    "sweep_cutoff": "easyetcon_memory.scope",
    "EmptyMemoryError": "easyetcon_memory.storage",
    "load_memory": "easyetcon_memory.storage",
    "read_store": "easyetcon_memory.storage",
    "save_memory": "easyetcon_memory.storage",
    "save_store": "easyetcon_memory.storage",
    "Wise": "easyetcon_memory.wise",
    "WiseConfig": "easyetcon_memory.wise",
    "ties_merge": "easyetcon_memory.wise",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
