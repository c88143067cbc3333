"""ROME: a rank-one update of one MLP output projection (Meng et al., NeurIPS 2022).

The MLP output projection ``W`` (adapter kind ``mlp_out``) of one layer is read as a linear
associative memory: the key ``k`` (its input at the subject's last token) is mapped to a value
``W k`` that the rest of the network reads the subject's attributes from. To make the model
state a new object, ROME

1. computes the key ``k*``: the input of ``W`` at the subject's last token, averaged over
   several short prefixes (so the edit holds whatever precedes the subject);
2. optimises ``δ``, a change of ``W``'s output at the subject, so the target becomes likely
   (target NLL + KL on essence prompts + weight decay, with a norm clamp;
   :mod:`easyetcon.locate.values`);
3. inserts ``k* → v* = W k* + δ`` with the rank-one update (the paper's eq. 2)

       Ŵ = W + (v* − W k*) (C⁻¹ k*)ᵀ / (k*ᵀ C⁻¹ k*)

   where ``C = E[k kᵀ]`` over ordinary text (optional: without it ``C = I``), factorised once
   per layer so each edit's ``C⁻¹k*`` costs ``O(d²)``
   (:class:`easyetcon.locate.solve.FactoredCovariance`).

The same averaged key ``k*`` is used on both sides of the update, in ``v* − W k*`` and in
``C⁻¹ k*`` (r-ROME, Gupta et al. 2024): the original code mixed an un-prefixed key into the
residual, which makes the update's norm explode under sequential editing. Several requests are
edited one after the other, each written as its two factors (``r`` and ``(C⁻¹k*)ᵀ / k*ᵀC⁻¹k*``).

Options: the shared ``key:``, ``value:`` and ``statistics:`` sections
(:class:`easyetcon.locate.LocateThenEditConfig`), ``layer``, ``use_covariance`` and ``ridge``.
The layer, the prefixes and ``C`` are derived from the unedited model once, in ``prepare``
(:class:`easyetcon.locate.LocateThenEdit`), so replaying a journal leaves the editor as it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field

from easyetcon.locate import LocateThenEdit, LocateThenEditConfig
from easyetcon.locate.solve import FactorisationCache, FactoredCovariance, rank_one_factors


class RomeConfig(LocateThenEditConfig):
    """Options of ``rome``. Defaults follow the paper's GPT-2 XL settings where they are scale-free."""

    layer: int | Literal["auto", "trace"] = Field(
        default="auto",
        description="layer whose MLP output projection is edited: an index, 'auto' (early-middle, "
        "from the model's depth) or 'trace' (causal tracing on the first requests)",
    )
    use_covariance: bool = Field(default=True, description="use C⁻¹k (key statistics) rather than k in the update")
    ridge: float = Field(default=1e-4, ge=0, description="C + ridge·(tr C/d)·I, so C is invertible")


class Rome(LocateThenEdit):
    """The ``rome`` editor. Keeps, per model, its layer, prefixes and factorised key statistics."""

    layer_option: ClassVar[str] = "layer"

    def __init__(self, config: RomeConfig) -> None:
        super().__init__(config)
        self.factorisations = FactorisationCache()

    @property
    def uses_statistics(self) -> bool:
        return self.config.use_covariance

    def layer(self, model: Any, requests: Sequence[Any]) -> int:
        return self.layers(model, requests)[0]

    def covariance(self, model: Any, layer: int) -> FactoredCovariance:
        """``C + ridge`` of the layer, factorised once per model (every edit then solves in ``O(d²)``)."""
        return self.factorisations.get(model, layer, self.statistics, ridge=self.config.ridge)

    prepare_layer = covariance

    def edit(self, model: Any, requests: Sequence[Any]) -> None:
        sites = self.locate(model, requests)
        (layer,) = sites.layers
        covariance = self.covariance(model, layer) if self.config.use_covariance else None
        for located in sites.located:  # one after the other: each value is optimised on the model edited so far
            # δ at the layer's output; k*, averaged over the prefixes, read in the same first pass
            value = sites.optimise(located, self.config.value, layer=layer)
            # v* = W k* + δ, so the residual v* − W k* is δ: k* on both sides of the update.
            left, right = rank_one_factors(value.key, value.delta, covariance)
            sites.write(layer, left, right)
