"""easyetcon built-in plugin: merging (``lora-merge``).

.. code-block:: python

    from easyetcon import EditChain

    chain = EditChain([("lora-merge", {"strategy": "ties", "density": 0.5, "merge_every": 10})])
    result = chain.apply(model, requests, mode="sequential")
    result.undo(model)   # bit-exact, whatever the strategy

The merge functions are usable on their own: :func:`train_lora_adapter` and
:func:`merge_adapters`.
"""

from easyetcon_merging.lora_merge import (
    MIN_PEFT_VERSION,
    STRATEGIES,
    LoraAdapter,
    LoraMerge,
    LoraMergeConfig,
    MergeError,
    check_mergeable,
    merge_adapters,
    train_lora_adapter,
)

__all__ = [
    "MIN_PEFT_VERSION",
    "STRATEGIES",
    "LoraAdapter",
    "LoraMerge",
    "LoraMergeConfig",
    "MergeError",
    "check_mergeable",
    "merge_adapters",
    "train_lora_adapter",
]
