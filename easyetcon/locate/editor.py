"""What every locate-then-edit editor shares, so that a new one is its algorithm and little else.

A locate-then-edit editor (ROME, MEMIT, AlphaEdit, EMMET, ...) writes a new value into the MLP
output projections (adapter kind ``mlp_out``) of some layers, at a fact token. Around each
algorithm the same things happen, and they live here:

* **Options, declared once.** :class:`LocateThenEditConfig` has the sections ``key:``
  (:class:`~easyetcon.locate.keys.KeyOptions`: the fact token and the prefixes), ``value:``
  (:class:`~easyetcon.locate.values.ValueOptions`: the ``δ`` optimisation) and ``statistics:``
  (:class:`~easyetcon.statistics.StatisticsConfig`); :class:`SpanConfig` adds MEMIT's ``layers``.
  An editor adds its own options and, with :func:`with_defaults`, its paper's defaults. The flat
  keys of easyetcon 0.1 (``steps: 25`` beside ``layers``) still load, with a
  :class:`FlatOptionsWarning`, until 0.3.
* **What is derived from the unedited model, once per model** (:class:`LocateThenEdit`): the
  layers (``auto``, ``trace`` or indices), the prefixes, the key statistics and what the editor
  derives from them per layer (:meth:`LocateThenEdit.prepare_layer`: a factorisation, a projector).
  The chain calls :meth:`LocateThenEdit.prepare` on the unedited model (and a resumed run on the
  freshly loaded one), so replaying a journal leaves the editor as the original run had it.
* **Request-shaped steps** (:class:`EditSites`, from :meth:`LocateThenEdit.locate`): each request
  is located once (its fact token behind every prefix), each edited module looked up once.
  :meth:`EditSites.optimise` is ROME's value at one module; :meth:`EditSites.hidden_targets` and
  :meth:`EditSites.spread` are MEMIT's target hidden states and their residual, spread over the
  layers; :meth:`EditSites.keys` and :meth:`EditSites.write` read keys and write an update.
"""

from __future__ import annotations

import sys
import warnings
import weakref
from collections.abc import Iterator, Sequence
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator
from pydantic.fields import FieldInfo

from easyetcon.activations import activations_at
from easyetcon.locate.keys import KeyOptions, LocatedRequest, locate_request, located_keys, make_prefixes
from easyetcon.locate.layers import default_span_size, resolve_layers
from easyetcon.locate.solve import add_to_weight
from easyetcon.locate.values import OptimisedValue, ValueOptions, optimise_value
from easyetcon.statistics import LayerStatistics, StatisticsConfig, weights_hashed_once

Section = TypeVar("Section", bound=BaseModel)

#: The release from which flat option keys are refused.
FLAT_KEYS_REMOVED_IN = "0.3"


class FlatOptionsWarning(FutureWarning):
    """Options given flat (``steps: 25``) that belong in a section (``value: {steps: 25}``).

    A ``FutureWarning``, so it is shown by default: the flat keys stop loading in easyetcon 0.3."""


def with_defaults(section: type[Section], *, name: str | None = None, doc: str | None = None, **defaults: Any) -> type[Section]:
    """``section`` with other defaults (an editor's paper's settings), every other part of each
    field (type, bounds, description) kept from the one declaration. ``name`` and ``doc`` name and
    describe the new model (by default those of ``section``)."""
    unknown = sorted(set(defaults) - set(section.model_fields))
    if unknown:
        raise TypeError(f"{section.__name__} has no option(s) {unknown}")
    fields: dict[str, Any] = {
        option: (section.model_fields[option].annotation, FieldInfo.merge_field_infos(section.model_fields[option], default=value))
        for option, value in defaults.items()
    }
    caller = sys._getframe(1).f_globals.get("__name__", section.__module__)  # the new model belongs to its caller's module
    return create_model(name or section.__name__, __base__=section, __doc__=doc or section.__doc__, __module__=caller, **fields)


class LocateThenEditConfig(BaseModel):
    """Options every locate-then-edit editor has: the ``key``, ``value`` and ``statistics`` sections."""

    model_config = ConfigDict(extra="forbid")

    key: KeyOptions = Field(default_factory=KeyOptions, description="where keys are read and values written")
    value: ValueOptions = Field(default_factory=ValueOptions, description="how the new value δ is optimised")
    statistics: StatisticsConfig = Field(default_factory=StatisticsConfig, description="where the key statistics C come from")

    @model_validator(mode="before")
    @classmethod
    def _sections_from_flat_keys(cls, data: Any) -> Any:
        """Move the flat keys of easyetcon 0.1 into their sections, with a :class:`FlatOptionsWarning`."""
        if not isinstance(data, dict):
            return data
        moved: dict[str, list[str]] = {}
        for section in ("key", "value"):
            options = cls.model_fields[section].annotation.model_fields
            flat = [name for name in data if name in options and name not in cls.model_fields]
            given = data.get(section) or {}
            if not flat or not isinstance(given, dict):  # a malformed section is the section's own error
                continue
            twice = sorted(set(flat) & set(given))
            if twice:
                raise ValueError(f"option(s) {twice} are given both flat and under '{section}:'; keep the '{section}:' ones")
            data = {**data, section: {**given, **{name: data[name] for name in flat}}}
            for name in flat:
                del data[name]
            moved[section] = flat
        if moved:
            where = "; ".join(f"{', '.join(names)} under '{section}:'" for section, names in moved.items())
            warnings.warn(
                f"{cls.__name__}: flat option keys are read until easyetcon {FLAT_KEYS_REMOVED_IN}; write {where} "
                f"(e.g. value: {{steps: 25}})",
                FlatOptionsWarning,
                stacklevel=2,
            )
        return data


class SpanConfig(LocateThenEditConfig):
    """A locate-then-edit editor that spreads its update over several layers (MEMIT and its kin)."""

    layers: Annotated[list[int], Field(min_length=1)] | Literal["auto", "trace"] = Field(
        default="auto",
        description="layers the update is spread over: indices, 'auto' (early-middle span from the model's "
        "depth) or 'trace' (the span with the largest causal effect on the first requests)",
    )


class EditSites:
    """The requests of one edit, located once, and the modules they are written to.

    ``located[i]`` is ``requests[i]``'s fact token behind every prefix (with ``contexts``, after
    ``contexts[i]``: what the model has already said after that prompt, see
    :func:`~easyetcon.locate.keys.locate_request`); ``modules[layer]`` the layer's ``mlp_out``;
    ``last_block`` the decoder block of the last edited layer, whose output MEMIT-style editors optimise.
    """

    def __init__(
        self, model: Any, requests: Sequence[Any], layers: Sequence[int], prefixes: Sequence[str], key: KeyOptions,
        contexts: Sequence[str] | None = None,
    ) -> None:
        self.model, self.layers = model, list(layers)
        contexts = [""] * len(requests) if contexts is None else list(contexts)
        if len(contexts) != len(requests):
            raise ValueError(f"{len(requests)} requests but {len(contexts)} contexts")
        self.located = [
            locate_request(model.tokenizer, request, prefixes, key.fact_token, format_prompt=model.format_prompt, context=context)
            for request, context in zip(requests, contexts)
        ]
        self.modules = {layer: model.adapter.module(model.torch_model, "mlp_out", layer) for layer in self.layers}
        self.last_block = model.adapter.blocks(model.torch_model)[self.layers[-1]]

    def keys(self, layer: int) -> torch.Tensor:
        """Each request's key at ``layer`` (the input of its ``mlp_out`` at the fact token, averaged
        over the prefixes) in the model as it is now: fp32 ``(n, d_in)``."""
        return located_keys(self.model, self.modules[layer], self.located)

    def optimise(self, located: LocatedRequest, options: ValueOptions, *, layer: int | None = None) -> OptimisedValue:
        """``δ`` for one request: at ``layer``'s ``mlp_out`` output, its key read in the same pass
        (ROME), or, without ``layer``, at the last block's output (MEMIT)."""
        if layer is None:
            return optimise_value(self.model, self.last_block, located, options)
        module = self.modules[layer]
        return optimise_value(self.model, module, located, options, key_module=module)

    def hidden_targets(self, options: ValueOptions) -> torch.Tensor:
        """The hidden state after the last edited layer that states each target: ``z_i = h_i + δ_i``,
        ``(n, d)``; with ``residual_at="prefixes"`` one per prefixed prompt, ``(n, prefixes, d)``."""
        values = [self.optimise(located, options) for located in self.located]
        if options.residual_at == "prefixes" and len(self.located[0].texts) > 1:
            return torch.stack([value.originals[1:] + value.delta for value in values])
        return torch.stack([value.original + value.delta for value in values])

    def spread(self, targets: torch.Tensor) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """For each layer in turn: ``(layer, keys, residuals)``, the residual still missing at the last
        edited layer divided among the layers left (MEMIT's eq. 14 step). Write each layer's update
        (:meth:`write`) before asking for the next: its keys and residual are read after it.

        ``targets`` ``(n, d)`` are measured at the bare prompts; ``(n, prefixes, d)`` (NAMET) at the
        prefixed prompts, each request's residual the mean of its prompts' residuals."""
        per_prefix = targets.dim() == 3
        first = 1 if per_prefix else 0  # the prefixed prompts, or the bare prompt only
        last = None if per_prefix else 1
        prompts = [text for located in self.located for text in located.texts[first:last]]
        positions = [position for located in self.located for position in located.positions[first:last]]
        for index, layer in enumerate(self.layers):
            keys = self.keys(layer)
            current = activations_at(self.model, self.last_block, prompts, positions, which="output")
            missing = (targets - current.view(targets.shape)).mean(dim=1) if per_prefix else targets - current
            yield layer, keys, missing / (len(self.layers) - index)

    def write(self, layer: int, left: torch.Tensor, right: torch.Tensor) -> None:
        """``W ← W + left @ right`` on ``layer``'s ``mlp_out`` (journaled as its two factors)."""
        add_to_weight(self.model, layer, left, right)


class LocateThenEdit:
    """Base class of a locate-then-edit editor: keeps, per model, what is derived from the unedited model.

    A subclass sets its config (a :class:`LocateThenEditConfig`), implements ``edit`` with
    :meth:`locate`, and, if it keeps something per layer, :meth:`prepare_layer`.
    """

    #: the option naming the edited layers: ``"layers"`` (a span, :class:`SpanConfig`) or ``"layer"`` (one)
    layer_option: ClassVar[str] = "layers"

    def __init__(self, config: LocateThenEditConfig) -> None:
        self.config = config
        self.statistics = LayerStatistics(config.statistics)
        self._layers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._prefixes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    @property
    def uses_statistics(self) -> bool:
        """Whether :meth:`prepare` reads key statistics (ROME without ``use_covariance`` does not)."""
        return True

    def layers(self, model: Any, requests: Sequence[Any]) -> list[int]:
        """The edited layers, resolved once per model (tracing, if asked, on these first requests)."""
        if model.torch_model not in self._layers:
            one = self.layer_option == "layer"
            count = 1 if one else default_span_size(model.adapter.num_layers(model.torch_model))
            self._layers[model.torch_model] = resolve_layers(
                model, getattr(self.config, self.layer_option), requests, count=count, option=self.layer_option,
                fact_token=self.config.key.fact_token,
            )
        return self._layers[model.torch_model]

    def prefixes(self, model: Any) -> list[str]:
        """The prefix templates keys and values are averaged over, made once per model."""
        if model.torch_model not in self._prefixes:
            key = self.config.key
            self._prefixes[model.torch_model] = make_prefixes(model, key.prefixes, key.prefix_length, key.prefix_source)
        return self._prefixes[model.torch_model]

    def prepare_layer(self, model: Any, layer: int) -> None:
        """Derive what the editor keeps per layer from the key statistics (``self.statistics``) of the
        unedited model; called by :meth:`prepare`, which runs before every edit, so memoise what it
        makes (per model and layer). Nothing by default."""

    def prepare(self, model: Any, requests: Sequence[Any]) -> None:
        """Choose the layers, make the prefixes, read the statistics of every layer in one pass and
        :meth:`prepare_layer` each (memoised per model: a no-op after the first call)."""
        with weights_hashed_once(model):
            layers = self.layers(model, requests)
            self.prefixes(model)
            if self.uses_statistics:
                self.statistics.reserve(model, layers)  # one pass over the texts for all layers
                for layer in layers:
                    self.prepare_layer(model, layer)

    def weights_to_edit(self, model: Any, requests: Sequence[Any]) -> list[str]:
        return [model.adapter.weight_name("mlp_out", layer) for layer in self.layers(model, requests)]

    def locate(self, model: Any, requests: Sequence[Any], contexts: Sequence[str] | None = None) -> EditSites:
        """Check every request names its subject, :meth:`prepare` (a no-op after the chain's), and
        locate the requests at the edited layers (each after its ``contexts`` entry, if given: an
        answer so far, see :class:`EditSites`)."""
        for request in requests:
            request.require_subject_in_prompt()
        self.prepare(model, requests)
        return EditSites(model, requests, self.layers(model, requests), self.prefixes(model), self.config.key, contexts)
