"""NAMET: MEMIT with noise in the memory extraction (Dai et al. 2025, "NAMET: Robust Massive Model
Editing via Noise-Aware Memory Optimization", arXiv:2505.11876).

NAMET's update is MEMIT's (``easyetcon_intrinsic.memit``); what changes is how the target hidden
states are optimised and measured. Its reference code differs from its MEMIT in three places, each
a ``value:`` option every MEMIT-style editor has (:class:`easyetcon.locate.ValueOptions`):

* ``delta_position: left_padded``, the noise. The prefixed prompts are left-padded and ``δ`` is
  added at each prompt's unpadded fact-token index, so in a prompt ``s`` tokens shorter than the
  longest ``δ`` sits ``s`` tokens before the fact token (and the original output it is anchored
  to is read there too); where that is before the prompt, on padding, the prompt cannot be moved
  and is left out of the target's NLL.
* ``norm_penalty: linear`` with ``weight_decay: 0.5``: ``0.5 · ‖δ‖ / ‖v‖``, ``‖v‖`` the root mean
  square of the original outputs where ``δ`` is added (MEMIT's code divides by ``‖v‖²``, which
  makes its 0.5 nearly nothing at its models' scale).
* ``residual_at: prefixes``: the residual each layer's least squares is given is the mean, over
  the prefixed prompts, of each prompt's ``v + δ`` minus its current output at the fact token
  (MEMIT: the bare prompt's).

The keys are MEMIT's, averaged over the prefixes, as in NAMET's code. Per-layer covariance weights
(NAMET's files raise ``λ`` layer by layer) and its sampled prefixes (its MEMIT samples them the same
way) are not part of it. The other defaults are MEMIT's.
"""

from __future__ import annotations

from pydantic import Field

from easyetcon.locate import ValueOptions, with_defaults
from easyetcon_intrinsic.memit import MemitConfig

NametValueOptions = with_defaults(
    ValueOptions, name="NametValueOptions", clamp_norm_factor=0.75, weight_decay=0.5,
    delta_position="left_padded", norm_penalty="linear", residual_at="prefixes",
)


class NametConfig(MemitConfig):
    """Options of ``namet``: MEMIT's, with NAMET's value optimisation as the ``value:`` defaults."""

    value: NametValueOptions = Field(default_factory=NametValueOptions, description="how the target hidden states are optimised")
