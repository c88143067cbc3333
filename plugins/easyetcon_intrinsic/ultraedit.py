"""UltraEdit: a training-free, subject-free closed-form update with lifelong normalisation (Gu et al. 2025).

For each edited linear module ``W`` (by default the MLP input projection of several middle
layers), one forward and one backward pass of the teacher-forced target loss give, at every
token of ``prompt + target`` (or, ``positions: target``, only the positions that predict a target token), the module's input
``k`` and the gradient ``g`` of the loss at its output. No subject is located and nothing is
optimised. Then

1. ``[k, g]`` rows update a **lifelong normaliser**: running mean and variance per feature over
   every edit so far (merged batch by batch in fp64), so the update's scale adapts as the edits'
   distribution drifts;
2. each row gets a pseudo value change from the normalised features ``k̂, ĝ``:
   ``v = − learning_rate · ‖k̂‖² · ĝ`` (a gradient step in the normalised space);
3. the update maps the raw keys to those values by ridge regression,
   ``Δ = argmin ‖K Δ − V‖² + λ ‖Δ‖²``, ``λ = ridge · mean(k²)`` (the paper's ``I`` for keys of unit
   scale, scale-free here), solved through the ``N × N`` system of the ``N`` rows:

       Δᵀ = Vᵀ (K Kᵀ + λ I)⁻¹ K

   and written as those two factors (rank ``N``), never as an ``in × out`` matrix.

Every module's update is computed from the same passes on the model as the call found it, then
all are written. The normaliser is the editor's carried state: per model and layer ``2 (in + out)``
fp64 numbers whatever the number of edits. Each step's journal holds the moments it added
(:meth:`UltraEdit.journal_state`) and a replay merges them again in order
(:meth:`UltraEdit.restore_state`), which rebuilds the same normaliser bit for bit. Undoing a step
does not remove its moments; use a new editor to start over.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from easyetcon.devices import execution_device
from easyetcon.errors import JournalError
from easyetcon.protocols import LastEditState
from easyetcon.locate.layers import resolve_layers
from easyetcon.locate.solve import add_to_weight
from easyetcon.text import build_target_batch
from easyetcon.training import masked_token_nll, trainable_only


class NoUpdateWarning(UserWarning):
    """UltraEdit's normaliser has seen fewer than two rows, so every normalised feature, and the update, is zero."""


class UltraEditConfig(BaseModel):
    """Options of ``ultraedit``. ``learning_rate`` is the paper's for 7-8B models; tune it for others."""

    model_config = ConfigDict(extra="forbid")

    layers: Annotated[list[int], Field(min_length=1)] | Literal["auto"] = Field(
        default="auto", description="edited layers: indices, or 'auto' (the middle ones: 0.35-0.75 of the depth)"
    )
    module: Literal["mlp_in", "mlp_out"] = Field(default="mlp_in", description="which linear module of each layer is edited")
    learning_rate: float = Field(default=1e-6, gt=0, description="step of the pseudo value change in the normalised space")
    ridge: float = Field(default=1.0, gt=0, description="λ = ridge · mean(k²) in the ridge regression of the update")
    positions: Literal["all", "target"] = Field(
        default="all",
        description="rows read: every token of prompt + target (the paper's 'mask'), or only the positions that "
        "predict a target token (the prompt's last and the target's but its last)",
    )
    chunk_size: int = Field(default=16, ge=1, description="requests per forward and backward pass")


@dataclass
class Moments:
    """Count, mean and summed squared deviations (``m2``) of feature rows, fp64."""

    count: torch.Tensor
    mean: torch.Tensor
    m2: torch.Tensor

    @classmethod
    def of(cls, rows: torch.Tensor) -> Moments:
        rows = rows.double()
        mean = rows.mean(0)
        return cls(torch.tensor([float(len(rows))], dtype=torch.float64, device=rows.device), mean, ((rows - mean) ** 2).sum(0))

    def merge(self, other: Moments) -> Moments:
        """Both sets of rows at once (Chan et al.'s pairwise update)."""
        count = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / count)
        return Moments(count, mean, self.m2 + other.m2 + delta**2 * (self.count * other.count / count))

    def normalise(self, rows: torch.Tensor) -> torch.Tensor:
        std = (self.m2 / (self.count - 1).clamp(min=1)).sqrt()
        return (rows.double() - self.mean) / (std + torch.finfo(torch.float32).eps)


def keys_and_gradients(model: Any, modules: dict[Any, torch.nn.Module], batch: Any, positions: str) -> dict[Any, tuple[torch.Tensor, torch.Tensor]]:
    """Per key of ``modules`` (a layer here, a (kind, layer) site in MEND), the module's inputs and the target loss's gradient at its outputs, at the read
    positions: fp32 ``(rows, in)`` and ``(rows, out)``. A zero probe added to each output carries
    the gradient, so no weight needs one."""
    inputs: dict[int, torch.Tensor] = {}
    probes: dict[int, torch.Tensor] = {}

    def hook_for(layer: int):
        def hook(_module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            inputs[layer] = args[0].detach().to(output.device)  # a hook sees inputs before accelerate moves them
            probes[layer] = torch.zeros_like(output, requires_grad=True)
            return output + probes[layer]
        return hook

    handles = [module.register_forward_hook(hook_for(layer)) for layer, module in modules.items()]
    try:
        with trainable_only(model.torch_model, []):  # weights frozen, dropout off
            logits = model.torch_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            gradients = torch.autograd.grad(masked_token_nll(logits, batch.labels), [probes[layer] for layer in modules])
    finally:
        for handle in handles:
            handle.remove()
    if positions == "target":  # the positions whose logits predict a target token
        read = torch.zeros_like(batch.attention_mask, dtype=torch.bool)
        for row, columns in enumerate(batch.target_positions):
            read[row, columns] = True
    else:
        read = batch.attention_mask.bool()
    rows = {}
    for layer, gradient in zip(modules, gradients):  # on each layer's device (the mask is where the token ids are)
        on_layer = read.to(gradient.device)
        rows[layer] = (inputs[layer][on_layer].float(), gradient[on_layer].float())
    return rows


def ridge_factors(keys: torch.Tensor, values: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``Δᵀ = Vᵀ (K Kᵀ + λ I)⁻¹ K`` with ``λ = ridge · mean(k²)``, as ``(Vᵀ, (K Kᵀ + λ I)⁻¹ K)``: the
    ridge regression of ``V`` on ``K`` (``(KᵀK + λI)⁻¹ KᵀV``) by the push-through identity, in fp64."""
    K, V = keys.double(), values.double()
    gram = K @ K.T
    gram.diagonal().add_(ridge * float((K**2).mean()))
    return V.T.contiguous(), torch.linalg.solve(gram, K).contiguous()


class UltraEdit:
    """The ``ultraedit`` editor. Keeps, per model, its layers and each layer's lifelong normaliser."""

    def __init__(self, config: UltraEditConfig) -> None:
        self.config = config
        self._layers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._moments: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {layer: Moments}
        self._last_added = LastEditState("ultraedit")  # the moments of the last edit, {layer: Moments}

    def layers(self, model: Any) -> list[int]:
        if model.torch_model not in self._layers:
            depth = model.adapter.num_layers(model.torch_model)
            choice = self.config.layers
            if choice == "auto":
                choice = list(range(round(0.35 * depth), min(depth - 1, round(0.75 * depth)) + 1))
            self._layers[model.torch_model] = resolve_layers(model, choice, [], count=len(choice), option="layers")
        return self._layers[model.torch_model]

    def prepare(self, model: Any, requests: Sequence[Any]) -> None:
        self.layers(model)

    def weights_to_edit(self, model: Any, requests: Sequence[Any]) -> list[str]:
        return [model.adapter.weight_name(self.config.module, layer) for layer in self.layers(model)]

    def edit(self, model: Any, requests: Sequence[Any]) -> None:
        config, layers = self.config, self.layers(model)
        modules = {layer: model.adapter.module(model.torch_model, config.module, layer) for layer in layers}
        keys: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
        gradients: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
        for start in range(0, len(requests), config.chunk_size):
            chunk = requests[start : start + config.chunk_size]
            batch = build_target_batch(model.tokenizer, [model.format_prompt(r.prompt) for r in chunk], [r.target_new for r in chunk]).to(model.device)
            for layer, (k, g) in keys_and_gradients(model, modules, batch, config.positions).items():
                keys[layer].append(k)
                gradients[layer].append(g)
        # every row's [k, g], once per layer: the normaliser's input and what it normalises
        rows = {layer: torch.cat([torch.cat(keys[layer]), torch.cat(gradients[layer])], -1) for layer in layers}
        # 1. the normaliser takes in this call's rows before it normalises them
        added = {layer: Moments.of(rows[layer]) for layer in layers}
        self._add_moments(model, [r.request_id for r in requests], added)
        if float(self._moments[model.torch_model][layers[0]].count) < 2:
            warnings.warn(
                f"ultraedit: request(s) {', '.join(str(r.request_id) for r in requests[:5])} gave the normaliser its only "
                f"row so far, and one row normalises to zero: this edit changes nothing. Read every token "
                f"(positions: all) or edit several requests at once",
                NoUpdateWarning,
                stacklevel=2,
            )
        updates = {}
        for layer in layers:
            width = keys[layer][0].shape[1]
            normalised_keys, normalised_gradients = self._moments[model.torch_model][layer].normalise(rows[layer]).split(
                [width, rows[layer].shape[1] - width], -1
            )
            # 2. the pseudo value change of every row, 3. the ridge regression onto the raw keys
            values = -config.learning_rate * (normalised_keys**2).sum(-1, keepdim=True) * normalised_gradients
            updates[layer] = ridge_factors(rows[layer][:, :width].contiguous(), values, config.ridge)
        for layer, (left, right) in updates.items():  # computed on the model as the call found it
            add_to_weight(model, layer, left, right, kind=config.module)

    def _add_moments(self, model: Any, request_ids: list[Any], added: dict[int, Moments]) -> None:
        """The one place :meth:`edit` and :meth:`restore_state` change the normalisers, so a replay
        performs the same fp64 merges in the same order."""
        running = self._moments.setdefault(model.torch_model, {})
        for layer, moments in added.items():
            running[layer] = running[layer].merge(moments) if layer in running else moments
        self._last_added.remember(model, request_ids, added)

    def journal_state(self, model: Any, requests: Sequence[Any]) -> dict[str, torch.Tensor]:
        """The moments the last :meth:`edit` of ``requests`` merged in: ``moments.<layer>.{count,mean,m2}``, fp64."""
        added = self._last_added.recall(model, requests)
        return {
            f"moments.{layer}.{part}": getattr(moments, part).detach().cpu()
            for layer, moments in added.items() for part in ("count", "mean", "m2")
        }

    def restore_state(self, model: Any, requests: Sequence[Any], state: dict[str, torch.Tensor]) -> None:
        """Merge a replayed step's moments into the normalisers, as its :meth:`edit` did (call in journal order)."""
        layers = self.layers(model)
        expected = {f"moments.{layer}.{part}" for layer in layers for part in ("count", "mean", "m2")}
        ids = ", ".join(str(r.request_id) for r in requests[:5])
        if set(state) != expected:
            raise JournalError(
                f"ultraedit's journal state for request(s) {ids} holds {sorted(state)}, expected {sorted(expected)}: "
                f"the journal was written with other layers or is damaged"
            )
        added = {}
        for layer in layers:
            module = model.adapter.module(model.torch_model, self.config.module, layer)
            width = sum(model.adapter.in_out_features(module))
            count, mean, m2 = (state[f"moments.{layer}.{part}"] for part in ("count", "mean", "m2"))
            shapes_fit = tuple(count.shape) == (1,) and tuple(mean.shape) == tuple(m2.shape) == (width,)
            if not shapes_fit or any(t.dtype != torch.float64 or not torch.isfinite(t).all() for t in (count, mean, m2)) or float(count) < 1:
                raise JournalError(
                    f"ultraedit's journal state moments.{layer} for request(s) {ids} is not the fp64 count (1,), "
                    f"mean and m2 ({width},) of a {self.config.module} module: the journal is damaged"
                )
            device = execution_device(module)  # where edit() makes them
            added[layer] = Moments(count.to(device), mean.to(device), m2.to(device))
        self._add_moments(model, [r.request_id for r in requests], added)
