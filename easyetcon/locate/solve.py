"""The linear algebra of locate-then-edit updates.

Weights are handled as ``W`` of shape ``(out, in)`` (the adapter's view, so GPT-2's transposed
Conv1D needs no special case): a key ``k`` (``in``) is mapped to a value ``W k`` (``out``).

Each update has two forms. ``*_factors`` returns ``Δ`` as ``left @ right`` with ``left`` ``(out, n)`` and ``right`` ``(n, in)``: what the
editors write with :func:`add_to_weight`, so neither the solve nor the journal handles a
``d × d`` matrix for an update of rank ``n``. ``*_update`` multiplies the factors out into the
dense ``Δ`` (fp64, ``out × in``), the paper's equation, which the tests check.

Cost at real widths. Nothing ``O(d³)`` runs per edit: the key statistics are factorised once
per layer (:class:`FactoredCovariance`, a Cholesky factor kept in place of the statistics),
MEMIT's ``(λC + KKᵀ)⁻¹K`` follows from it by the Woodbury identity, and AlphaEdit keeps the
inverse of its growing system, in null-space coordinates (``r × r``), up to date with a
rank-``n`` Woodbury step per edit (:class:`NullSpaceSolver`). Each edit is then ``O(d² n)``.

Precision and memory. ROME and MEMIT keep one ``d × d`` fp32 matrix per layer, the Cholesky
factor ``L`` of ``A = w·C + shift·I``, and not ``C`` itself: a solve is two fp32 triangular
solves (at ``d`` = 8192 about 15 ms on one thread). The factor is certified once, in
``prepare``, while ``C`` is still at hand: the normwise backward error
``‖b − A x‖ / (‖A‖_F ‖x‖ + ‖b‖)`` of its solves, computed in fp64 against ``C`` on probe
vectors, must be below :data:`BACKWARD_ERROR_TOLERANCE` (1e-6: ``x`` solves a system within a
millionth of ``A``, far inside the sampling error of statistics over a few thousand texts, and
near the fp32 rounding ``C`` is stored with). Every later solve is checked in fp32 against
``L Lᵀ`` (:data:`QUICK_CHECK_TOLERANCE`); triangular solves are backward stable, so that check
and the certificate together bound the backward error against ``A``. A ``C`` whose fp32 factor
fails the certificate gets an fp64 factor (certified the same way), and one that cannot be
factorised at all is kept densely in fp64 for dense solves: a badly conditioned ``C`` costs time
and memory, never accuracy. ROME's insertion ``(W + Δ) k = W k + r`` holds exactly for any
solution, since ``right = u / (uᵀk)``. AlphaEdit's running ``r × r`` inverse is fp64: it is updated
once per edit for thousands of edits, and rounding would accumulate. Its null space comes from a
certified fp32 eigendecomposition and is kept as fp64 Householder reflectors (:class:`Projector`).
"""

from __future__ import annotations

import weakref
from typing import Any, Literal

import torch

from easyetcon.errors import ConfigError

NullspaceRule = Literal["energy", "absolute"]

#: A solve is accepted when ``‖b − A x‖ ≤ tolerance · (‖A‖_F ‖x‖ + ‖b‖)`` (checked in fp64, per column).
BACKWARD_ERROR_TOLERANCE = 1e-6
#: The fp32 check of a fast-path solve: the same backward error, computed in fp32, whose own
#: rounding (about √d · 6e-8 in practice) stays well below it.
QUICK_CHECK_TOLERANCE = 1e-5
#: Rows of ``C`` multiplied at a time in fp64 checks (bounds the transient fp64 copy).
CHECK_BLOCK_ROWS = 1024
#: An fp32 eigendecomposition is kept when ``‖C u − λ u‖ / ‖C‖₂`` and ``|‖u‖ − 1|`` stay below
#: this on :data:`EIGEN_PROBES` eigenvectors (fp32 ``syevd``: 2e-6 at d = 2048, 1.1e-5 at d = 8192).
EIGEN_RESIDUAL_TOLERANCE = 1e-4
EIGEN_PROBES = 16


def regularised(covariance: torch.Tensor, ridge: float) -> torch.Tensor:
    """``C + ridge · (tr C / d) · I`` in fp64: invertible even when few texts were seen, scale-free."""
    matrix = covariance.double().clone()
    matrix.diagonal().add_(ridge_shift(covariance, ridge))
    return matrix


def trace_fp64(matrix: torch.Tensor) -> float:
    """``tr A`` summed in fp64 from the diagonal, without an fp64 copy of the whole matrix."""
    return float(matrix.diagonal().double().sum())


def ridge_shift(covariance: torch.Tensor, ridge: float) -> float:
    """The ``ridge · tr C / d`` that :func:`regularised` adds to the diagonal."""
    return 0.0 if ridge == 0 else float(ridge * trace_fp64(covariance) / covariance.shape[0])


def backward_error(residual: torch.Tensor, matrix_norm: float, x: torch.Tensor, rhs: torch.Tensor) -> float:
    """The largest normwise backward error ``‖r‖ / (‖A‖ ‖x‖ + ‖b‖)`` over the columns."""
    scale = matrix_norm * x.norm(dim=0) + rhs.norm(dim=0)
    errors = residual.norm(dim=0) / torch.where(scale > 0, scale, torch.ones_like(scale))
    return float(errors.max()) if errors.numel() else 0.0


def accepted(residual: torch.Tensor, matrix_norm: float, x: torch.Tensor, rhs: torch.Tensor, tolerance: float) -> bool:
    """``x`` is finite and its backward error is at most ``tolerance`` (:data:`BACKWARD_ERROR_TOLERANCE`
    for a residual computed in fp64, :data:`QUICK_CHECK_TOLERANCE` for one computed in fp32)."""
    return bool(torch.isfinite(x).all()) and backward_error(residual, matrix_norm, x, rhs) <= tolerance


class FactoredCovariance:
    """Solves ``A x = b``, ``A = weight · C + shift · I``, for any number of right-hand sides.

    ``shift = ridge · tr C / d`` (:func:`regularised`). Made once per layer (in ``prepare``), it
    keeps one matrix and no reference to ``C``, whose memory the statistics can then free:

    * ``precision == "fp32"``: the fp32 Cholesky factor ``L``, *certified* here on probe vectors
      by the fp64 backward error of its solves against ``C`` (:data:`BACKWARD_ERROR_TOLERANCE`).
      A solve is two triangular solves, checked in fp32 against ``L Lᵀ``
      (:data:`QUICK_CHECK_TOLERANCE`); one that fails is redone in fp64 with the same factor;
    * ``"fp64"``: an fp64 Cholesky factor, when the fp32 one is not certified, with solves
      checked in fp64;
    * ``"dense"``: ``A`` itself in fp64 when it has no Cholesky factor (``C`` singular and no
      ridge), solved densely (``O(d³)`` per solve).
    """

    def __init__(
        self, covariance: torch.Tensor, *, weight: float = 1.0, ridge: float = 0.0, probes: int = 4, consume: bool = False
    ) -> None:
        self.weight = float(weight)
        self.shift = ridge_shift(covariance, ridge)
        self.dimension = covariance.shape[0]
        self.device = covariance.device
        self.norm = self._frobenius_norm(covariance)  # ‖A‖_F, for backward errors
        self.factor: torch.Tensor | None = None
        self.matrix: torch.Tensor | None = None  # fp64 A, only when it has no factor
        generator = torch.Generator().manual_seed(0)
        probe = torch.randn(self.dimension, probes, generator=generator, dtype=torch.float64).to(self.device)
        if consume and covariance.dtype == torch.float32:
            # C is ours to overwrite (taken from the statistics): A is formed in its place, so
            # factorising holds two d × d matrices, not three; the certificate is then against
            # this fp32 A, which differs from w·C + shift·I by fp32 rounding (~1e-7, inside the tolerance)
            covariance = covariance.mul_(self.weight)
            covariance.diagonal().add_(self.shift)
            self.weight, self.shift, formed = 1.0, 0.0, True
        else:
            formed = False
        for dtype in (torch.float32, torch.float64):
            if formed and dtype == torch.float32:
                factor, info = torch.linalg.cholesky_ex(covariance)
            else:
                matrix = covariance.to(dtype) * self.weight
                matrix.diagonal().add_(self.shift)
                factor, info = torch.linalg.cholesky_ex(matrix)
                del matrix
            if int(info) == 0 and bool(torch.isfinite(factor.diagonal()).all()):
                x = self._triangular_solves(factor, probe.to(dtype)).double()
                if accepted(probe - self._times_covariance(covariance, x), self.norm, x, probe, BACKWARD_ERROR_TOLERANCE):
                    self.factor = factor
                    return
            del factor
        self.matrix = regularised(covariance, 0.0).mul_(self.weight)
        self.matrix.diagonal().add_(self.shift)

    @property
    def precision(self) -> Literal["fp32", "fp64", "dense"]:
        if self.factor is None:
            return "dense"
        return "fp32" if self.factor.dtype == torch.float32 else "fp64"

    @property
    def factorised(self) -> bool:
        """Whether solves avoid a dense ``O(d³)`` solve."""
        return self.factor is not None

    def _frobenius_norm(self, covariance: torch.Tensor) -> float:
        total = 0.0
        for start in range(0, self.dimension, CHECK_BLOCK_ROWS):
            block = covariance[start : start + CHECK_BLOCK_ROWS].double() * self.weight
            block.diagonal(offset=start).add_(self.shift)
            total += float(block.square().sum())
        return total ** 0.5

    def _times_covariance(self, covariance: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``A x`` in fp64 from ``C``, read in row blocks (the certificate)."""
        out = torch.empty_like(x)
        for start in range(0, self.dimension, CHECK_BLOCK_ROWS):
            block = covariance[start : start + CHECK_BLOCK_ROWS].to(device=x.device, dtype=torch.float64)
            out[start : start + CHECK_BLOCK_ROWS] = block @ x
        return out.mul_(self.weight).add_(x, alpha=self.shift)

    @staticmethod
    def _triangular_solves(factor: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # two triangular solves: a tenth of cholesky_solve's time on one CPU thread for one vector
        y = torch.linalg.solve_triangular(factor, b, upper=False)
        return torch.linalg.solve_triangular(factor.T, y, upper=True)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """``A x`` as this solver sees it (``L Lᵀ x``, or ``A x`` when dense), in ``x``'s precision."""
        if self.factor is None:
            return self.matrix.to(x.dtype) @ x
        factor = self.factor.to(x.dtype)
        return factor @ (factor.T @ x)

    def dense(self) -> torch.Tensor:
        """``A`` in fp64 (``L Lᵀ`` when factorised: for fallbacks and tests, ``O(d³)``)."""
        if self.factor is None:
            return self.matrix.clone()
        factor = self.factor.double()
        return factor @ factor.T

    def solve(self, rhs: torch.Tensor) -> torch.Tensor:
        """``x`` (fp64, shaped like ``rhs``: ``(d,)`` or ``(d, n)``), checked as the class describes."""
        b = rhs.double().to(self.device)
        column = b.dim() == 1
        b2 = b[:, None] if column else b
        x = None
        if self.factor is not None and self.factor.dtype == torch.float32:
            b32 = b2.float()
            x32 = self._triangular_solves(self.factor, b32)
            if accepted(b32 - self.matmul(x32), self.norm, x32, b32, QUICK_CHECK_TOLERANCE):
                x = x32.double()
        if x is None and self.factor is not None:
            x = self._triangular_solves(self.factor.double(), b2)
            if not accepted(b2 - self.matmul(x), self.norm, x, b2, BACKWARD_ERROR_TOLERANCE):
                x = None
        if x is None:
            x = torch.linalg.solve(self.dense(), b2)
        return x[:, 0] if column else x


class FactorisationCache:
    """One :class:`FactoredCovariance` per model, layer and ``(weight, ridge)``, made once (in the
    editor's ``prepare``) from its :class:`~easyetcon.statistics.LayerStatistics` and
    reused by every edit. The statistics' ``C`` is *taken* (dropped from their memory) once
    factorised, so a layer costs one ``d × d`` matrix between edits, not two."""

    def __init__(self) -> None:
        self._memo: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def get(self, model: Any, layer: int, statistics: Any, *, weight: float = 1.0, ridge: float = 0.0) -> FactoredCovariance:
        memo = self._memo.setdefault(model.torch_model, {})
        key = (layer, float(weight), float(ridge), statistics.generation)
        if key not in memo:
            covariance = statistics.take(model, [layer])[layer].mom2
            memo[key] = FactoredCovariance(covariance, weight=weight, ridge=ridge, consume=True)
        return memo[key]


def rank_one_update(
    key: torch.Tensor, residual: torch.Tensor, covariance: torch.Tensor | FactoredCovariance | None = None, *, ridge: float = 0.0
) -> torch.Tensor:
    """ROME (Meng et al. 2022, eq. 2): ``Δ = r (C⁻¹k)ᵀ / (kᵀ C⁻¹ k)``.

    ``(W + Δ) k = W k + r`` exactly, and ``Δ`` has rank one. Without ``covariance`` the update
    is the minimum-norm one, ``r kᵀ / (kᵀ k)``.
    """
    left, right = rank_one_factors(key, residual, covariance, ridge=ridge)
    return left @ right


def rank_one_factors(
    key: torch.Tensor, residual: torch.Tensor, covariance: torch.Tensor | FactoredCovariance | None = None, *, ridge: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`rank_one_update` as ``(left, right)``: ``left = r`` ``(out, 1)``, ``right = (C⁻¹k / kᵀC⁻¹k)ᵀ`` ``(1, in)``.

    ``covariance`` is ``C`` (factorised here, with ``ridge``) or a :class:`FactoredCovariance`
    made once for many edits (its own ridge applies)."""
    k = key.double()
    r = residual.double().to(k.device)
    if covariance is None:
        u = k
    else:
        solver = covariance if isinstance(covariance, FactoredCovariance) else FactoredCovariance(covariance, ridge=ridge)
        u = solver.solve(k).to(k.device)
    return r[:, None], (u / torch.dot(u, k))[None, :]


def least_squares_update(
    keys: torch.Tensor, residuals: torch.Tensor, covariance: torch.Tensor | FactoredCovariance, covariance_weight: float
) -> torch.Tensor:
    """MEMIT (Meng et al. 2023, eq. 14): ``Δ = R Kᵀ (λ C + K Kᵀ)⁻¹``.

    ``keys`` is ``(n, in)``, ``residuals`` ``(n, out)``. Δ minimises
    ``‖(W + Δ) K − (W K + R)‖² + λ n_C · E‖Δ k‖²`` over keys ``k`` with second moment ``C``:
    the new keys get their residuals while typical keys keep their values.
    """
    left, right = least_squares_factors(keys, residuals, covariance, covariance_weight)
    return left @ right


def least_squares_factors(
    keys: torch.Tensor, residuals: torch.Tensor, covariance: torch.Tensor | FactoredCovariance, covariance_weight: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`least_squares_update` as ``(left, right)``: ``left = R`` ``(out, n)``,
    ``right = ((λ C + K Kᵀ)⁻¹ K)ᵀ`` ``(n, in)``, since ``Δ = (A⁻¹ K Rᵀ)ᵀ = R (A⁻¹ K)ᵀ``.

    With ``M = λ C`` factorised once (``covariance`` may be a :class:`FactoredCovariance` of
    weight ``λ``), Woodbury gives ``(M + K Kᵀ)⁻¹ K = Y (I + Kᵀ Y)⁻¹`` with ``Y = M⁻¹ K``: ``O(d² n)``.
    ``Y`` is checked as any :class:`FactoredCovariance` solve and the result against ``A`` in fp32
    (:data:`QUICK_CHECK_TOLERANCE`); if ``M`` cannot be factorised or the check fails, ``A`` is
    solved densely in fp64."""
    K = keys.double().T
    R = residuals.double().T.to(K.device)
    solver = (
        covariance if isinstance(covariance, FactoredCovariance)
        else FactoredCovariance(covariance, weight=covariance_weight) if covariance_weight > 0 else None
    )
    if solver is not None and solver.factorised:
        K_solver = K.to(solver.device)
        Y = solver.solve(K_solver)  # checked
        capacitance = torch.eye(K.shape[1], dtype=K.dtype, device=Y.device) + K_solver.T @ Y
        X = torch.linalg.solve(capacitance.T, Y.T).T  # Y S⁻¹
        # the whole system, checked in fp32 like a fast solve (‖M + KKᵀ‖_F ≤ ‖M‖_F + ‖K‖_F²)
        K32, X32 = K_solver.float(), X.float()
        residual = K32 - (solver.matmul(X32) + K32 @ (K32.T @ X32))
        if accepted(residual, solver.norm + float(K_solver.norm()) ** 2, X32, K32, QUICK_CHECK_TOLERANCE):
            return R.contiguous(), X.T.to(K.device).contiguous()
    dense = covariance.dense() if isinstance(covariance, FactoredCovariance) else covariance_weight * covariance.double()
    A = dense.to(K.device) + K @ K.T
    return R.contiguous(), torch.linalg.solve(A, K).T.contiguous()


class Projector:
    """``P = U Uᵀ`` onto an ``r``-dimensional null space of ``d``-dimensional keys.

    ``U`` is kept implicitly, as the Householder reflectors (:func:`torch.geqrf`, fp64) of the
    smaller of the two orthonormal sets that define it: the null space's own eigenvectors, or
    the preserved directions' (``k = min(r, d − r) ≤ d/2`` columns). Their product ``Q`` is an
    orthogonal ``d × d`` matrix whose first ``k`` columns span the given set, so ``U`` is ``Q``'s
    first ``r`` columns (null space given) or its last ``r`` (preserved directions given).
    ``Uᵀ x`` and ``U z`` are products with ``Q`` (:func:`torch.ormqr`, ``O(d k n)``). That stores
    ``d k ≤ d²/2`` numbers, and ``U`` is orthonormal to fp64 rounding whatever precision the
    eigenvectors were computed in.

    ``null_moment`` is ``Uᵀ C U`` (``r × r``, fp64) when :func:`nullspace_basis` was asked for it
    (AlphaEdit's ``covariance_weight > 0``), else ``None``.
    """

    def __init__(self, spanning: torch.Tensor, *, null_given: bool) -> None:
        d, k = spanning.shape
        self.reflectors, self.tau = torch.geqrf(spanning.double())
        self.null_given = null_given
        self.rank = k if null_given else d - k
        self.null_moment: torch.Tensor | None = None

    @property
    def dimension(self) -> int:
        return self.reflectors.shape[0]

    @property
    def _null_rows(self) -> slice:
        return slice(0, self.rank) if self.null_given else slice(self.dimension - self.rank, self.dimension)

    def coordinates(self, x: torch.Tensor) -> torch.Tensor:
        """``Uᵀ x`` in fp64, ``(r, n)`` for ``x`` ``(d, n)``."""
        x = x.to(self.reflectors.device).double()
        return torch.ormqr(self.reflectors, self.tau, x, left=True, transpose=True)[self._null_rows].contiguous()

    def expand(self, z: torch.Tensor) -> torch.Tensor:
        """``U z`` in fp64, ``(d, n)`` for null-space coordinates ``z`` ``(r, n)``."""
        padded = torch.zeros((self.dimension, z.shape[1]), dtype=torch.float64, device=self.reflectors.device)
        padded[self._null_rows] = z.to(padded.device).double()
        return torch.ormqr(self.reflectors, self.tau, padded, left=True, transpose=False)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``P x`` in fp64."""
        return self.expand(self.coordinates(x))

    def dense(self) -> torch.Tensor:
        """``P`` as a dense fp64 ``d × d`` matrix (for tests and small models)."""
        return self.apply(torch.eye(self.dimension, dtype=torch.float64, device=self.reflectors.device))


def _eigen_certified(covariance: torch.Tensor, eigenvalues: torch.Tensor, eigenvectors: torch.Tensor) -> bool:
    """Whether an fp32 eigendecomposition is good enough to choose and span a null space: on
    probe eigenvectors (spread over the spectrum), ``‖C u − λ u‖`` and ``|‖u‖ − 1|`` are below
    :data:`EIGEN_RESIDUAL_TOLERANCE` (relative to ``‖C‖₂``)."""
    d = len(eigenvalues)
    if not bool(torch.isfinite(eigenvalues).all()):
        return False
    scale = max(float(eigenvalues.abs().max()), torch.finfo(torch.float32).tiny)
    probes = torch.linspace(0, d - 1, min(d, EIGEN_PROBES), device=eigenvectors.device).round().long()
    U = eigenvectors[:, probes]
    residual = (covariance @ U - U * eigenvalues[probes]).norm(dim=0).max() / scale
    norm_error = (U.norm(dim=0) - 1).abs().max()
    return bool(residual < EIGEN_RESIDUAL_TOLERANCE and norm_error < EIGEN_RESIDUAL_TOLERANCE)


def nullspace_basis(
    covariance: torch.Tensor,
    *,
    rule: NullspaceRule = "energy",
    energy_fraction: float = 0.99,
    threshold: float = 1e-2,
    null_moment: bool = False,
) -> Projector:
    """The projector onto the directions the preserved keys (second moment ``C``) barely use.

    ``rule="energy"`` keeps as *preserved* the fewest top eigenvectors holding ``energy_fraction``
    of the spectrum's energy (sum of eigenvalues) and projects onto the rest: unchanged when the
    activations are rescaled. ``rule="absolute"`` projects onto eigenvectors with eigenvalue
    below ``threshold`` (AlphaEdit's original rule; it depends on the activation scale).
    ``null_moment``: also compute ``Uᵀ C U`` (from the null space's eigenpairs, not from ``C``).

    The eigendecomposition runs in ``C``'s precision. In fp32 it takes half the memory and 60 % of
    the time of fp64, and is certified (:func:`_eigen_certified`); a decomposition that fails is
    redone in fp64. fp32 rounding moves the chosen subspace only between eigenvectors of nearby
    eigenvalues at the cut-off, so the preserved energy it lets through is unchanged.
    """
    if covariance.dtype != torch.float32:
        covariance = covariance.double()
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    if covariance.dtype == torch.float32 and not _eigen_certified(covariance, eigenvalues, eigenvectors):
        del eigenvectors
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance.double())
    eigenvalues = eigenvalues.double().clamp(min=0)
    d = len(eigenvalues)
    if rule == "energy":
        descending = eigenvalues.flip(0)
        total = descending.sum()
        if total <= 0:
            null = torch.ones(d, dtype=torch.bool, device=eigenvalues.device)
        else:
            cumulative = torch.cumsum(descending, 0) / total
            preserved = int(torch.searchsorted(cumulative, torch.tensor(energy_fraction, dtype=cumulative.dtype))) + 1
            preserved = min(preserved, d)
            null = torch.arange(d, device=eigenvalues.device) < d - preserved
    elif rule == "absolute":
        null = eigenvalues < threshold
    else:
        raise ConfigError(f"unknown null-space rule {rule!r}; choose 'energy' or 'absolute'")
    null_given = 2 * int(null.sum()) <= d
    projector = Projector(eigenvectors[:, null if null_given else ~null], null_given=null_given)
    if null_moment:
        # U spans the same subspace as the null eigenvectors E: Uᵀ C U = (Uᵀ E) Λ (Uᵀ E)ᵀ
        rotation = projector.coordinates(eigenvectors[:, null])
        projector.null_moment = (rotation * eigenvalues[null]) @ rotation.T
    return projector


def nullspace_projector(
    covariance: torch.Tensor,
    *,
    rule: NullspaceRule = "energy",
    energy_fraction: float = 0.99,
    threshold: float = 1e-2,
) -> torch.Tensor:
    """:func:`nullspace_basis` as a dense fp64 ``d × d`` matrix."""
    return nullspace_basis(covariance, rule=rule, energy_fraction=energy_fraction, threshold=threshold).dense()


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
    ``edited_moment`` is ``K_p K_pᵀ`` of earlier edits. ``covariance_weight`` ``λ > 0`` adds
    ``λ C`` to ``K Kᵀ + K_p K_pᵀ``: the preserved keys' small components *inside* the null space
    are then protected too, in proportion to their energy (MEMIT's penalty, restricted to the
    null space; ``λ = 0`` is the paper).
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
    """:func:`projected_update` as ``(left, right)``: ``left = R`` ``(out, n)``, ``right = (P A⁻¹ P K)ᵀ``.

    The direct ``O(d³)`` solve of one edit: the reference :class:`NullSpaceSolver`, which the
    editor uses, is tested against."""
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


class NullSpaceSolver:
    """AlphaEdit's eq. 9 for one layer in null-space coordinates, ``O(d r n + r² n)`` per edit.

    Every solution of eq. 9 has the form ``Y Uᵀ`` (``U`` the projector's orthonormal ``d × r``
    basis), and eq. 9 becomes the ``r × r`` system

        Y S = R Kᵀ U,      S = Uᵀ (λ C + K_p K_pᵀ + K Kᵀ) U + α I.

    ``S`` starts as ``λ Uᵀ C U + α I`` (``α I`` when ``λ = 0``), and an edit's keys change it by
    ``K̃ K̃ᵀ`` (``K̃ = Uᵀ K``). Its inverse follows by Woodbury (``B`` the matrix before the edit):

        S⁻¹ K̃ = B⁻¹ K̃ (I + K̃ᵀ B⁻¹ K̃)⁻¹,      B⁻¹ ← B⁻¹ − B⁻¹ K̃ (I + K̃ᵀ B⁻¹ K̃)⁻¹ K̃ᵀ B⁻¹

    :meth:`factors` solves an edit without changing the state; :meth:`add_keys` makes the keys
    earlier ones. Both compute the same fp64 products from ``B⁻¹`` and ``K``, so a replay that adds
    a journal's keys in order rebuilds ``B⁻¹`` bit for bit. State: the projector (``8 d k`` bytes,
    ``k = min(r, d − r)``) and ``B⁻¹`` (fp64, ``8 r²``), with ``r`` the null space's dimension:
    at most ``8 d²`` bytes, reached only when the whole space is null.
    """

    def __init__(self, projector: Projector, alpha: float, covariance_weight: float = 0.0) -> None:
        self.projector = projector
        r = projector.rank
        if covariance_weight > 0:
            if projector.null_moment is None:
                raise ValueError("covariance_weight > 0 needs the projector's null_moment (nullspace_basis(..., null_moment=True))")
            start = covariance_weight * projector.null_moment
            start.diagonal().add_(alpha)
            self.inverse = torch.linalg.inv(start)
            del start
        else:
            self.inverse = torch.eye(r, dtype=torch.float64, device=projector.reflectors.device) / alpha
        self.edited_keys = 0

    def _woodbury(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(K̃, B⁻¹ K̃, (I + K̃ᵀ B⁻¹ K̃)⁻¹)`` for ``keys`` ``(n, d)``."""
        coordinates = self.projector.coordinates(keys.T)
        G = self.inverse @ coordinates
        capacitance = torch.eye(coordinates.shape[1], dtype=G.dtype, device=G.device) + coordinates.T @ G
        return coordinates, G, torch.linalg.inv(capacitance)

    def factors(self, keys: torch.Tensor, residuals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(left, right)`` with ``left = R``, ``right = (U S⁻¹ Uᵀ K)ᵀ``, as :func:`projected_factors`."""
        _, G, capacitance_inverse = self._woodbury(keys)
        R = residuals.double().T.to(G.device)
        return R.contiguous(), self.projector.expand(G @ capacitance_inverse).T.contiguous()

    def add_keys(self, keys: torch.Tensor) -> None:
        """``K_p ← [K_p, K]``: ``B⁻¹`` becomes ``S⁻¹`` (one rank-``n`` update)."""
        coordinates, G, capacitance_inverse = self._woodbury(keys)
        self.inverse.sub_((G @ capacitance_inverse) @ (coordinates.T @ self.inverse))
        self.edited_keys += coordinates.shape[1]


def add_to_weight(model: Any, layer: int, left: torch.Tensor, right: torch.Tensor, kind: str = "mlp_out") -> None:
    """``W ← W + left @ right`` on the layer's ``kind`` weight (by default ``mlp_out``), in fp64 and
    cast back to its dtype.

    ``left`` ``(out, r)`` and ``right`` ``(r, in)`` factor the update in the adapter's ``(out, in)``
    view. It is written with :meth:`EditableModel.add_low_rank`, so the chain can journal the two
    factors instead of the weight; for GPT-2's Conv1D, which stores ``Wᵀ``, that is ``rightᵀ @ leftᵀ``.
    """
    module = model.adapter.module(model.torch_model, kind, layer)
    in_features, out_features = model.adapter.in_out_features(module)
    if left.dim() != 2 or right.dim() != 2 or left.shape[1] != right.shape[0] or (left.shape[0], right.shape[1]) != (out_features, in_features):
        raise ValueError(
            f"update {tuple(left.shape)} @ {tuple(right.shape)} does not fit the (out, in) = "
            f"({out_features}, {in_features}) {kind} weight of layer {layer}"
        )
    if not (torch.isfinite(left).all() and torch.isfinite(right).all()):
        raise FloatingPointError(f"the update of layer {layer} is not finite; lower the learning rate or add a ridge")
    if model.adapter.is_transposed(module):
        left, right = right.T, left.T
    # contiguous factors: the journal stores them so, and replay must multiply the same layout
    model.add_low_rank(model.adapter.weight_name(kind, layer), left.contiguous(), right.contiguous())
