"""The linear algebra of locate-then-edit updates, in fp64 whatever the model's dtype.

Weights are handled as ``W`` of shape ``(out, in)`` (the adapter's view, so GPT-2's transposed
Conv1D needs no special case): a key ``k`` (``in``) is mapped to a value ``W k`` (``out``).

Each update has two forms. ``*_factors`` returns ``Δ`` as ``left @ right`` with ``left`` ``(out, n)`` and ``right`` ``(n, in)``: what the
editors write with :func:`add_to_weight`, so neither the solve nor the journal handles a
``d × d`` matrix for an update of rank ``n``. ``*_update`` multiplies the factors out into the
dense ``Δ`` (fp64, ``out × in``), the paper's equation, which the tests check.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from easyetcon.errors import ConfigError

NullspaceRule = Literal["energy", "absolute"]


def regularised(covariance: torch.Tensor, ridge: float) -> torch.Tensor:
    """``C + ridge · (tr C / d) · I``: invertible even when few texts were seen, scale-free."""
    covariance = covariance.double()
    d = covariance.shape[0]
    scale = torch.trace(covariance) / d
    return covariance + ridge * scale * torch.eye(d, dtype=covariance.dtype, device=covariance.device)


def rank_one_update(
    key: torch.Tensor, residual: torch.Tensor, covariance: torch.Tensor | None = None, *, ridge: float = 0.0
) -> torch.Tensor:
    """ROME (Meng et al. 2022, eq. 2): ``Δ = r (C⁻¹k)ᵀ / (kᵀ C⁻¹ k)``.

    ``(W + Δ) k = W k + r`` exactly, and ``Δ`` has rank one. Without ``covariance`` the update
    is the minimum-norm one, ``r kᵀ / (kᵀ k)``.
    """
    left, right = rank_one_factors(key, residual, covariance, ridge=ridge)
    return left @ right


def rank_one_factors(
    key: torch.Tensor, residual: torch.Tensor, covariance: torch.Tensor | None = None, *, ridge: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`rank_one_update` as ``(left, right)``: ``left = r`` ``(out, 1)``, ``right = (C⁻¹k / kᵀC⁻¹k)ᵀ`` ``(1, in)``."""
    k = key.double()
    r = residual.double().to(k.device)
    u = k if covariance is None else torch.linalg.solve(regularised(covariance.to(k.device), ridge), k)
    return r[:, None], (u / torch.dot(u, k))[None, :]


def least_squares_update(
    keys: torch.Tensor, residuals: torch.Tensor, covariance: torch.Tensor, covariance_weight: float
) -> torch.Tensor:
    """MEMIT (Meng et al. 2023, eq. 14): ``Δ = R Kᵀ (λ C + K Kᵀ)⁻¹``.

    ``keys`` is ``(n, in)``, ``residuals`` ``(n, out)``. Δ minimises
    ``‖(W + Δ) K − (W K + R)‖² + λ n_C · E‖Δ k‖²`` over keys ``k`` with second moment ``C``:
    the new keys get their residuals while typical keys keep their values.
    """
    left, right = least_squares_factors(keys, residuals, covariance, covariance_weight)
    return left @ right


def least_squares_factors(
    keys: torch.Tensor, residuals: torch.Tensor, covariance: torch.Tensor, covariance_weight: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`least_squares_update` as ``(left, right)``: ``left = R`` ``(out, n)``,
    ``right = ((λ C + K Kᵀ)⁻¹ K)ᵀ`` ``(n, in)``, since ``Δ = (A⁻¹ K Rᵀ)ᵀ = R (A⁻¹ K)ᵀ``."""
    K = keys.double().T
    R = residuals.double().T.to(K.device)
    A = covariance_weight * covariance.double().to(K.device) + K @ K.T
    return R.contiguous(), torch.linalg.solve(A, K).T.contiguous()


def nullspace_projector(
    covariance: torch.Tensor,
    *,
    rule: NullspaceRule = "energy",
    energy_fraction: float = 0.99,
    threshold: float = 1e-2,
) -> torch.Tensor:
    """Projector ``P = Û Ûᵀ`` onto the directions the preserved keys (second moment ``C``) barely use.

    ``rule="energy"`` keeps as *preserved* the fewest top eigenvectors holding ``energy_fraction``
    of the spectrum's energy (sum of eigenvalues) and projects onto the rest: unchanged when the
    activations are rescaled. ``rule="absolute"`` projects onto eigenvectors with eigenvalue
    below ``threshold`` (AlphaEdit's original rule; it depends on the activation scale).
    """
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance.double())  # ascending
    eigenvalues = eigenvalues.clamp(min=0)
    if rule == "energy":
        descending = eigenvalues.flip(0)
        total = descending.sum()
        if total <= 0:
            return torch.eye(covariance.shape[0], dtype=torch.float64, device=covariance.device)
        cumulative = torch.cumsum(descending, 0) / total
        preserved = int(torch.searchsorted(cumulative, torch.tensor(energy_fraction, dtype=cumulative.dtype))) + 1
        preserved = min(preserved, len(eigenvalues))
        basis = eigenvectors[:, : len(eigenvalues) - preserved]
    elif rule == "absolute":
        basis = eigenvectors[:, eigenvalues < threshold]
    else:
        raise ConfigError(f"unknown null-space rule {rule!r}; choose 'energy' or 'absolute'")
    return basis @ basis.T


def projected_update(
    keys: torch.Tensor,
    residuals: torch.Tensor,
    projector: torch.Tensor,
    edited_moment: torch.Tensor | None = None,
    *,
    l2: float = 10.0,
    covariance: torch.Tensor | None = None,
    covariance_weight: float = 0.0,
) -> torch.Tensor:
    """AlphaEdit (Fang et al. 2025, eq. 9): ``Δ = R Kᵀ P (K_p K_pᵀ P + K Kᵀ P + α I)⁻¹``.

    Solved as in the paper's code, ``X = (P (K Kᵀ + K_p K_pᵀ) + α I)⁻¹ P K Rᵀ``, then ``Δ = (P X)ᵀ``:
    every row of Δ lies in the null space, so ``Δ k₀ ≈ 0`` for preserved keys ``k₀``.
    ``edited_moment`` is ``K_p K_pᵀ`` of earlier edits (kept by the editor between calls).
    ``covariance_weight`` ``λ > 0`` adds ``λ C`` to ``K Kᵀ + K_p K_pᵀ``: the preserved keys' small
    components *inside* the null space are then protected too, in proportion to their energy
    (MEMIT's penalty, restricted to the null space; ``λ = 0`` is the paper).
    """
    left, right = projected_factors(
        keys, residuals, projector, edited_moment, l2=l2, covariance=covariance, covariance_weight=covariance_weight
    )
    return left @ right


def projected_factors(
    keys: torch.Tensor,
    residuals: torch.Tensor,
    projector: torch.Tensor,
    edited_moment: torch.Tensor | None = None,
    *,
    l2: float = 10.0,
    covariance: torch.Tensor | None = None,
    covariance_weight: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`projected_update` as ``(left, right)``: ``left = R`` ``(out, n)``,
    ``right = (P A⁻¹ P K)ᵀ`` ``(n, in)``, since ``Δ = (P A⁻¹ P K Rᵀ)ᵀ`` (same ``A``, same arguments)."""
    K = keys.double().T
    R = residuals.double().T.to(K.device)
    P = projector.double().to(K.device)
    moment = K @ K.T
    if edited_moment is not None:
        moment = moment + edited_moment.double().to(K.device)
    if covariance is not None and covariance_weight > 0:
        moment = moment + covariance_weight * covariance.double().to(K.device)
    A = P @ moment + l2 * torch.eye(P.shape[0], dtype=P.dtype, device=P.device)
    return R.contiguous(), (P @ torch.linalg.solve(A, P @ K)).T.contiguous()


def add_to_weight(model: Any, layer: int, left: torch.Tensor, right: torch.Tensor) -> None:
    """``W ← W + left @ right`` on the layer's ``mlp_out`` weight, in fp64 and cast back to its dtype.

    ``left`` ``(out, r)`` and ``right`` ``(r, in)`` factor the update in the adapter's ``(out, in)``
    view. It is written with :meth:`EditableModel.add_low_rank`, so the chain can journal the two
    factors instead of the weight; for GPT-2's Conv1D, which stores ``Wᵀ``, that is ``rightᵀ @ leftᵀ``.
    """
    module = model.adapter.module(model.torch_model, "mlp_out", layer)
    in_features, out_features = model.adapter.in_out_features(module)
    if left.dim() != 2 or right.dim() != 2 or left.shape[1] != right.shape[0] or (left.shape[0], right.shape[1]) != (out_features, in_features):
        raise ValueError(
            f"update {tuple(left.shape)} @ {tuple(right.shape)} does not fit the (out, in) = "
            f"({out_features}, {in_features}) weight of layer {layer}"
        )
    if not (torch.isfinite(left).all() and torch.isfinite(right).all()):
        raise FloatingPointError(f"the update of layer {layer} is not finite; lower the learning rate or add a ridge")
    if model.adapter.is_transposed(module):
        left, right = right.T, left.T
    # contiguous factors: the journal stores them so, and replay must multiply the same layout
    model.add_low_rank(model.adapter.weight_name("mlp_out", layer), left.contiguous(), right.contiguous())
