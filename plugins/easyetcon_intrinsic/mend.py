"""MEND: Model Editor Networks with gradient Decomposition (Mitchell et al., ICLR 2022, "Fast
Model Editing at Scale").

A fine-tuning step on one edit changes each linear weight ``W`` (``out × in``) by its gradient,
which for a batch of tokens is a sum of rank-one terms: ``∇W L = Σ_i δ_i u_iᵀ``, with ``u_i``
the weight's input at token ``i`` and ``δ_i`` the gradient of the loss at its output. MEND
learns to turn that raw gradient into a good edit: a small network ``g`` maps each pair
``(u_i, δ_i)`` to ``(ũ_i, δ̃_i)`` and the update is

    ΔW = − α_site · Σ_i δ̃_i ũ_iᵀ

of rank at most the number of tokens read, written as its two factors (``−α δ̃ᵀ`` and ``ũ``).
``α`` is a learned step per edited weight (site). One network is shared by the sites of one
shape, told apart by a learned scale and shift per site:

    x = [u, δ],  x̂ = (x − μ) / σ                      (per-feature statistics of the training rows)
    g(x) = x + σ ⊙ (s_site ⊙ U relu(V x̂ + b) + o_site)  (rank-r residual, U and o start at zero)

so an untrained network is the identity and its update is a plain gradient step of size ``α``.

Training (:func:`train_mend`, its own step with its own cost) sees only the requests it is given
(a tuning split, never test). For each request the update is computed from the edit prompt's
target NLL on the frozen model; the model is run with that update added (functionally, through
forward hooks, so ``ΔW`` stays differentiable) and the loss

    edit_weight · NLL(target | edit prompt and its rephrases)  +  locality_weight · KL(pre ‖ post)

(KL of the next-token distributions where the request's locality prompts are answered, or
other requests' facts where it has none) is backpropagated into ``g`` and the steps only. The
trained hypernetwork is saved as one verified safetensors file (:meth:`MendHypernetwork.save`):
its metadata holds the options, an identity of the model it was trained for and a digest of every
tensor, and :func:`read_mend` refuses a damaged file; the editor refuses a file trained for
another model or other weight shapes, naming the file and what to do.

What differs from the paper, and why: the input statistics are computed once from the training
rows (the paper keeps running averages during training), and each step is a log-parameter
(``α = initial_step · exp(ρ)``) so Adam moves it by a ratio rather than a fixed amount. The
editor is stateless: each edit depends only on the model as it finds it, so undo and journal
replay write the same factors.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from easyetcon.artefacts import read_artefact, save_artefact
from easyetcon.errors import ConfigError, RequestError
from easyetcon.locate.layers import resolve_layers
from easyetcon.locate.solve import add_to_weight
from easyetcon.text import IGNORE_INDEX, build_target_batch
from easyetcon.training import masked_token_nll, trainable_only
from easyetcon_intrinsic.ultraedit import keys_and_gradients

ARTEFACT_FORMAT = "easyetcon-mend/1"
DOCUMENT_KEY = "easyetcon.mend"  # its checksum is at "easyetcon.mend.sha256"
NETWORK_PARTS = ("mean", "std", "V", "b", "U", "scale", "shift")
#: Where the hypernetwork comes from, for error messages.
RETRAIN = "train one for this model with easyetcon_intrinsic.mend.train_mend(model, tune_requests).save(PATH)"


class MendOptions(BaseModel):
    """What a MEND hypernetwork is trained for, and how (:func:`train_mend`). Defaults follow the
    paper where they are scale-free: the last three layers' MLP output projections, ``c_edit`` 0.1."""

    model_config = ConfigDict(extra="forbid")

    layers: Annotated[list[int], Field(min_length=1)] | Literal["auto"] = Field(
        default="auto", description="edited layers: indices (negative from the end) or 'auto' (the last three)"
    )
    modules: Annotated[list[Literal["mlp_out", "mlp_in"]], Field(min_length=1)] = Field(
        default_factory=lambda: ["mlp_out"], description="which linear module of each layer is edited"
    )
    rank: int = Field(default=32, ge=1, description="rank r of the hypernetwork's residual block")
    positions: Literal["all", "target"] = Field(
        default="all",
        description="tokens whose (u, δ) are read: every token of prompt + target (the full gradient), or only "
        "the positions that predict a target token",
    )
    steps: int = Field(default=500, ge=1, description="training steps, one request each, in shuffled passes")
    learning_rate: float = Field(default=1e-3, gt=0, description="Adam learning rate of the hypernetwork")
    step_learning_rate: float = Field(default=1e-2, gt=0, description="Adam learning rate of each log-step ρ")
    initial_step: float = Field(
        default=0.05, gt=0,
        description="α before training, the size of the plain gradient step the untrained network makes: scale-dependent, "
        "choose it on a tuning split (the shipped world model: 0.05; the tiny random models: 1)",
    )
    edit_weight: float = Field(default=0.1, ge=0, description="c_edit: weight of the post-edit target NLL")
    locality_weight: float = Field(default=1.0, ge=0, description="c_loc: weight of KL(pre ‖ post) on locality prompts")
    seed: int = Field(default=0, description="seed of the initialisation and of the request order")


class MendConfig(MendOptions):
    """Options of ``mend``: the trained hypernetwork's file. The other options default to those it
    was trained with; one given explicitly must equal the file's (a check, not a change)."""

    hypernetwork: str = Field(
        description="file of the trained hypernetwork (easyetcon_intrinsic.mend.train_mend(model, requests).save(PATH))"
    )


# ------------------------------------------------------------------------------------------
# The hypernetwork
# ------------------------------------------------------------------------------------------


Site = tuple[str, int]  # (module kind, layer)


def site_name(site: Site) -> str:
    return f"{site[0]}.{site[1]}"


def group_name(shape: tuple[int, int]) -> str:
    """Sites of one ``(out, in)`` shape share a network."""
    return f"{shape[0]}x{shape[1]}"


def model_identity(model: Any) -> dict[str, Any]:
    """What a hypernetwork depends on besides the edited weights' shapes: the architecture, its
    depth and the tokenizer's vocabulary. Not the weights' bits, so a model edited before, or cast
    to another dtype, is still the model the hypernetwork was trained for."""
    vocabulary = sorted(model.tokenizer.get_vocab().items())
    return {
        "class": type(model.torch_model).__name__,
        "layers": model.adapter.num_layers(model.torch_model),
        "vocabulary": hashlib.sha256(json.dumps(vocabulary).encode()).hexdigest(),
    }


def site_shapes(model: Any, sites: Sequence[Site]) -> dict[str, tuple[int, int]]:
    """The ``(out, in)`` shape of each site's weight."""
    shapes = {}
    for kind, layer in sites:
        in_features, out_features = model.adapter.in_out_features(model.adapter.module(model.torch_model, kind, layer))
        shapes[site_name((kind, layer))] = (out_features, in_features)
    return shapes


@dataclass
class MendHypernetwork:
    """A trained (or identity-initialised) MEND editor for one model: per shape group the network
    parameters ``NETWORK_PARTS``, per site its log-step. ``training`` says what training cost."""

    options: MendOptions
    sites: list[Site]
    shapes: dict[str, tuple[int, int]]  # site name -> (out, in)
    identity: dict[str, Any]
    networks: dict[str, dict[str, torch.Tensor]]  # group -> part -> tensor
    log_steps: dict[str, torch.Tensor]  # site name -> () tensor
    training: dict[str, Any] = field(default_factory=dict)

    def group_of(self, site: Site) -> str:
        return group_name(self.shapes[site_name(site)])

    def modes(self, group: str) -> list[str]:
        """The site names sharing ``group``'s network, in order: row ``i`` of its scale and shift is site ``i``'s."""
        return [site_name(s) for s in self.sites if self.group_of(s) == group]

    def step(self, site: Site) -> torch.Tensor:
        return self.options.initial_step * torch.exp(self.log_steps[site_name(site)])

    def transform(self, site: Site, u: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ũ, δ̃)`` of rows ``u`` ``(n, in)`` and ``δ`` ``(n, out)``, fp32."""
        group = self.group_of(site)
        x = torch.cat([u, delta], dim=-1).float()
        net = {part: t.to(x.device) for part, t in self.networks[group].items()}  # no copy where they already are
        mode = self.modes(group).index(site_name(site))
        normalised = (x - net["mean"]) / net["std"]
        hidden = torch.relu(normalised @ net["V"].T + net["b"])
        out = x + net["std"] * (net["scale"][mode] * (hidden @ net["U"].T) + net["shift"][mode])
        return out.split([u.shape[-1], delta.shape[-1]], dim=-1)

    def update_factors(self, site: Site, u: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``ΔW = left @ right`` with ``left = −α δ̃ᵀ`` ``(out, n)`` and ``right = ũ`` ``(n, in)``."""
        u_new, delta_new = self.transform(site, u, delta)
        return -self.step(site).to(delta_new.device) * delta_new.T, u_new

    def parameters(self) -> list[torch.Tensor]:
        """What training optimises: every network part but the fixed input statistics, and the log-steps."""
        trained = [t for net in self.networks.values() for part, t in net.items() if part not in ("mean", "std")]
        return trained + list(self.log_steps.values())

    # ---- checks against a model ---------------------------------------------------------------
    def check_fits(self, model: Any, where: str) -> None:
        """A :class:`~easyetcon.errors.ConfigError` unless ``model`` is the model (architecture,
        depth, vocabulary) and has the weight shapes this hypernetwork was trained for."""
        found = model_identity(model)
        if found != self.identity:
            trained, this = self.identity, found
            raise ConfigError(
                f"{where} was trained for another model (a {trained.get('class')} of {trained.get('layers')} layers, "
                f"vocabulary {str(trained.get('vocabulary'))[:12]}); this is a {this['class']} of {this['layers']} layers, "
                f"vocabulary {this['vocabulary'][:12]}: {RETRAIN}"
            )
        for site in self.sites:
            kind, layer = site
            in_features, out_features = model.adapter.in_out_features(model.adapter.module(model.torch_model, kind, layer))
            if (out_features, in_features) != tuple(self.shapes[site_name(site)]):
                raise ConfigError(
                    f"{where} was trained for a {kind} weight of layer {layer} of (out, in) = "
                    f"{tuple(self.shapes[site_name(site)])}; this model's is ({out_features}, {in_features}): {RETRAIN}"
                )

    # ---- the file -----------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        named = {f"net.{group}.{part}": t for group, net in self.networks.items() for part, t in net.items()}
        named.update({f"log_step.{name}": t for name, t in self.log_steps.items()})
        return {name: t.detach().to("cpu", torch.float32).contiguous() for name, t in named.items()}

    def document(self) -> dict[str, Any]:
        return {
            "format": ARTEFACT_FORMAT,
            "options": self.options.model_dump(mode="json"),
            "sites": [list(site) for site in self.sites],
            "shapes": {name: list(shape) for name, shape in self.shapes.items()},
            "model": self.identity,
            "training": self.training,
        }

    def save(self, path: str | Path) -> Path:
        """Write the hypernetwork to ``path`` (one verified safetensors file,
        :func:`easyetcon.artefacts.save_artefact`; :func:`read_mend` checks it all on read)."""
        return save_artefact(path, DOCUMENT_KEY, self.document(), self.tensors())


def read_mend(path: str | Path, *, option: str = "hypernetwork") -> MendHypernetwork:
    """A hypernetwork saved by :meth:`MendHypernetwork.save`, verified: its metadata against its
    checksum, each tensor against its digest and the shapes its sites imply. A
    :class:`~easyetcon.errors.ConfigError` naming the option and the file when it is missing,
    damaged or not a MEND hypernetwork."""
    where = f"mend: option {option!r}: {str(path)!r}"
    document, tensors = read_artefact(path, DOCUMENT_KEY, ARTEFACT_FORMAT, where=where, what="a MEND hypernetwork", remedy=RETRAIN)
    try:
        options = MendOptions.model_validate(document["options"])
        sites = [(str(kind), int(layer)) for kind, layer in document["sites"]]
        shapes = {name: (int(shape[0]), int(shape[1])) for name, shape in document["shapes"].items()}
        identity = dict(document["model"])
    except (ValueError, KeyError, TypeError) as error:  # fields missing or malformed
        raise ConfigError(f"{where}: its metadata is not a MEND hypernetwork's ({error}); {RETRAIN}") from error
    if sorted(shapes) != sorted(site_name(s) for s in sites):
        raise ConfigError(f"{where}: its sites {sites} and shapes {sorted(shapes)} disagree; the file is damaged; {RETRAIN}")
    networks: dict[str, dict[str, torch.Tensor]] = {}
    hypernetwork = MendHypernetwork(options, sites, shapes, identity, networks, {}, dict(document.get("training", {})))
    for site in sites:
        hypernetwork.log_steps[site_name(site)] = tensors.get(f"log_step.{site_name(site)}", torch.zeros(0))
    for group in sorted({hypernetwork.group_of(s) for s in sites}):
        networks[group] = {part: tensors.get(f"net.{group}.{part}", torch.zeros(0)) for part in NETWORK_PARTS}
    wanted = {group: shapes_of_parts(*shapes[hypernetwork.modes(group)[0]], options.rank, len(hypernetwork.modes(group)))
              for group in networks}
    found = {group: {part: tuple(t.shape) for part, t in net.items()} for group, net in networks.items()}
    bad_steps = [name for name, t in hypernetwork.log_steps.items() if tuple(t.shape) != ()]
    if found != wanted or bad_steps:
        raise ConfigError(f"{where} has tensors of shapes {found}, which do not fit its sites and rank {options.rank}; {RETRAIN}")
    return hypernetwork


def shapes_of_parts(out_features: int, in_features: int, rank: int, modes: int) -> dict[str, tuple[int, ...]]:
    width = in_features + out_features
    return {"mean": (width,), "std": (width,), "V": (rank, width), "b": (rank,), "U": (width, rank),
            "scale": (modes, width), "shift": (modes, width)}


# ------------------------------------------------------------------------------------------
# Reading gradients and running the edited model without writing it
# ------------------------------------------------------------------------------------------


def edit_sites(model: Any, options: MendOptions) -> list[Site]:
    layers = options.layers
    if layers == "auto":
        depth = model.adapter.num_layers(model.torch_model)
        layers = list(range(max(0, depth - 3), depth))
    resolved = resolve_layers(model, layers, [], count=len(layers), option="layers")
    return [(kind, layer) for layer in resolved for kind in options.modules]


def edit_rows(model: Any, sites: Sequence[Site], requests: Sequence[Any], positions: str) -> dict[Site, tuple[torch.Tensor, torch.Tensor]]:
    """Per site, ``(u, δ)`` rows of the requests' edit prompts and targets: fp32 ``(n, in)`` and ``(n, out)``."""
    batch = build_target_batch(model.tokenizer, [model.format_prompt(r.prompt) for r in requests], [r.target_new for r in requests])
    empty = [r.request_id for r, labels in zip(requests, batch.labels) if not (labels != IGNORE_INDEX).any()]
    if empty:
        raise RequestError(f"mend: request(s) {empty}: the target encodes to no tokens")
    modules = {site: model.adapter.module(model.torch_model, *site) for site in sites}
    return keys_and_gradients(model, modules, batch.to(model.device), positions)


@contextmanager
def added_updates(model: Any, factors: dict[Site, tuple[torch.Tensor, torch.Tensor]]) -> Iterator[None]:
    """Within the block each site's module outputs ``W x + left (right x)``: the model with the
    updates, differentiable in them, while the weights stay as they are."""

    def hook_for(left: torch.Tensor, right: torch.Tensor):
        def hook(_module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            return output + ((args[0].float() @ right.T) @ left.T).to(output.dtype)
        return hook

    handles = [model.adapter.module(model.torch_model, *site).register_forward_hook(hook_for(*pair)) for site, pair in factors.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def answer_log_probs(model: Any, batch: Any) -> torch.Tensor:
    """fp32 next-token log-probabilities at the positions of ``batch`` that predict an answer
    token, ``(tokens, vocabulary)``: where the locality of an edit is asked."""
    logits = model.torch_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    predicts_answer = batch.labels[:, 1:] != IGNORE_INDEX
    return torch.log_softmax(logits[:, :-1][predicts_answer].float(), dim=-1)


# ------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------


@dataclass
class TrainingExample:
    """What one request's training step needs, computed once on the frozen model."""

    rows: dict[Site, tuple[torch.Tensor, torch.Tensor]]
    edit_batch: Any  # TargetBatch of the edit prompt and its rephrases, with the target
    locality: Any  # TargetBatch of the locality prompts with their answers, or None (nothing to keep)
    locality_before: torch.Tensor | None  # the answer positions' next-token log-probabilities before the edit


def training_example(model: Any, sites: Sequence[Site], request: Any, others: Sequence[Any], positions: str) -> TrainingExample:
    rows = edit_rows(model, sites, [request], positions)
    prompts = [request.prompt, *request.rephrase_prompts]
    edit_batch = build_target_batch(model.tokenizer, [model.format_prompt(p) for p in prompts], [request.target_new] * len(prompts))
    # other requests' facts stand in where a request brings no locality prompts
    probes = [(probe.prompt, probe.answer) for probe in request.locality]
    probes = probes or [(r.prompt, r.ground_truth or r.target_new) for r in others]
    if not probes:  # a lone request without locality prompts: only the edit term trains
        return TrainingExample(rows, edit_batch.to(model.device), None, None)
    locality = build_target_batch(model.tokenizer, [model.format_prompt(p) for p, _ in probes], [a for _, a in probes])
    locality = locality.to(model.device)
    with torch.no_grad():
        before = answer_log_probs(model, locality)
    return TrainingExample(rows, edit_batch.to(model.device), locality, before)


def post_edit_loss(model: Any, hypernetwork: MendHypernetwork, example: TrainingExample) -> tuple[torch.Tensor, torch.Tensor]:
    """``(NLL of the target after the edit, KL(pre ‖ post) on the locality prompts)``."""
    factors = {site: hypernetwork.update_factors(site, *example.rows[site]) for site in hypernetwork.sites}
    with added_updates(model, factors):
        batch = example.edit_batch
        logits = model.torch_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
        edit_nll = masked_token_nll(logits, batch.labels)
        if example.locality is None:
            return edit_nll, torch.zeros((), device=edit_nll.device)
        after = answer_log_probs(model, example.locality)
    before = example.locality_before
    return edit_nll, (before.exp() * (before - after)).sum(-1).mean()


def identity_hypernetwork(model: Any, options: MendOptions, rows: Sequence[dict[Site, tuple[torch.Tensor, torch.Tensor]]]) -> MendHypernetwork:
    """An untrained hypernetwork (``g`` the identity, every step ``initial_step``) whose input
    statistics are those of ``rows``, initialised from ``options.seed``."""
    sites = edit_sites(model, options)
    shapes = site_shapes(model, sites)
    generator = torch.Generator().manual_seed(options.seed)
    networks: dict[str, dict[str, torch.Tensor]] = {}
    hypernetwork = MendHypernetwork(options, sites, shapes, model_identity(model), networks,
                                    {site_name(s): torch.zeros(()) for s in sites})
    for group in dict.fromkeys(hypernetwork.group_of(s) for s in sites):
        members = [s for s in sites if hypernetwork.group_of(s) == group]
        x = torch.cat([torch.cat(example[s], dim=-1) for example in rows for s in members]).double()
        width = x.shape[1]
        std = x.std(0, unbiased=False) if len(x) > 1 else torch.ones(width, dtype=torch.float64)
        networks[group] = {
            "mean": x.mean(0).float().cpu(),
            "std": (std + 1e-8 * float(std.max().clamp(min=1e-30))).float().cpu(),  # a constant feature divides by ~0
            "V": torch.randn(options.rank, width, generator=generator) * width**-0.5,
            "b": torch.zeros(options.rank),
            "U": torch.zeros(width, options.rank),
            "scale": torch.ones(len(members), width),
            "shift": torch.zeros(len(members), width),
        }
    return hypernetwork


def train_mend(model: Any, requests: Sequence[Any], options: MendOptions | dict[str, Any] | None = None) -> MendHypernetwork:
    """Train a MEND hypernetwork for ``model`` on ``requests`` (a tuning split; see the module
    docstring): Adam on the network and the log-steps, one request per step, the model frozen.
    The same model, requests and options give the same tensors. The result's ``training`` holds
    the cost (``seconds``, ``steps``) and the mean post-edit target NLL on the training requests
    before and after training; save it with :meth:`MendHypernetwork.save` for the option
    ``hypernetwork`` of ``mend``."""
    options = options if isinstance(options, MendOptions) else MendOptions.model_validate(options or {})
    if not requests:
        raise ConfigError("train_mend needs at least one request to train on")
    started = time.perf_counter()
    sites = edit_sites(model, options)
    examples = [training_example(model, sites, r, [o for o in requests if o is not r][:2], options.positions) for r in requests]
    hypernetwork = identity_hypernetwork(model, options, [e.rows for e in examples])
    device = model.device
    for net in hypernetwork.networks.values():
        for part in net:
            net[part] = net[part].to(device)
    hypernetwork.log_steps = {name: t.to(device) for name, t in hypernetwork.log_steps.items()}
    trained = hypernetwork.parameters()
    steps_of = set(map(id, hypernetwork.log_steps.values()))
    for tensor in trained:
        tensor.requires_grad_(True)
    optimizer = torch.optim.Adam([
        {"params": [t for t in trained if id(t) not in steps_of], "lr": options.learning_rate},
        {"params": list(hypernetwork.log_steps.values()), "lr": options.step_learning_rate},
    ])
    generator = torch.Generator().manual_seed(options.seed)

    def mean_edit_nll() -> float:
        with torch.no_grad():
            return sum(float(post_edit_loss(model, hypernetwork, e)[0]) for e in examples) / len(examples)

    losses: list[float] = []
    with trainable_only(model.torch_model, []):  # the model frozen, dropout off
        before = mean_edit_nll()
        order: list[int] = []
        for _ in range(options.steps):
            if not order:
                order = torch.randperm(len(examples), generator=generator).tolist()
            edit_nll, kl = post_edit_loss(model, hypernetwork, examples[order.pop()])
            loss = options.edit_weight * edit_nll + options.locality_weight * kl
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        after = mean_edit_nll()
    for tensor in trained:
        tensor.requires_grad_(False)
    hypernetwork.networks = {g: {p: t.detach().cpu() for p, t in net.items()} for g, net in hypernetwork.networks.items()}
    hypernetwork.log_steps = {name: t.detach().cpu() for name, t in hypernetwork.log_steps.items()}
    tail = losses[-max(1, len(losses) // 10):]
    hypernetwork.training = {
        "requests": len(requests), "steps": options.steps, "seconds": round(time.perf_counter() - started, 3),
        "post_edit_nll_untrained": round(before, 6), "post_edit_nll_trained": round(after, 6),
        "final_loss": round(sum(tail) / len(tail), 6),
        "steps_alpha": {name: round(float(hypernetwork.step(site)), 6) for site in hypernetwork.sites for name in [site_name(site)]},
    }
    if not all(math.isfinite(v) for v in (before, after, *tail)):
        raise FloatingPointError("train_mend: the training loss is not finite; lower learning_rate or initial_step")
    return hypernetwork


# ------------------------------------------------------------------------------------------
# The editor
# ------------------------------------------------------------------------------------------


class Mend:
    """The ``mend`` editor: one update per call from the hypernetwork read from ``hypernetwork``."""

    def __init__(self, config: MendConfig) -> None:
        self.config = config
        self.hypernetwork = read_mend(config.hypernetwork)
        self.where = f"mend: option 'hypernetwork': {config.hypernetwork!r}"
        trained = self.hypernetwork.options
        given = config.model_fields_set - {"hypernetwork"}
        differ = [name for name in sorted(given) if getattr(config, name) != getattr(trained, name)]
        if "layers" in differ and isinstance(config.layers, list):  # the file holds the resolved layers too
            resolved = sorted({layer for _, layer in self.hypernetwork.sites})
            if sorted(config.layers) == resolved:
                differ.remove("layers")
        if differ:
            raise ConfigError(
                f"{self.where} was trained with "
                + ", ".join(f"{name}={getattr(trained, name)!r}" for name in differ)
                + f", not {', '.join(f'{name}={getattr(config, name)!r}' for name in differ)}: leave those options "
                f"out (they default to the file's), or train a hypernetwork with them"
            )
        self._fits: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def describe(self) -> dict[str, Any]:
        return {"hypernetwork": self.config.hypernetwork, "sites": [site_name(s) for s in self.hypernetwork.sites],
                "training": self.hypernetwork.training}

    def prepare(self, model: Any, requests: Sequence[Any]) -> None:
        if model.torch_model not in self._fits:
            self.hypernetwork.check_fits(model, self.where)
            self._fits[model.torch_model] = True

    def weights_to_edit(self, model: Any, requests: Sequence[Any]) -> list[str]:
        self.prepare(model, requests)
        return [model.adapter.weight_name(*site) for site in self.hypernetwork.sites]

    def edit(self, model: Any, requests: Sequence[Any]) -> None:
        self.prepare(model, requests)
        hypernetwork = self.hypernetwork
        # each request's gradient on its own, as in training; a batch edit adds their updates
        per_request = [edit_rows(model, hypernetwork.sites, [r], hypernetwork.options.positions) for r in requests]
        rows = {site: tuple(torch.cat([part[site][i] for part in per_request]) for i in (0, 1)) for site in hypernetwork.sites}
        with torch.no_grad():
            factors = {site: hypernetwork.update_factors(site, *rows[site]) for site in hypernetwork.sites}
        for (kind, layer), (left, right) in factors.items():  # all computed on the model as the call found it
            add_to_weight(model, layer, left, right, kind=kind)
