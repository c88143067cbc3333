"""MEMIT: many edits at once, spread over several MLP layers (Meng et al., ICLR 2023).

For a batch of requests and layers ``l_1 < … < l_m`` (the last one ``L``):

1. For each request, optimise ``δ_i``, a change of the residual stream after layer ``L`` at the
   subject's last token, so the target becomes likely (:mod:`.values`); the target hidden
   state is ``z_i = h_i + δ_i``.
2. For each layer ``l_j`` in turn: compute the keys ``K`` (inputs of ``mlp_out`` at the
   subjects' last tokens, averaged over prefixes) and the residuals still missing at ``L``,
   ``R = (z − h^L) / (m − j + 1)`` (each remaining layer takes an equal share), and solve the
   least-squares update against the key statistics ``C = E[k kᵀ]`` (the paper's eq. 14)

       Δ = R Kᵀ (λ C + K Kᵀ)⁻¹

   which gives the new keys their residual while keeping typical keys' values (``λ`` is
   ``covariance_weight``; ``λ C`` is factorised once per layer, and Woodbury makes each solve
   ``O(d² n)``). Later layers see the earlier layers' updates. Each update is written
   as its factors ``R`` and ``((λ C + K Kᵀ)⁻¹ K)ᵀ``: rank ``n``, never a ``d × d`` matrix.

The layers, the prefixes and ``C`` are derived from the model once, in :meth:`Memit.prepare`,
which the chain calls on the unedited model (and a resumed run on the freshly loaded one).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from easyetcon_intrinsic.covariance import LayerStatistics, StatisticsConfig, weights_hashed_once
from easyetcon_intrinsic.keys import activations_at, fact_keys, fact_positions, make_prefixes
from easyetcon_intrinsic.layers import default_span_size, resolve_layers
from easyetcon_intrinsic.solve import FactorisationCache, FactoredCovariance, add_to_weight, least_squares_factors
from easyetcon_intrinsic.values import ValueOptimisation, check_kl_prompts, optimise_value


class MemitConfig(BaseModel):
    """Options of ``memit``. Defaults follow the paper's GPT-J settings where they are scale-free."""

    model_config = ConfigDict(extra="forbid")

    layers: list[int] | Literal["auto", "trace"] = Field(
        default="auto",
        description="layers the update is spread over: indices, 'auto' (early-middle span from the model's "
        "depth) or 'trace' (the span with the largest causal effect on the first requests)",
    )
    fact_token: Literal["subject_last", "last"] = Field(
        default="subject_last",
        description="where keys are read and values written: the subject's last token (the papers) or the "
        "prompt's last token (ROME's 'last' strategy: specific to subject and relation)",
    )
    prefixes: int = Field(default=10, ge=0, le=100, description="prefix contexts keys and values are averaged over")
    prefix_length: int = Field(default=10, ge=1, le=64, description="tokens per generated prefix")
    prefix_source: Literal["generated", "fixed"] = "generated"
    steps: int = Field(default=25, ge=1, le=1000, description="optimisation steps for each target hidden state")
    learning_rate: float = Field(default=0.5, gt=0, description="Adam learning rate of δ")
    kl_factor: float = Field(default=0.0625, ge=0, description="weight of the KL term on the essence prompts")
    weight_decay: float = Field(
        default=0.01, ge=0, description="weight of (‖δ‖/‖h‖)² (scale-free; the papers' ‖δ‖/‖h‖² is ~0 at their scale)"
    )
    clamp_norm_factor: float = Field(default=0.75, gt=0, description="‖δ‖ is clamped to this × ‖h‖")
    stop_nll: float = Field(default=0.05, ge=0, description="stop optimising once the target NLL is below this")
    kl_prompts: list[str] = Field(
        default_factory=lambda: ["{subject} is a"], description="essence prompts; {subject} is filled in"
    )
    kl_continuation_tokens: int = Field(
        default=0, ge=0, le=256,
        description="0: KL at the end of each essence prompt (the paper); N: KL over the model's own N-token "
        "continuation of each, sentence by sentence, leaving out sentences that state the edited fact",
    )
    covariance_weight: float = Field(default=15000.0, ge=0, description="λ in Δ = R Kᵀ (λ C + K Kᵀ)⁻¹")
    statistics: StatisticsConfig = Field(default_factory=StatisticsConfig, description="where C comes from")

    @field_validator("layers")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("name at least one layer")
        return value

    _has_subject = field_validator("kl_prompts")(check_kl_prompts)


class Memit:
    """The ``memit`` editor. Keeps, per model, its layers, prefixes and key statistics."""

    def __init__(self, config: MemitConfig) -> None:
        self.config = config
        self.statistics = LayerStatistics(config.statistics)
        self.factorisations = FactorisationCache()
        self._layers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._prefixes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def layers(self, model: Any, requests: Sequence[Any]) -> list[int]:
        if model.torch_model not in self._layers:
            count = default_span_size(model.adapter.num_layers(model.torch_model))
            self._layers[model.torch_model] = resolve_layers(
                model, self.config.layers, requests, count=count, option="layers", fact_token=self.config.fact_token
            )
        return self._layers[model.torch_model]

    def prefixes(self, model: Any) -> list[str]:
        if model.torch_model not in self._prefixes:
            config = self.config
            self._prefixes[model.torch_model] = make_prefixes(model, config.prefixes, config.prefix_length, config.prefix_source)
        return self._prefixes[model.torch_model]

    def covariance(self, model: Any, layer: int) -> FactoredCovariance:
        """``λ C`` of the layer, factorised once per model (each edit is then ``O(d² n)``, by Woodbury)."""
        return self.factorisations.get(model, layer, self.statistics, weight=self.config.covariance_weight)

    def prepare(self, model: Any, requests: Sequence[Any]) -> None:
        """Choose the layers, make the prefixes, read ``C`` of each layer from ``model`` and
        factorise it (memoised per model)."""
        with weights_hashed_once(model):
            layers = self.layers(model, requests)
            self.prefixes(model)
            self.statistics.reserve(model, layers)  # one pass over the texts for all layers
            for layer in layers:
                self.covariance(model, layer)

    def weights_to_edit(self, model: Any, requests: Sequence[Any]) -> list[str]:
        return [model.adapter.weight_name("mlp_out", layer) for layer in self.layers(model, requests)]

    def edit(self, model: Any, requests: Sequence[Any]) -> None:
        for request in requests:
            request.require_subject_in_prompt()
        self.prepare(model, requests)  # a no-op after the chain's prepare; first use otherwise
        layers = self.layers(model, requests)
        prefixes = self.prefixes(model)
        last_block = model.adapter.blocks(model.torch_model)[layers[-1]]
        prompts = [r.prompt for r in requests]
        positions = fact_positions(
            model.tokenizer, prompts, [r.subject for r in requests], [r.request_id for r in requests], self.config.fact_token
        )

        # 1. the hidden state after the last edited layer that states each target
        settings = ValueOptimisation.from_config(self.config)
        values = [optimise_value(model, last_block, request, prefixes, settings) for request in requests]
        targets = torch.stack([value.original + value.delta for value in values])

        # 2. spread the missing residual over the layers, each solved by least squares
        for index, layer in enumerate(layers):
            keys = fact_keys(model, layer, requests, prefixes, self.config.fact_token)
            current = activations_at(model, last_block, prompts, positions, which="output")
            residuals = (targets - current) / (len(layers) - index)
            left, right = least_squares_factors(keys, residuals, self.covariance(model, layer), self.config.covariance_weight)
            add_to_weight(model, layer, left, right)
