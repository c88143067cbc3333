"""EasyEdit's LoRA hparams files as options of ``lora-merge`` (see :mod:`easyetcon.hparams`)."""

from __future__ import annotations

from typing import Any

from easyetcon.hparams import Conversion, module_kind, number


def convert_lora(hparams: dict[str, Any]) -> Conversion:
    """LoRA: one adapter per edit, merged into the weights with weight 1 (EasyEdit keeps it attached)."""
    conversion = Conversion("lora-merge")
    get = hparams.get
    if isinstance(get("layers"), list) and get("layers"):
        conversion.set("layers", "layers", list(get("layers")))
    elif "layers" in hparams:
        conversion.skip("layers", "[]: adapters on every layer, easyetcon's default")
    for key, path, cast in (("rank", "rank", int), ("lora_alpha", "alpha", float), ("num_steps", "steps", int), ("lr", "learning_rate", float)):
        if number(get(key)) is not None:
            conversion.set(key, path, cast(number(get(key))))
    targets = get("target_modules") or []
    kinds = [module_kind(name) for name in targets]
    if targets and None not in kinds:
        conversion.set("target_modules", "modules", sorted(set(kinds)))
    elif targets:
        unknown = [name for name, kind in zip(targets, kinds) if kind is None]
        conversion.skip("target_modules", f"{unknown}: easyetcon's adapters sit on MLP projections and the attention output only")
    if get("lora_type") not in (None, "lora"):
        conversion.skip("lora_type", f"{get('lora_type')!r}: easyetcon trains plain LoRA adapters (PEFT) and merges them")
    elif "lora_type" in hparams:
        conversion.skip("lora_type", "plain LoRA, as here")
    conversion.skip_present(hparams, {
        "lora_dropout": "adapters train without dropout",
        "batch_size": "each adapter trains on its own edit",
        "max_length": "prompts and targets are not truncated",
        "weight_decay": "Adam without weight decay",
        "kl_factor": "no KL term",
        "norm_constraint": "no L∞ bound on adapters",
    })
    return conversion
