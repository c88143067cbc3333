"""AlphaEdit: MEMIT's update projected onto the null space of preserved knowledge (Fang et al., ICLR 2025).

MEMIT trades new facts against old ones through the ``λ C`` term; AlphaEdit removes the trade-off.
With ``P`` the projector onto the directions that the keys of ordinary text (second moment ``C``)
do not use, every update has the form ``Δ P``, so ``(W + Δ P) k₀ = W k₀`` for preserved keys
``k₀``: the model's outputs on them are untouched by construction. For each layer (as in MEMIT,
:mod:`.memit`, steps 1-2) the update is the paper's eq. 9

    Δ = R Kᵀ P (K_p K_pᵀ P + K Kᵀ P + α I)⁻¹

where ``K_p`` are the keys of the edits made *before* this batch: the editor accumulates
``K_p K_pᵀ`` per layer across sequential calls, so new edits also leave earlier edits alone.

The null space is chosen from the eigenvalues of ``C`` by a rule (``nullspace_rule``):
``"energy"`` protects the top eigenvectors holding ``energy_fraction`` of the spectrum's energy
(robust to the activation scale), ``"absolute"`` projects onto eigenvalues below
``nullspace_threshold`` (the paper's rule). ``α`` is ``l2 × E‖k‖²`` (scale-free). With
``covariance_weight`` ``λ > 0`` the solve also adds ``λ C``: what preserved keys have *inside* the
null space (little energy, but not none) is protected in proportion, as MEMIT protects all of it.

Each update is written as its factors ``R`` and ``(P A⁻¹ P K)ᵀ`` (``A`` the matrix of eq. 9 as
solved), never as a ``d × d`` matrix.

Editor state and cost: per model and layer the null space (:class:`.solve.Projector`: Householder
reflectors of the smaller of its eigenvector set and its complement's, from a certified fp32
eigendecomposition) and the fp64 inverse of the ``r × r`` system eq. 9 becomes in null-space
coordinates, kept current by one rank-``n`` Woodbury step per edit
(:class:`.solve.NullSpaceSolver`): at most ``8 d²`` bytes, an edit costs ``O(d k n + r² n)``, and
neither grows with the number of earlier edits. The layers, prefixes, statistics and projectors are
derived in :meth:`AlphaEdit.prepare` from the unedited model. The inverse is carried from edit
to edit: each step's journal holds the keys it added (:meth:`AlphaEdit.journal_state`, ``n × d``
per layer), and replaying the journal adds them again in the same order
(:meth:`AlphaEdit.restore_state`), which rebuilds the same fp64 inverse bit for bit. Undoing a
chain step does not remove its keys; use a new editor to start over.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from easyetcon.errors import JournalError
from easyetcon_intrinsic.covariance import LayerStatistics, StatisticsConfig, weights_hashed_once
from easyetcon_intrinsic.keys import activations_at, fact_keys, fact_positions, make_prefixes
from easyetcon_intrinsic.layers import default_span_size, resolve_layers
from easyetcon_intrinsic.solve import NullSpaceSolver, Projector, add_to_weight, nullspace_basis, trace_fp64
from easyetcon_intrinsic.values import ValueOptimisation, check_kl_prompts, optimise_value


class AlphaEditConfig(BaseModel):
    """Options of ``alphaedit``. Defaults follow the paper's Llama-3 settings where they are scale-free."""

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
    learning_rate: float = Field(default=0.1, gt=0, description="Adam learning rate of δ")
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
    nullspace_rule: Literal["energy", "absolute"] = Field(default="energy", description="how the null space of C is chosen")
    energy_fraction: float = Field(
        default=0.99, gt=0, le=1, description="rule 'energy': share of C's spectral energy that is protected"
    )
    nullspace_threshold: float = Field(
        default=1e-2, gt=0, description="rule 'absolute': eigenvalues below this span the null space"
    )
    l2: float = Field(default=1e-3, gt=0, description="α = l2 · E‖k‖², the ridge of the solve")
    covariance_weight: float = Field(
        default=0.0, ge=0,
        description="λ: also penalise λ·E‖Δ P k₀‖² over preserved keys, protecting their small components "
        "inside the null space (0: the paper's AlphaEdit)",
    )
    statistics: StatisticsConfig = Field(default_factory=StatisticsConfig, description="where C comes from")

    @field_validator("layers")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("name at least one layer")
        return value

    _has_subject = field_validator("kl_prompts")(check_kl_prompts)


class AlphaEdit:
    """The ``alphaedit`` editor. Keeps, per model: layers, prefixes, projectors and each layer's :class:`NullSpaceSolver`."""

    def __init__(self, config: AlphaEditConfig) -> None:
        self.config = config
        self.statistics = LayerStatistics(config.statistics)
        self._layers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._prefixes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._solvers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (generation, {layer: NullSpaceSolver})
        self._last_written: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (request ids, {layer: K})

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

    def projector(self, model: Any, layer: int) -> Projector:
        """``P`` onto the null space of the layer's key statistics (computed once per model)."""
        return self.solver(model, layer).projector

    def solver(self, model: Any, layer: int) -> NullSpaceSolver:
        """The layer's eq.-9 solver: its projector and the running inverse (made once per model,
        on the layer's weight device, from the statistics of the model it first sees)."""
        generation, solvers = self._solvers.get(model.torch_model, (None, {}))
        if generation != self.statistics.generation:  # new statistics texts: everything is remade
            solvers = {}
            self._solvers[model.torch_model] = (self.statistics.generation, solvers)
        if layer not in solvers:
            # taken: the projector and the inverse are what is kept, not C as well
            moment = self.statistics.take(model, [layer])[layer].mom2
            device = model.adapter.module(model.torch_model, "mlp_out", layer).weight.device
            moment = moment.to(device)
            projector = nullspace_basis(
                moment, rule=self.config.nullspace_rule, energy_fraction=self.config.energy_fraction,
                threshold=self.config.nullspace_threshold, null_moment=self.config.covariance_weight > 0,
            )
            alpha = self.config.l2 * trace_fp64(moment)
            solvers[layer] = NullSpaceSolver(projector, alpha, self.config.covariance_weight)
        return solvers[layer]

    def prepare(self, model: Any, requests: Sequence[Any]) -> None:
        """Choose the layers, make the prefixes, read ``C`` and build ``P`` of each layer from
        ``model`` (memoised per model)."""
        with weights_hashed_once(model):
            layers = self.layers(model, requests)
            self.prefixes(model)
            self.statistics.reserve(model, layers)  # one pass over the texts for all layers
            for layer in layers:
                self.solver(model, layer)

    def journal_state(self, model: Any, requests: Sequence[Any]) -> dict[str, torch.Tensor]:
        """The keys the last :meth:`edit` of ``requests`` added to ``K_p K_pᵀ``: ``edited_keys.<layer>``, fp32 ``(n, d_in)``."""
        ids = [r.request_id for r in requests]
        last = self._last_written.get(model.torch_model)
        if last is None or last[0] != ids:
            raise JournalError(
                f"alphaedit has no edit of request(s) {', '.join(map(str, ids[:5]))} to journal; "
                f"call journal_state right after edit with the same requests"
            )
        return {f"edited_keys.{layer}": keys.detach().cpu() for layer, keys in last[1].items()}

    def restore_state(self, model: Any, requests: Sequence[Any], state: dict[str, torch.Tensor]) -> None:
        """Add a replayed step's keys to ``K_p K_pᵀ``, as its :meth:`edit` did (call in journal order)."""
        layers = self.layers(model, requests)
        expected = {f"edited_keys.{layer}" for layer in layers}
        if set(state) != expected:
            raise JournalError(
                f"alphaedit's journal state for request(s) {', '.join(str(r.request_id) for r in requests[:5])} holds "
                f"{sorted(state)}, expected {sorted(expected)}: the journal was written with other layers or is damaged"
            )
        written: dict[int, torch.Tensor] = {}
        for layer in layers:
            keys = state[f"edited_keys.{layer}"]
            d_in = model.adapter.in_out_features(model.adapter.module(model.torch_model, "mlp_out", layer))[0]
            if keys.dim() != 2 or tuple(keys.shape) != (len(requests), d_in) or not keys.is_floating_point() or not torch.isfinite(keys).all():
                raise JournalError(
                    f"alphaedit's journal state edited_keys.{layer} has shape {tuple(keys.shape)} and dtype {keys.dtype}; "
                    f"expected finite floats of shape ({len(requests)}, {d_in}): the journal is damaged"
                )
            written[layer] = keys
        self._add_edited_keys(model, [r.request_id for r in requests], written)

    def _add_edited_keys(self, model: Any, request_ids: list[Any], written: dict[int, torch.Tensor]) -> None:
        """Make the keys earlier edits, per layer: the one place both :meth:`edit` and
        :meth:`restore_state` change the solvers, so a replay performs the same fp64 operations
        in the same order (on the solver's device whichever path the keys came by)."""
        for layer, keys in written.items():
            self.solver(model, layer).add_keys(keys)
        self._last_written[model.torch_model] = (list(request_ids), written)

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

        # 1. the hidden state after the last edited layer that states each target (as in MEMIT)
        settings = ValueOptimisation.from_config(self.config)
        values = [optimise_value(model, last_block, request, prefixes, settings) for request in requests]
        targets = torch.stack([value.original + value.delta for value in values])

        # 2. spread the residual over the layers, each update confined to the null space
        written: dict[int, torch.Tensor] = {}
        for index, layer in enumerate(layers):
            # a layer's keys do not depend on its own or later layers' weights: these are also
            # the keys after the whole edit, which step 3 protects
            keys = written[layer] = fact_keys(model, layer, requests, prefixes, self.config.fact_token)
            current = activations_at(model, last_block, prompts, positions, which="output")
            residuals = (targets - current) / (len(layers) - index)
            left, right = self.solver(model, layer).factors(keys, residuals)
            add_to_weight(model, layer, left, right)

        # 3. remember the keys just written, so later edits leave them alone
        self._add_edited_keys(model, [r.request_id for r in requests], written)
