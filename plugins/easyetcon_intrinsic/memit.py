"""MEMIT: many edits at once, spread over several MLP layers (Meng et al., ICLR 2023).

For a batch of requests and layers ``l_1 < … < l_m`` (the last one ``L``):

1. For each request, optimise ``δ_i``, a change of the residual stream after layer ``L`` at the
   subject's last token, so the target becomes likely (:mod:`easyetcon.locate.values`); the target hidden
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

Both steps are :class:`easyetcon.locate.EditSites`' (``hidden_targets``, ``spread``), shared
with AlphaEdit. The layers, the prefixes and ``C`` are derived from the unedited model once, in
``prepare`` (:class:`easyetcon.locate.LocateThenEdit`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from pydantic import Field

from easyetcon.locate import EditSites, LocateThenEdit, SpanConfig, ValueOptions, with_defaults
from easyetcon.locate.solve import FactorisationCache, FactoredCovariance, least_squares_factors

MemitValueOptions = with_defaults(ValueOptions, clamp_norm_factor=0.75)


class MemitConfig(SpanConfig):
    """Options of ``memit``. Defaults follow the paper's GPT-J settings where they are scale-free."""

    value: MemitValueOptions = Field(default_factory=MemitValueOptions, description="how the target hidden states are optimised")
    covariance_weight: float = Field(default=15000.0, ge=0, description="λ in Δ = R Kᵀ (λ C + K Kᵀ)⁻¹")


class Memit(LocateThenEdit):
    """The ``memit`` editor. Keeps, per model, its layers, prefixes and factorised key statistics."""

    def __init__(self, config: MemitConfig) -> None:
        super().__init__(config)
        self.factorisations = FactorisationCache()

    def covariance(self, model: Any, layer: int) -> FactoredCovariance:
        """``λ C`` of the layer, factorised once per model (each edit is then ``O(d² n)``, by Woodbury)."""
        return self.factorisations.get(model, layer, self.statistics, weight=self.config.covariance_weight)

    prepare_layer = covariance

    def edit(self, model: Any, requests: Sequence[Any]) -> None:
        sites = self.locate(model, requests)
        # 1. the hidden state after the last edited layer that states each target
        targets = sites.hidden_targets(self.config.value)
        self.insert(model, sites, targets)

    def insert(self, model: Any, sites: EditSites, targets: torch.Tensor) -> None:
        """Step 2: write the located requests' target hidden states (``targets``, ``(n, d)``)."""
        # spread the missing residual over the layers, each solved by least squares
        for layer, keys, residuals in sites.spread(targets):
            covariance = self.covariance(model, layer)
            left, right = least_squares_factors(keys, residuals, covariance, self.config.covariance_weight)
            sites.write(layer, left, right)
