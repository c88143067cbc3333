"""EMMET's defining property: every new key gets its value exactly (MEMIT only approaches it)."""

import pytest
import torch
from easyetcon_intrinsic.emmet import equality_factors

from easyetcon.activations import activations_at
from easyetcon.chain import EditChain
from easyetcon.locate import EditSites
from easyetcon.locate.solve import FactoredCovariance, rank_one_factors
from easyetcon.plugins import get_host
from easyetcon.testing import tiny_model
from tests.intrinsic.helpers import STRONG_VALUES, sectioned, subject_final_requests


def random_moment(d, seed=0):
    rows = torch.randn(200, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (rows.T @ rows / 200).float()


def test_each_key_is_mapped_to_its_residual_exactly():
    keys, residuals = torch.randn(3, 16, dtype=torch.float64), torch.randn(3, 8, dtype=torch.float64)
    left, right = equality_factors(keys, residuals, FactoredCovariance(random_moment(16), ridge=1e-4))
    assert left.shape == (8, 3) and right.shape == (3, 16)  # rank n, never d × d
    assert torch.allclose(left @ right @ keys.T, residuals.T, atol=1e-9)


def test_one_request_is_romes_rank_one_update():
    covariance = FactoredCovariance(random_moment(16, seed=1), ridge=1e-4)
    key, residual = torch.randn(16, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    left, right = equality_factors(key[None], residual[None], covariance)
    rome_left, rome_right = rank_one_factors(key, residual, covariance)
    assert torch.allclose(left @ right, rome_left @ rome_right, atol=1e-10)


def test_the_equality_ridge_trades_exactness_for_a_smaller_update():
    keys = torch.randn(4, 16, dtype=torch.float64)
    keys[1] = keys[0] + 1e-3 * torch.randn(16, dtype=torch.float64)  # nearly dependent keys, opposed residuals
    residuals = torch.randn(4, 8, dtype=torch.float64)
    covariance = FactoredCovariance(random_moment(16, seed=2), ridge=1e-4)
    left, right = equality_factors(keys, residuals, covariance)
    steady_left, steady_right = equality_factors(keys, residuals, covariance, equality_ridge=0.1)
    assert (steady_left @ steady_right).norm() < 0.1 * (left @ right).norm()
    assert not torch.allclose(steady_left @ steady_right @ keys.T, residuals.T, atol=1e-3)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_a_batch_edit_puts_every_target_hidden_state_in_place(arch, monkeypatch):
    """One edited layer, no prefixes: each request's key is its bare prompt's, so after EMMET's update
    the block's output at every fact token is the optimised target; MEMIT's trade-off misses it."""
    targets = {}
    real = EditSites.hidden_targets

    def recording(self, options):
        targets["z"] = real(self, options)
        return targets["z"]

    monkeypatch.setattr(EditSites, "hidden_targets", recording)
    requests = subject_final_requests()
    errors = {}
    for editor, own in [("emmet", {"equality_ridge": 0.0}), ("memit", {"covariance_weight": 1e4})]:
        model = tiny_model(arch, registry=get_host().registry)
        chain = EditChain([(editor, sectioned({**STRONG_VALUES, "prefixes": 0, "layers": [1], **own}))])
        chain.apply(model, requests, mode="batch")
        sites = chain.steps[0].editor.locate(model, requests)
        reached = activations_at(model, sites.last_block, [r.prompt for r in requests], [s.position for s in sites.located], which="output")
        errors[editor] = float((reached - targets["z"]).norm() / targets["z"].norm())
    assert errors["emmet"] < 1e-4
    assert errors["memit"] > 1e-2
