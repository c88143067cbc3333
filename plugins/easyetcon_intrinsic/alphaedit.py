"""AlphaEdit: MEMIT's update projected onto the null space of preserved knowledge (Fang et al., ICLR 2025).

MEMIT trades new facts against old ones through the ``λ C`` term; AlphaEdit removes the trade-off.
With ``P`` the projector onto the directions that the keys of ordinary text (second moment ``C``)
do not use, every update has the form ``Δ P``, so ``(W + Δ P) k₀ = W k₀`` for preserved keys
``k₀``: the model's outputs on them are untouched by construction. For each layer (as in MEMIT,
``easyetcon_intrinsic.memit``, steps 1-2) the update is the paper's eq. 9

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

Editor state and cost: per model and layer the null space (:class:`easyetcon.locate.solve.Projector`: Householder
reflectors of the smaller of its eigenvector set and its complement's, from a certified fp32
eigendecomposition) and the fp64 inverse of the ``r × r`` system eq. 9 becomes in null-space
coordinates, kept current by one rank-``n`` Woodbury step per edit
(:class:`easyetcon.locate.solve.NullSpaceSolver`): at most ``8 d²`` bytes, an edit costs ``O(d k n + r² n)``, and
neither grows with the number of earlier edits. The layers, prefixes, statistics and projectors are
derived in ``prepare`` from the unedited model. The inverse is carried from edit
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
from pydantic import Field

from easyetcon.devices import execution_device
from easyetcon.errors import JournalError
from easyetcon.protocols import LastEditState
from easyetcon.locate import EditSites, LocateThenEdit, SpanConfig, ValueOptions, with_defaults
from easyetcon.locate.solve import NullSpaceSolver, Projector, nullspace_basis, trace_fp64

AlphaEditValueOptions = with_defaults(ValueOptions, learning_rate=0.1, clamp_norm_factor=0.75)


class AlphaEditConfig(SpanConfig):
    """Options of ``alphaedit``. Defaults follow the paper's Llama-3 settings where they are scale-free."""

    value: AlphaEditValueOptions = Field(default_factory=AlphaEditValueOptions, description="how the target hidden states are optimised")
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


class AlphaEdit(LocateThenEdit):
    """The ``alphaedit`` editor. Keeps, per model: layers, prefixes, projectors and each layer's :class:`NullSpaceSolver`."""

    def __init__(self, config: AlphaEditConfig) -> None:
        super().__init__(config)
        self._solvers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (generation, {layer: NullSpaceSolver})
        self._last_written = LastEditState("alphaedit")  # the keys of the last edit, {layer: K}

    def projector(self, model: Any, layer: int) -> Projector:
        """``P`` onto the null space of the layer's key statistics (computed once per model)."""
        return self.solver(model, layer).projector

    def solver(self, model: Any, layer: int) -> NullSpaceSolver:
        """The layer's eq.-9 solver: its projector and the running inverse (made once per model,
        on the device the layer computes on, from the statistics of the model it first sees)."""
        generation, solvers = self._solvers.get(model.torch_model, (None, {}))
        if generation != self.statistics.generation:  # new statistics texts: everything is remade
            solvers = {}
            self._solvers[model.torch_model] = (self.statistics.generation, solvers)
        if layer not in solvers:
            # taken: the projector and the inverse are what is kept, not C as well
            moment = self.statistics.take(model, [layer])[layer].mom2
            device = execution_device(model.adapter.module(model.torch_model, "mlp_out", layer))
            moment = moment.to(device)
            projector = nullspace_basis(
                moment, rule=self.config.nullspace_rule, energy_fraction=self.config.energy_fraction,
                threshold=self.config.nullspace_threshold, null_moment=self.config.covariance_weight > 0,
            )
            alpha = self.config.l2 * trace_fp64(moment)
            solvers[layer] = NullSpaceSolver(projector, alpha, self.config.covariance_weight)
        return solvers[layer]

    prepare_layer = solver

    def journal_state(self, model: Any, requests: Sequence[Any]) -> dict[str, torch.Tensor]:
        """The keys the last :meth:`edit` of ``requests`` added to ``K_p K_pᵀ``: ``edited_keys.<layer>``, fp32 ``(n, d_in)``."""
        written = self._last_written.recall(model, requests)
        return {f"edited_keys.{layer}": keys.detach().cpu() for layer, keys in written.items()}

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
        self._last_written.remember(model, request_ids, written)

    def edit(self, model: Any, requests: Sequence[Any]) -> None:
        sites = self.locate(model, requests)
        # 1. the hidden state after the last edited layer that states each target (as in MEMIT)
        targets = sites.hidden_targets(self.config.value)
        self.insert(model, sites, targets)

    def insert(self, model: Any, sites: EditSites, targets: torch.Tensor) -> None:
        """Steps 2-3: write the located requests' target hidden states (``targets``, ``(n, d)``)
        and remember their keys."""
        # 2. spread the residual over the layers, each update confined to the null space
        written: dict[int, torch.Tensor] = {}
        for layer, keys, residuals in sites.spread(targets):
            # a layer's keys do not depend on its own or later layers' weights: these are also
            # the keys after the whole edit, which step 3 protects
            written[layer] = keys
            left, right = self.solver(model, layer).factors(keys, residuals)
            sites.write(layer, left, right)
        # 3. remember the keys just written, so later edits leave them alone
        self._add_edited_keys(model, [located.request.request_id for located in sites.located], written)
