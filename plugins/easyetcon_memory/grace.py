"""grace: a codebook at one layer (GRACE, Hartvigsen et al., NeurIPS 2023).

The codebook is a list of entries ``(key, value, radius, label)`` attached to one module of the
model (by default the MLP output projection of a late layer):

* **key**: the module's *input* at the position that predicts a target token (the last prompt
  token for the first target token, then each target token in turn for multi-token targets);
* **value**: a vector trained so that, put in place of the module's *output* at that position,
  the model predicts the label (the target token) — trained with the target's NLL;
* **label**: the target token, with the target and the token's index in it (two entries agree
  only when all three do);
* **radius** (the paper's deferral radius ε): at inference every position's module input is
  compared with the keys; when the nearest key is within its radius, the module's output there
  is replaced by that entry's value, otherwise the layer runs untouched.

A new key is added with ``initial_radius`` unless it falls within ``radius + initial_radius``
of the nearest key. Then the radius **expands** to cover it when both carry the same label,
and on a **conflict** both radii **shrink** to half the distance so the balls no longer
overlap (an identical key with a new label replaces the old entry: the newest edit wins).

Entries live in the chain's :class:`~easyetcon.records.MemoryStore` (tensors ``key``,
``value``, ``radius``; data ``label``, ``token``, ``target``, ``subject``, ...), so undo, the
journal and :func:`easyetcon_memory.save_memory` work without anything GRACE-specific. GRACE
never changes a weight. Keys are tied to the exact context, so rephrased prompts rarely fall
within a radius: its generalization is known to be low.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from easyetcon.errors import ConfigError
from easyetcon.records import MemoryEntry, MemoryStore
from easyetcon.registry import format_field_errors
from easyetcon.requests import EditRequest
from easyetcon.text import build_target_batch
from easyetcon.training import masked_token_nll, trainable_only
from easyetcon_memory.scope import ScopeQuality, sweep_cutoff
from easyetcon_memory.storage import StoreCache

HOOKS_ATTRIBUTE = "_easyetcon_grace_hooks"  # on the hooked module: store name -> hook handle


class GraceConfig(BaseModel):
    """Options of ``grace``."""

    model_config = ConfigDict(extra="forbid")

    layer: int = Field(default=-1, description="which block's module holds the codebook (negative counts from the end)")
    module: Literal["mlp_out", "mlp_in", "attn_out"] = Field(
        default="mlp_out", description="the module whose input is the key and whose output a value replaces"
    )
    initial_radius: float = Field(default=1.0, gt=0, description="radius of a new key (Euclidean, in key space)")
    steps: int = Field(default=100, ge=1, le=10_000, description="Adam steps to train each edit's values")
    learning_rate: float = Field(default=1.0, gt=0, description="Adam learning rate for the values")
    stop_loss: float = Field(default=0.05, ge=0, description="stop training once the target NLL is below this")


@dataclass
class Codebook:
    """The store's entries stacked for the forward hook."""

    keys: torch.Tensor  # (n, key_dim)
    values: torch.Tensor  # (n, value_dim)
    radii: torch.Tensor  # (n,)
    ids: list[str]
    labels: list[int]
    on_device: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, ...]]

    @classmethod
    def build(cls, items: list[tuple[str, MemoryEntry]]) -> Codebook | None:
        if not items:
            return None
        return cls(
            torch.stack([e.tensors["key"].float() for _, e in items]),
            torch.stack([e.tensors["value"].float() for _, e in items]),
            torch.stack([e.tensors["radius"].float().reshape(()) for _, e in items]),
            [entry_id for entry_id, _ in items],
            [int(e.data["label"]) for _, e in items],
            {},
        )

    def tensors_for(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        if (device, dtype) not in self.on_device:
            self.on_device[(device, dtype)] = (
                self.keys.to(device), self.values.to(device=device, dtype=dtype), self.radii.to(device)
            )
        return self.on_device[(device, dtype)]

    def replace(self, inputs: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor | None:
        """``outputs`` with every position whose input lies within a key's radius replaced by
        that entry's value (the nearest key decides); ``None`` when nothing is in range."""
        keys, values, radii = self.tensors_for(outputs.device, outputs.dtype)
        flat = inputs.reshape(-1, inputs.shape[-1]).float().to(outputs.device)  # a hook sees inputs before accelerate moves them
        distance, nearest = torch.cdist(flat, keys).min(dim=1)
        hit = distance <= radii[nearest]
        if not bool(hit.any()):
            return None
        replaced = outputs.clone()
        flat_out = replaced.view(-1, replaced.shape[-1])
        flat_out[hit] = values[nearest[hit]]
        return replaced


class Grace:
    """The ``grace`` editor (see the module docstring)."""

    def __init__(self, config: GraceConfig) -> None:
        self.config = config
        self._codebooks: weakref.WeakKeyDictionary[MemoryStore, StoreCache] = weakref.WeakKeyDictionary()

    def _module(self, model: Any) -> torch.nn.Module:
        count = model.adapter.num_layers(model.torch_model)
        model.adapter.check_layer(model.torch_model, self.config.layer)
        return model.adapter.module(model.torch_model, self.config.module, self.config.layer % count)

    def codebook(self, store: MemoryStore) -> Codebook | None:
        """The store's entries stacked (cached until the store changes)."""
        return self._codebooks.setdefault(store, StoreCache()).get(store, Codebook.build)

    # ---- the MemoryEditor protocol -------------------------------------------------------------
    def attach(self, model: Any, store: MemoryStore) -> None:
        """Install the forward hook on the chosen module (replacing an earlier one for this store)."""
        module = self._module(model)

        def consult_codebook(_module: torch.nn.Module, inputs: tuple, output: Any) -> Any:
            if len(store) == 0 or not isinstance(output, torch.Tensor):
                return None
            book = self.codebook(store)
            return book.replace(inputs[0], output) if book is not None else None

        hooks = module.__dict__.setdefault(HOOKS_ATTRIBUTE, {})
        if store.name in hooks:
            hooks[store.name].remove()
        hooks[store.name] = module.register_forward_hook(consult_codebook)

    def edit(self, model: Any, store: MemoryStore, requests: Sequence[EditRequest]) -> None:
        """Add (or expand, or split) codebook entries so each request's target is predicted."""
        module = self._module(model)
        for request in requests:  # one at a time: later requests see earlier entries
            batch = build_target_batch(model.tokenizer, [model.format_prompt(request.prompt)], [request.target_new]).to(model.device)
            positions = batch.target_positions[0]
            keys, outputs = _capture(model, module, batch, positions)
            values = self._train_values(model, module, batch, positions, outputs)
            for offset, (key, value, label) in enumerate(zip(keys, values, batch.target_ids[0])):
                data = {
                    "label": int(label),
                    "token": model.tokenizer.decode([int(label)]),
                    "target": request.target_new,
                    "subject": request.subject,
                    "prompt": request.prompt,
                    "relation": request.relation,
                    "target_token_index": offset,
                    "request_id": request.request_id,
                }
                self.add_to_codebook(store, key, value, data)

    # ---- the algorithm -----------------------------------------------------------------------------
    def _train_values(
        self, model: Any, module: torch.nn.Module, batch: Any, positions: list[int], initial: torch.Tensor
    ) -> torch.Tensor:
        """Values that, put in place of the module's output at ``positions``, make the model
        predict the target tokens (teacher forcing, target NLL only)."""
        values = torch.nn.Parameter(initial.detach().clone().float())
        index = torch.tensor(positions, device=initial.device)

        def put_values(_module: torch.nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            replaced = output.clone()
            replaced[0, index] = values.to(output.dtype)
            return replaced

        handle = module.register_forward_hook(put_values)
        try:
            with trainable_only(model.torch_model, []):
                optimizer = torch.optim.Adam([values], lr=self.config.learning_rate)
                for _ in range(self.config.steps):
                    logits = model.torch_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
                    loss = masked_token_nll(logits, batch.labels)
                    if loss.item() < self.config.stop_loss:
                        break
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
        finally:
            handle.remove()
        return values.detach().cpu()

    def add_to_codebook(self, store: MemoryStore, key: torch.Tensor, value: torch.Tensor, data: dict[str, Any]) -> None:
        """Add ``key`` to the codebook, expanding or splitting the nearest entry's radius."""
        initial = self.config.initial_radius
        book = self.codebook(store)
        if book is None:
            store.add(data, _tensors(key, value, initial))
            return
        distances = torch.cdist(key.float()[None], book.keys, compute_mode="donot_use_mm_for_euclid_dist")[0]
        nearest = int(distances.argmin())
        distance = float(distances[nearest])
        radius = float(book.radii[nearest])
        entry_id = book.ids[nearest]
        if distance > radius + initial:  # far from every key: a new entry
            store.add(data, _tensors(key, value, initial))
        elif _agree(store.get(entry_id).data, data):  # agreeing edit: expand to cover the new key
            entry = store.get(entry_id)
            store.put(entry_id, MemoryEntry(entry.data, {**entry.tensors, "radius": _radius(max(radius, distance + initial))}))
        elif distance <= 1e-6:  # the same key with a new label: the newest edit wins
            store.remove(entry_id)
            store.add(data, _tensors(key, value, radius))
        else:  # conflict: shrink both balls to half the distance so they no longer overlap
            entry = store.get(entry_id)
            store.put(entry_id, MemoryEntry(entry.data, {**entry.tensors, "radius": _radius(distance / 2)}))
            store.add(data, _tensors(key, value, distance / 2))


def _agree(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Two entries agree when they produce the same token of the same target: a shared
    sub-word of different answers ("...port") is no agreement, or radii would grow without end."""
    return (old["label"], old.get("target"), old.get("target_token_index")) == (
        new["label"], new.get("target"), new.get("target_token_index")
    )


def _radius(value: float) -> torch.Tensor:
    return torch.tensor([value], dtype=torch.float32)


def _tensors(key: torch.Tensor, value: torch.Tensor, radius: float) -> dict[str, torch.Tensor]:
    return {"key": key.detach().float().cpu(), "value": value.detach().float().cpu(), "radius": _radius(radius)}


@torch.no_grad()
def _capture(model: Any, module: torch.nn.Module, batch: Any, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The module's inputs (keys) and outputs at ``positions`` of the first row of ``batch``."""
    seen: dict[str, torch.Tensor] = {}

    def record(_module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        seen["keys"] = inputs[0][0, positions].detach().float().cpu()
        seen["outputs"] = output[0, positions].detach()

    handle = module.register_forward_hook(record)
    try:
        model.torch_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    finally:
        handle.remove()
    return seen["keys"], seen["outputs"]


# ------------------------------------------------------------------------------------------
# Calibration
# ------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class RadiusCalibration(ScopeQuality):
    """The chosen ``initial_radius`` and how the codebook's scope does at it (before any edit
    changes a radius): ``recall``, the share of rephrase prompts whose key lies within the
    radius of their own edit's key and nearest to it; ``specificity``, the share of locality
    prompts whose key lies outside every edit key's radius; ``precision``, of the prompts
    within range, the share that are rephrases of the edit they hit."""

    radius: float


def calibrate_radius(
    model: Any,
    requests: Sequence[EditRequest],
    options: dict[str, Any] | GraceConfig | None = None,
    *,
    objective: Literal["balanced", "f1"] = "balanced",
    min_precision: float | None = None,
    min_specificity: float | None = None,
) -> RadiusCalibration:
    """Pick ``initial_radius`` for GRACE on ``model`` from ``requests`` (e.g. a tuning split).

    Keys are the chosen module's inputs at the last prompt token, as GRACE stores them for the
    first target token. A rephrase prompt should fall within the radius of its own edit's key
    (and nearer to it than to any other); a locality prompt should fall outside every edit
    key's radius. The radius with the best trade-off by ``objective`` is returned (see
    :func:`easyetcon_memory.scope.sweep_cutoff`). Only forward passes; the model is unchanged.
    """
    try:
        config = options if isinstance(options, GraceConfig) else GraceConfig.model_validate(options or {})
    except ValidationError as error:
        raise ConfigError("invalid grace options for calibration", format_field_errors(error)) from None
    module = Grace(config)._module(model)
    owners = [i for i, r in enumerate(requests) for _ in r.rephrase_prompts]
    rephrases = [p for r in requests for p in r.rephrase_prompts]
    locality = [probe.prompt for r in requests for probe in r.locality]
    if not rephrases or not locality:
        raise ConfigError(
            f"calibration needs rephrase prompts and locality prompts; got {len(rephrases)} and {len(locality)}"
        )
    edit_keys = last_token_keys(model, module, [r.prompt for r in requests])
    to_edits = torch.cdist(last_token_keys(model, module, rephrases), edit_keys)
    nearest = to_edits.min(dim=1)
    correct = nearest.indices == torch.tensor(owners)
    from_locality = torch.cdist(last_token_keys(model, module, locality), edit_keys).min(dim=1).values
    farthest = float(torch.cat([nearest.values, from_locality]).max()) + 1.0
    # a key hits when distance <= radius, i.e. -distance >= -radius: higher scores hit
    choice = sweep_cutoff(
        -nearest.values, correct, -from_locality, lower=-farthest, upper=-1e-6,
        objective=objective, min_precision=min_precision, min_specificity=min_specificity,
    )
    return RadiusCalibration(**choice.quality_as("radius", lambda cutoff: -cutoff))


@torch.no_grad()
def last_token_keys(model: Any, module: torch.nn.Module, prompts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
    """The module's input at each prompt's last token, the prompt as the model is asked it
    (float32, on the CPU)."""
    tokenizer = model.tokenizer
    side, tokenizer.padding_side = tokenizer.padding_side, "right"
    keys = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = [model.format_prompt(p) for p in prompts[start : start + batch_size]]
            batch = tokenizer(chunk, return_tensors="pt", padding=True).to(model.device)
            last = batch["attention_mask"].sum(dim=1) - 1
            seen: dict[str, torch.Tensor] = {}

            def record(_module: torch.nn.Module, inputs: tuple, _output: Any) -> None:
                seen["inputs"] = inputs[0]

            handle = module.register_forward_hook(record)
            try:
                model.torch_model(**batch)
            finally:
                handle.remove()
            keys.append(seen["inputs"][torch.arange(len(last)), last.to(seen["inputs"].device)].float().cpu())
    finally:
        tokenizer.padding_side = side
    return torch.cat(keys)
