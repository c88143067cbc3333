"""EMMET: a batch of edits as equality constraints (Gupta et al. 2024, "A Unified Framework for Model Editing").

MEMIT asks each new key to come *close* to its value, traded against ``λ C`` by least squares.
EMMET, the batched form of ROME, asks for equality. For each layer in turn (MEMIT's steps 1-2:
target hidden states, then the residual spread over the layers, :class:`easyetcon.locate.EditSites`)
it takes the smallest change in the norm of the key statistics ``C`` that gives every new key its
residual share exactly:

    Δ = R (Kᵀ A⁻¹ K + μ I)⁻¹ Kᵀ A⁻¹,    A = C + ridge · (tr C / d) · I

so ``(W + Δ) K = W K + R`` when ``μ = 0``; for one request this is ROME's update. ``μ``
(``equality_ridge``, relative to the mean diagonal of ``Kᵀ A⁻¹ K``) steadies batches whose keys are
nearly dependent (EasyEdit's ``emmet_lambda``, made scale-free). ``A`` is factorised once per
layer in ``prepare`` and each edit solves it for the ``n`` keys only: ``O(d² n + n³)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from pydantic import Field

from easyetcon.locate import EditSites, LocateThenEdit, SpanConfig, ValueOptions, with_defaults
from easyetcon.locate.solve import FactorisationCache, FactoredCovariance

EmmetValueOptions = with_defaults(ValueOptions, clamp_norm_factor=0.75)


class EmmetConfig(SpanConfig):
    """Options of ``emmet``. Value defaults as MEMIT's (the paper builds on its code)."""

    value: EmmetValueOptions = Field(default_factory=EmmetValueOptions, description="how the target hidden states are optimised")
    ridge: float = Field(default=1e-4, ge=0, description="C + ridge·(tr C/d)·I, so C is invertible")
    equality_ridge: float = Field(
        default=1e-3, ge=0,
        description="μ in (Kᵀ A⁻¹ K + μ·(tr/n)·I)⁻¹: 0 gives every key its value exactly; more steadies "
        "large batches of similar keys",
    )


def equality_factors(
    keys: torch.Tensor, residuals: torch.Tensor, covariance: FactoredCovariance, equality_ridge: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``Δ = R (Kᵀ A⁻¹ K + μ I)⁻¹ Kᵀ A⁻¹`` as ``(left, right)``: ``R`` ``(out, n)`` and
    ``(Kᵀ A⁻¹ K + μ I)⁻¹ (A⁻¹ K)ᵀ`` ``(n, in)`` (``A`` is symmetric). ``keys`` ``(n, in)``,
    ``residuals`` ``(n, out)``; in fp64."""
    K = keys.double().T.to(covariance.device)
    solved = covariance.solve(K)  # A⁻¹ K, checked against A
    gram = K.T @ solved  # Kᵀ A⁻¹ K, (n, n)
    gram = gram + equality_ridge * float(gram.diagonal().mean()) * torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    right = torch.linalg.solve(gram, solved.T)
    return residuals.double().T.contiguous(), right.to(keys.device).contiguous()


class Emmet(LocateThenEdit):
    """The ``emmet`` editor. Keeps, per model, its layers, prefixes and factorised key statistics."""

    def __init__(self, config: EmmetConfig) -> None:
        super().__init__(config)
        self.factorisations = FactorisationCache()

    def covariance(self, model: Any, layer: int) -> FactoredCovariance:
        """``A = C + ridge`` of the layer, factorised once per model."""
        return self.factorisations.get(model, layer, self.statistics, ridge=self.config.ridge)

    prepare_layer = covariance

    def edit(self, model: Any, requests: Sequence[Any]) -> None:
        sites = self.locate(model, requests)
        targets = sites.hidden_targets(self.config.value)  # 1. the hidden states that state the targets
        self.insert(model, sites, targets)

    def insert(self, model: Any, sites: EditSites, targets: torch.Tensor) -> None:
        """Step 2: write the located requests' target hidden states (``targets``, ``(n, d)``)."""
        for layer, keys, residuals in sites.spread(targets):  # each layer's share, met exactly
            left, right = equality_factors(keys, residuals, self.covariance(model, layer), self.config.equality_ridge)
            sites.write(layer, left, right)
