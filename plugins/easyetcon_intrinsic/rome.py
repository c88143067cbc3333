"""ROME: a rank-one update of one MLP output projection (Meng et al., NeurIPS 2022).

The MLP output projection ``W`` (adapter kind ``mlp_out``) of one layer is read as a linear
associative memory: the key ``k`` (its input at the subject's last token) is mapped to a value
``W k`` that the rest of the network reads the subject's attributes from. To make the model
state a new object, ROME

1. computes the key ``k*``: the input of ``W`` at the subject's last token, averaged over
   several short prefixes (so the edit holds whatever precedes the subject);
2. optimises ``δ``, a change of ``W``'s output at the subject, so the target becomes likely
   (target NLL + KL on essence prompts + weight decay, with a norm clamp; :mod:`.values`);
3. inserts ``k* → v* = W k* + δ`` with the rank-one update (the paper's eq. 2)

       Ŵ = W + (v* − W k*) (C⁻¹ k*)ᵀ / (k*ᵀ C⁻¹ k*)

   where ``C = E[k kᵀ]`` over ordinary text (optional: without it ``C = I``), factorised once
   per layer so each edit's ``C⁻¹k*`` costs ``O(d²)`` (:class:`.solve.FactoredCovariance`).

The same averaged key ``k*`` is used on both sides of the update, in ``v* − W k*`` and in
``C⁻¹ k*`` (r-ROME, Gupta et al. 2024): the original code mixed an un-prefixed key into the
residual, which makes the update's norm explode under sequential editing. Several requests are
edited one after the other, each written as its two factors (``r`` and ``(C⁻¹k*)ᵀ / k*ᵀC⁻¹k*``).

The layer, the prefixes and ``C`` are derived from the model once, in :meth:`Rome.prepare`, which
the chain calls on the unedited model (and a resumed run on the freshly loaded one), so replaying
a journal leaves the editor exactly as the original run had it.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from easyetcon_intrinsic.covariance import LayerStatistics, StatisticsConfig, weights_hashed_once
from easyetcon_intrinsic.keys import make_prefixes
from easyetcon_intrinsic.layers import resolve_layers
from easyetcon_intrinsic.solve import FactorisationCache, FactoredCovariance, add_to_weight, rank_one_factors
from easyetcon_intrinsic.values import ValueOptimisation, check_kl_prompts, optimise_value


class RomeConfig(BaseModel):
    """Options of ``rome``. Defaults follow the paper's GPT-2 XL settings where they are scale-free."""

    model_config = ConfigDict(extra="forbid")

    layer: int | Literal["auto", "trace"] = Field(
        default="auto",
        description="layer whose MLP output projection is edited: an index, 'auto' (early-middle, "
        "from the model's depth) or 'trace' (causal tracing on the first requests)",
    )
    fact_token: Literal["subject_last", "last"] = Field(
        default="subject_last",
        description="where keys are read and values written: the subject's last token (the papers) or the "
        "prompt's last token (ROME's 'last' strategy: specific to subject and relation)",
    )
    prefixes: int = Field(
        default=10, ge=0, le=100, description="prefix contexts the key and value are averaged over (besides the bare prompt)"
    )
    prefix_length: int = Field(default=10, ge=1, le=64, description="tokens per generated prefix")
    prefix_source: Literal["generated", "fixed"] = Field(
        default="generated",
        description="'generated': greedy continuations of seed words by the model; 'fixed': built-in sentences",
    )
    steps: int = Field(default=25, ge=1, le=1000, description="optimisation steps for the value")
    learning_rate: float = Field(default=0.5, gt=0, description="Adam learning rate of the value change δ")
    kl_factor: float = Field(default=0.0625, ge=0, description="weight of the KL term on the essence prompts")
    weight_decay: float = Field(
        default=0.01, ge=0, description="weight of (‖δ‖/‖v‖)² (scale-free; the papers' ‖δ‖/‖v‖² is ~0 at their scale)"
    )
    clamp_norm_factor: float = Field(default=4.0, gt=0, description="‖δ‖ is clamped to this × ‖v‖")
    stop_nll: float = Field(default=0.05, ge=0, description="stop optimising once the target NLL is below this")
    kl_prompts: list[str] = Field(
        default_factory=lambda: ["{subject} is a"], description="essence prompts; {subject} is filled in"
    )
    kl_continuation_tokens: int = Field(
        default=0, ge=0, le=256,
        description="0: KL at the end of each essence prompt (the paper); N: KL over the model's own N-token "
        "continuation of each, sentence by sentence, leaving out sentences that state the edited fact",
    )
    use_covariance: bool = Field(default=True, description="use C⁻¹k (key statistics) rather than k in the update")
    ridge: float = Field(default=1e-4, ge=0, description="C + ridge·(tr C/d)·I, so C is invertible")
    statistics: StatisticsConfig = Field(default_factory=StatisticsConfig, description="where C comes from")

    _has_subject = field_validator("kl_prompts")(check_kl_prompts)


class Rome:
    """The ``rome`` editor. Keeps, per model, its layer choice, prefixes and key statistics."""

    def __init__(self, config: RomeConfig) -> None:
        self.config = config
        self.statistics = LayerStatistics(config.statistics)
        self.factorisations = FactorisationCache()
        self._layer: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._prefixes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def layer(self, model: Any, requests: Sequence[Any]) -> int:
        if model.torch_model not in self._layer:
            (self._layer[model.torch_model],) = resolve_layers(
                model, self.config.layer, requests, count=1, option="layer", fact_token=self.config.fact_token
            )
        return self._layer[model.torch_model]

    def prefixes(self, model: Any) -> list[str]:
        if model.torch_model not in self._prefixes:
            config = self.config
            self._prefixes[model.torch_model] = make_prefixes(model, config.prefixes, config.prefix_length, config.prefix_source)
        return self._prefixes[model.torch_model]

    def covariance(self, model: Any, layer: int) -> FactoredCovariance:
        """``C + ridge`` of the layer, factorised once per model (every edit then solves in ``O(d²)``)."""
        return self.factorisations.get(model, layer, self.statistics, ridge=self.config.ridge)

    def prepare(self, model: Any, requests: Sequence[Any]) -> None:
        """Choose the layer, make the prefixes, read ``C`` from ``model`` and factorise it (memoised per model)."""
        with weights_hashed_once(model):
            layer = self.layer(model, requests)
            self.prefixes(model)
            if self.config.use_covariance:
                self.covariance(model, layer)

    def weights_to_edit(self, model: Any, requests: Sequence[Any]) -> list[str]:
        return [model.adapter.weight_name("mlp_out", self.layer(model, requests))]

    def edit(self, model: Any, requests: Sequence[Any]) -> None:
        for request in requests:
            request.require_subject_in_prompt()
        self.prepare(model, requests)  # a no-op after the chain's prepare; first use otherwise
        layer = self.layer(model, requests)
        prefixes = self.prefixes(model)
        covariance = self.covariance(model, layer) if self.config.use_covariance else None
        module = model.adapter.module(model.torch_model, "mlp_out", layer)
        settings = ValueOptimisation.from_config(self.config)
        for request in requests:
            # k*, averaged over prefixes, read in the value optimisation's first pass
            value = optimise_value(model, module, request, prefixes, settings, key_module=module)
            key = value.key
            # v* = W k* + δ, so the residual v* − W k* is δ: k* on both sides of the update.
            left, right = rank_one_factors(key, value.delta, covariance)
            add_to_weight(model, layer, left, right)
