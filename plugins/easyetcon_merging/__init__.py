"""easyetcon built-in plugin: merging (``lora-merge``).

.. code-block:: python

    from easyetcon import EditChain

    chain = EditChain([("lora-merge", {"strategy": "ties", "density": 0.5, "merge_every": 10})])
    result = chain.apply(model, requests, mode="sequential")
    result.undo(model)   # bit-exact, whatever the strategy

The merge functions are usable on their own: :func:`train_lora_adapter` and
:func:`merge_adapters`.
"""

from __future__ import annotations

from easyetcon.lazy import lazy_exports

# Names are imported on first use (PEP 562): the plugin host imports this package to list
# commands, and that must not pay for torch.
_EXPORTS = {
    "MIN_PEFT_VERSION": "easyetcon_merging.lora_merge",
    "STRATEGIES": "easyetcon_merging.lora_merge",
    "LoraAdapter": "easyetcon_merging.lora_merge",
    "LoraMerge": "easyetcon_merging.lora_merge",
    "LoraMergeConfig": "easyetcon_merging.lora_merge",
    "MergeError": "easyetcon_merging.lora_merge",
    "check_mergeable": "easyetcon_merging.lora_merge",
    "merge_adapters": "easyetcon_merging.lora_merge",
    "train_lora_adapter": "easyetcon_merging.lora_merge",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
