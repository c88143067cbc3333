"""The per-edit solves at real-width cost: factorised once, checked in fp64, equal to the direct solves."""

import pytest
import torch
from easyetcon.locate import solve
from easyetcon.locate.solve import (
    FactoredCovariance,
    NullSpaceSolver,
    least_squares_factors,
    nullspace_basis,
    nullspace_projector,
    projected_factors,
    rank_one_factors,
    regularised,
)

from easyetcon.plugins import get_host
from easyetcon.testing import tiny_model
from tests.intrinsic.helpers import STRONG_VALUES, sectioned, subject_final_requests


def second_moment(d, *, condition=1e2, seed=0, samples=400):
    generator = torch.Generator().manual_seed(seed)
    scales = torch.logspace(0, -0.5 * torch.log10(torch.tensor(condition)).item(), d)
    rows = torch.randn(samples, d, generator=generator, dtype=torch.float64) * scales
    return (rows.T @ rows / samples).float()  # fp32, as the statistics store it


def relative(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("condition", [1e2, 1e6, 1e12])
def test_factored_solves_are_backward_stable_and_match_the_fp64_solve(condition):
    C = second_moment(48, condition=condition)
    solver = FactoredCovariance(C, ridge=1e-9)
    A = regularised(C, 1e-9)
    rhs = torch.randn(48, 3, dtype=torch.float64)
    x = solver.solve(rhs)
    assert solve.backward_error(rhs - A @ x, float(torch.linalg.matrix_norm(A)), x, rhs) <= solve.BACKWARD_ERROR_TOLERANCE
    exact = torch.linalg.solve(A, rhs)
    assert relative(x, exact) < 1e-5 * condition  # forward error: backward error × condition
    assert relative(solver.solve(rhs[:, 0]), exact[:, 0]) < 1e-5 * condition
    assert solver.precision == "fp32"  # certified in fp32 even at condition 1e12: Cholesky is backward stable
    # one d × d matrix is kept, and no reference to C (the statistics can free theirs)
    assert [v for v in vars(solver).values() if torch.is_tensor(v)] == [solver.factor]


def test_a_solve_that_fails_its_fp32_check_is_redone_in_fp64_with_the_certified_factor(monkeypatch):
    C = second_moment(32, condition=1e4)
    solver = FactoredCovariance(C, ridge=1e-6)
    assert solver.precision == "fp32"
    monkeypatch.setattr(solve, "QUICK_CHECK_TOLERANCE", 1e-14)  # no fp32 solve passes this
    monkeypatch.setattr(solve, "BACKWARD_ERROR_TOLERANCE", 1e-13)
    rhs = torch.randn(32, dtype=torch.float64)
    x = solver.solve(rhs)
    assert relative(x, torch.linalg.solve(solver.dense(), rhs)) < 1e-10  # L Lᵀ x = b in fp64
    assert relative(x, torch.linalg.solve(regularised(C, 1e-6), rhs)) < 1e-4  # and L Lᵀ is A to fp32 rounding


def test_an_uncertified_fp32_factor_is_not_used(monkeypatch):
    monkeypatch.setattr(solve, "BACKWARD_ERROR_TOLERANCE", 1e-12)  # only an fp64 factor meets this
    C = second_moment(32, condition=1e4)
    solver = FactoredCovariance(C, ridge=1e-6)
    assert solver.precision == "fp64" and solver.factor.dtype == torch.float64
    rhs = torch.randn(32, dtype=torch.float64)
    assert relative(solver.solve(rhs), torch.linalg.solve(regularised(C, 1e-6), rhs)) < 1e-10


def test_a_singular_covariance_falls_back_to_the_dense_solve():
    C = torch.zeros(8, 8)
    C[0, 0] = 1.0
    solver = FactoredCovariance(C)  # positive semi-definite, no Cholesky factor
    assert not solver.factorised and solver.precision == "dense"
    keys, residuals = torch.randn(8, 8), torch.randn(8, 3)
    left, right = least_squares_factors(keys, residuals, solver, 1.0)
    A = C.double() + keys.double().T @ keys.double()
    assert relative(right, torch.linalg.solve(A, keys.double().T).T) < 1e-10


@pytest.mark.parametrize("weight", [1.0, 15000.0])
def test_memit_woodbury_equals_the_dense_normal_equations(weight):
    C = second_moment(40, condition=1e4)
    keys, residuals = torch.randn(5, 40), torch.randn(5, 7)
    left, right = least_squares_factors(keys, residuals, FactoredCovariance(C, weight=weight), weight)
    A = weight * C.double() + keys.double().T @ keys.double()
    assert relative(right, torch.linalg.solve(A, keys.double().T).T) < 1e-6
    assert torch.equal(left, residuals.double().T)


def test_rome_factor_reused_gives_the_direct_update():
    C = second_moment(40)
    key, residual = torch.randn(40), torch.randn(9)
    shared = FactoredCovariance(C, ridge=1e-3)
    _, right = rank_one_factors(key, residual, shared)
    u = torch.linalg.solve(regularised(C, 1e-3), key.double())
    assert relative(right[0], u / torch.dot(u, key.double())) < 1e-6
    assert abs(float(right[0] @ key.double()) - 1.0) < 1e-12  # (W + Δ) k = W k + r, whatever u


@pytest.mark.parametrize("fraction", [0.5, 0.999])  # a small and a large null space
@pytest.mark.parametrize("weight", [0.0, 3.0])
def test_null_space_solver_tracks_the_direct_solve_over_sequential_edits(fraction, weight):
    C = second_moment(36, condition=1e3).double()  # fp64: the algebra is compared at 1e-9
    projector = nullspace_basis(C, energy_fraction=fraction, null_moment=weight > 0)
    P = nullspace_projector(C, energy_fraction=fraction)
    assert projector.rank == round(float(torch.trace(P)))
    assert projector.null_given == (fraction == 0.999)  # the smaller set is kept: null space or its complement
    assert projector.reflectors.shape[1] <= 18
    assert torch.allclose(projector.dense(), P, atol=1e-12)
    if weight > 0:  # Uᵀ C U from the eigenpairs equals the product with C
        U = projector.expand(torch.eye(projector.rank, dtype=torch.float64))
        assert torch.allclose(projector.null_moment, U.T @ C @ U, atol=1e-12)
    solver = NullSpaceSolver(projector, 1e-2, weight)
    assert solver.inverse.shape == (projector.rank, projector.rank)  # r × r, not d × d
    earlier = None
    for _ in range(5):
        keys, residuals = torch.randn(2, 36), torch.randn(2, 6)
        _, right = solver.factors(keys, residuals)
        _, expected = projected_factors(keys, residuals, P, earlier, l2=1e-2, covariance=C, covariance_weight=weight)
        assert relative(right, expected) < 1e-9
        solver.add_keys(keys)
        moment = keys.double().T @ keys.double()
        earlier = moment if earlier is None else earlier + moment
    assert solver.edited_keys == 10


def test_fp32_null_space_is_certified_and_matches_fp64():
    C = second_moment(200, condition=1e4)
    fast = nullspace_basis(C, energy_fraction=0.99, null_moment=True)
    exact = nullspace_basis(C.double(), energy_fraction=0.99, null_moment=True)
    assert fast.rank == exact.rank
    # orthonormal to fp64 rounding although the eigenvectors were fp32
    U = fast.expand(torch.eye(fast.rank, dtype=torch.float64))
    assert float((U.T @ U - torch.eye(fast.rank, dtype=torch.float64)).abs().max()) < 1e-12
    # rounding mixes eigenvectors of nearby eigenvalues across the cut-off: the subspace moves by
    # about 6e-8 ‖C‖ / gap, and the preserved energy it lets through stays the same
    assert float((fast.dense() - exact.dense()).abs().max()) < 1e-4
    leaked_fast, leaked_exact = (float(torch.trace(p.dense() @ C.double())) for p in (fast, exact))
    assert abs(leaked_fast - leaked_exact) < 1e-5 * leaked_exact
    keys = torch.randn(3, 200)
    solver_fast, solver_exact = NullSpaceSolver(fast, 1e-2, 5.0), NullSpaceSolver(exact, 1e-2, 5.0)
    for solver in (solver_fast, solver_exact):
        solver.add_keys(keys)
    next_keys, residuals = torch.randn(2, 200), torch.randn(2, 4)
    assert relative(solver_fast.factors(next_keys, residuals)[1], solver_exact.factors(next_keys, residuals)[1]) < 1e-4


def test_a_failed_fp32_eigendecomposition_is_redone_in_fp64(monkeypatch):
    C = second_moment(40)
    w, V = torch.linalg.eigh(C)
    assert solve._eigen_certified(C, w, V)
    assert not solve._eigen_certified(C, w.flip(0), V)  # eigenvalues paired with the wrong vectors
    assert not solve._eigen_certified(C, w, 2 * V)  # not normalised
    monkeypatch.setattr(solve, "_eigen_certified", lambda *args: False)
    calls = []
    real_eigh = torch.linalg.eigh
    monkeypatch.setattr(torch.linalg, "eigh", lambda matrix: calls.append(matrix.dtype) or real_eigh(matrix))
    projector = nullspace_basis(C, energy_fraction=0.9)
    assert calls == [torch.float32, torch.float64]
    assert torch.allclose(projector.dense(), nullspace_projector(C.double(), energy_fraction=0.9), atol=1e-12)


def big_solves_refused(monkeypatch, largest):
    """From here on, any dense solve or inverse of a matrix wider than ``largest`` fails the test."""
    for name in ("solve", "inv", "cholesky_ex", "eigh"):
        real = getattr(torch.linalg, name)

        def guarded(matrix, *args, _real=real, _name=name, **kwargs):
            if matrix.dim() == 2 and matrix.shape[0] > largest:
                raise AssertionError(f"torch.linalg.{_name} of a {tuple(matrix.shape)} matrix during an edit")
            return _real(matrix, *args, **kwargs)

        monkeypatch.setattr(torch.linalg, name, guarded)


@pytest.mark.parametrize("name, options", [
    ("rome", {"layer": 0}),
    ("memit", {"layers": [0, 1], "covariance_weight": 1.0}),
    ("alphaedit", {"layers": [0, 1], "learning_rate": 0.5, "covariance_weight": 0.5}),
])
def test_editors_solve_no_d_by_d_system_per_edit(name, options, monkeypatch):
    model = tiny_model("llama", registry=get_host().registry)
    editor = get_host().registry.editor(name).create(sectioned({**STRONG_VALUES, **options}))
    first, second = subject_final_requests()
    before = {n: p.detach().clone() for n, p in model.torch_model.named_parameters()}
    editor.prepare(model, [first])
    big_solves_refused(monkeypatch, largest=2)
    editor.edit(model, [first])
    editor.edit(model, [second])
    changed = [n for n, p in model.torch_model.named_parameters() if not torch.equal(p, before[n])]
    assert changed


def test_a_consumed_covariance_gives_the_same_solves_with_one_matrix_fewer():
    C = second_moment(40, condition=1e4)
    kept = FactoredCovariance(C, weight=3.0, ridge=1e-3)
    consumed_input = C.clone()
    consumed = FactoredCovariance(consumed_input, weight=3.0, ridge=1e-3, consume=True)
    assert consumed.precision == "fp32" and consumed.norm == pytest.approx(kept.norm, rel=1e-6)
    assert not torch.equal(consumed_input, C)  # A was formed in C's place
    rhs = torch.randn(40, 2, dtype=torch.float64)
    assert relative(consumed.solve(rhs), kept.solve(rhs)) < 1e-5
    exact = torch.linalg.solve(3.0 * C.double() + solve.ridge_shift(C, 1e-3) * torch.eye(40, dtype=torch.float64), rhs)
    assert relative(consumed.solve(rhs), exact) < 1e-4
