"""lora-merge: train a LoRA adapter per edit (or per batch) with PEFT, merge adapters into the
base weights with PEFT's combination types.

1. **Train.** The model is wrapped with PEFT (``get_peft_model``) on the target modules, only
   the LoRA factors train (Adam, NLL of the target tokens only), the factors are copied out and
   the wrapper is removed again (``unload``): the model's modules and parameter names never
   change, so the chain's snapshots and undo see a plain ``transformers`` model.
2. **Merge.** Adapters are combined with one of PEFT's combination types (``strategy``):
   ``linear`` (task arithmetic), ``ties``, ``dare_linear``, ``dare_ties`` or ``magnitude_prune``,
   with ``density`` for the pruning ones.

   * ``merge_space: delta`` (default) applies PEFT's merging functions
     (:mod:`peft.utils.merge_utils`) to each adapter's full weight change ``ΔW = s·B·A``: the
     task vectors of the TIES and DARE papers. Any ranks merge.
   * ``merge_space: factors`` calls PEFT's ``add_weighted_adapter``, which combines the ``A``
     and ``B`` factors separately. PEFT needs equal ranks for that; so does this editor.

3. **Windows of ``merge_every`` edits.** Adapters are kept separately in a *window*. After
   every edit the window's adapters are merged together, with the strategy, on top of the
   weights from before the window, so the model always answers with every edit so far. After
   ``merge_every`` adapters the window closes: its merge becomes the base of the next window.
   With ``merge_every: 1`` every adapter is merged on its own as soon as it is trained.

In a float16/bfloat16 model the LoRA factors are fp32 (trained and merged in fp32); the merged
change is added to the window's base weights in fp32 and cast to the model's dtype once.

Each step's change is a plain weight change of the declared base weights (the LoRA target
modules' ``weight``), so the chain's record undoes it bit-exactly, whatever the strategy. The
window lives in the editor: before each edit the editor fingerprints the target weights; if an
undo rolled them back to an earlier point of the window, the adapters after that point are
dropped, and if anything else changed them a new window starts from the current weights.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from easyetcon.errors import EasyEtconError
from easyetcon.requests import EditRequest
from easyetcon.text import build_target_batch
from easyetcon.training import masked_token_nll

logger = logging.getLogger(__name__)

MIN_PEFT_VERSION = "0.19"  # DARE rescales kept values by 1/density from this release on
STRATEGIES = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")
PRUNING_STRATEGIES = ("ties", "dare_linear", "dare_ties", "magnitude_prune")
DEFAULT_DENSITY = 0.5
TRAINING_ADAPTER = "easyetcon_edit"


class MergeError(EasyEtconError, ValueError):
    """Adapters cannot be merged as asked (unequal ranks for a factor merge, different modules)."""


class LoraMergeConfig(BaseModel):
    """Options of ``lora-merge``."""

    model_config = ConfigDict(extra="forbid")

    rank: int = Field(default=4, ge=1, le=1024, description="LoRA rank r of each adapter")
    alpha: float | None = Field(default=None, gt=0, description="LoRA alpha (scaling alpha / r); default: r")
    modules: list[Literal["mlp_in", "mlp_out", "attn_out"]] = Field(
        default=["mlp_out"], min_length=1, description="which projections of each layer get an adapter"
    )
    layers: list[int] | None = Field(default=None, min_length=1, description="layers with adapters (negative counts from the end); default: all")
    steps: int = Field(default=60, ge=1, le=10_000, description="Adam steps per adapter")
    learning_rate: float = Field(default=3e-3, gt=0, description="Adam learning rate of the LoRA factors")
    stop_loss: float = Field(
        default=0.2, ge=0, description="stop training once the target NLL is below this (less training, less collateral change)"
    )
    strategy: Literal["linear", "ties", "dare_linear", "dare_ties", "magnitude_prune"] = Field(
        default="linear", description="PEFT combination type used to merge adapters"
    )
    density: float | None = Field(
        default=None, gt=0, le=1,
        description=f"share of values kept by ties, dare_linear, dare_ties, magnitude_prune (default {DEFAULT_DENSITY})",
    )
    majority_sign_method: Literal["total", "frequency"] = Field(default="total", description="sign election of ties and dare_ties")
    adapter_weight: float = Field(default=1.0, gt=0, description="weight of every adapter in the merge (TIES' lambda)")
    merge_every: int = Field(default=1, ge=1, description="adapters per merge window (1: merge each adapter alone)")
    merge_space: Literal["delta", "factors"] = Field(
        default="delta", description="merge full weight changes (delta) or LoRA factors with add_weighted_adapter (factors)"
    )
    seed: int = Field(default=0, description="seed of adapter initialisation and of DARE's random pruning")

    @model_validator(mode="after")
    def _density_only_for_pruning(self) -> LoraMergeConfig:
        if self.density is not None and self.strategy not in PRUNING_STRATEGIES:
            raise ValueError(
                f"density applies to {', '.join(PRUNING_STRATEGIES)}; strategy {self.strategy!r} keeps every value"
            )
        return self

    @property
    def effective_density(self) -> float | None:
        if self.strategy not in PRUNING_STRATEGIES:
            return None
        return self.density if self.density is not None else DEFAULT_DENSITY

    @property
    def effective_alpha(self) -> float:
        return self.alpha if self.alpha is not None else float(self.rank)


def require_peft() -> None:
    """Fail clearly when PEFT is missing or older than the release whose DARE rescales correctly."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import Version

    try:
        found = version("peft")
    except PackageNotFoundError:
        raise EasyEtconError(f"lora-merge needs peft>={MIN_PEFT_VERSION}: pip install 'peft>={MIN_PEFT_VERSION}'") from None
    if Version(found) < Version(MIN_PEFT_VERSION):
        raise EasyEtconError(
            f"lora-merge needs peft>={MIN_PEFT_VERSION} (DARE rescaling); found {found}: "
            f"pip install -U 'peft>={MIN_PEFT_VERSION}'"
        )


# ------------------------------------------------------------------------------------------
# Adapters
# ------------------------------------------------------------------------------------------


@dataclass
class LoraAdapter:
    """The trained factors of one adapter: ``ΔW = scaling · B @ A`` per module."""

    lora_A: dict[str, torch.Tensor]  # module name -> (r, in_features)
    lora_B: dict[str, torch.Tensor]  # module name -> (out_features, r)
    scaling: float
    fan_in_fan_out: bool = False  # GPT-2's Conv1D stores weights as (in, out)
    request_ids: list[str] = field(default_factory=list)
    final_loss: float | None = None

    @property
    def modules(self) -> list[str]:
        return list(self.lora_A)

    @property
    def rank(self) -> int:
        return int(next(iter(self.lora_A.values())).shape[0])

    def delta(self, module: str) -> torch.Tensor:
        """The weight change of ``module`` in the orientation its ``weight`` is stored in."""
        change = (self.lora_B[module].float() @ self.lora_A[module].float()) * self.scaling
        return change.T if self.fan_in_fan_out else change


@contextmanager
def peft_wrapped(torch_model: torch.nn.Module, configs: dict[str, Any], *, seed: int) -> Iterator[Any]:
    """``torch_model`` wrapped by PEFT with one adapter per ``configs`` entry (name -> LoraConfig);
    the wrapper is removed afterwards (``unload``, nothing merged) and every parameter's
    ``requires_grad`` is restored, also on error."""
    from peft import get_peft_model

    flags = {name: p.requires_grad for name, p in torch_model.named_parameters()}
    names = list(configs)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        torch.manual_seed(seed)
        # fp32 factors on a float16/bfloat16 model (PEFT's default, relied on here): Adam steps
        # them in fp32 and the merged change is added to the base weights in fp32, then cast once
        peft_model = get_peft_model(torch_model, configs[names[0]], adapter_name=names[0], autocast_adapter_dtype=True)
        for name in names[1:]:
            peft_model.add_adapter(name, configs[name], autocast_adapter_dtype=True)
    try:
        yield peft_model
    finally:
        peft_model.unload()
        for name, p in torch_model.named_parameters():
            p.requires_grad_(flags.get(name, p.requires_grad))


def lora_config(modules: Sequence[str], *, rank: int, alpha: float, fan_in_fan_out: bool) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=list(modules), lora_dropout=0.0, bias="none",
        fan_in_fan_out=fan_in_fan_out, init_lora_weights=True,
    )


def train_lora_adapter(
    model: Any, modules: Sequence[str], requests: Sequence[EditRequest], config: LoraMergeConfig, *, seed: int
) -> LoraAdapter:
    """Train one LoRA adapter on ``modules`` so the model predicts every request's target
    (loss on the target tokens only); the model itself is left exactly as it was."""
    torch_model = model.torch_model
    transposed = model.adapter.is_transposed(torch_model.get_submodule(modules[0]))
    settings = lora_config(modules, rank=config.rank, alpha=config.effective_alpha, fan_in_fan_out=transposed)
    batch = build_target_batch(model.tokenizer, [model.format_prompt(r.prompt) for r in requests], [r.target_new for r in requests])
    batch = batch.to(model.device)
    was_training = torch_model.training
    loss_value = None
    with peft_wrapped(torch_model, {TRAINING_ADAPTER: settings}, seed=seed) as peft_model:
        try:
            peft_model.eval()  # no dropout; gradients still flow
            factors = [p for name, p in peft_model.named_parameters() if TRAINING_ADAPTER in name]
            optimizer = torch.optim.Adam(factors, lr=config.learning_rate)
            for _ in range(config.steps):
                logits = peft_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
                loss = masked_token_nll(logits, batch.labels)
                loss_value = loss.item()
                if loss_value < config.stop_loss:
                    break
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            layers = {m: torch_model.get_submodule(m) for m in modules}
            adapter = LoraAdapter(
                {m: layer.lora_A[TRAINING_ADAPTER].weight.detach().float().cpu().clone() for m, layer in layers.items()},
                {m: layer.lora_B[TRAINING_ADAPTER].weight.detach().float().cpu().clone() for m, layer in layers.items()},
                scaling=float(layers[modules[0]].scaling[TRAINING_ADAPTER]),
                fan_in_fan_out=transposed,
                request_ids=[r.request_id for r in requests],
                final_loss=loss_value,
            )
        finally:
            torch_model.train(was_training)
    return adapter


# ------------------------------------------------------------------------------------------
# Merging
# ------------------------------------------------------------------------------------------


def merge_adapters(
    adapters: Sequence[LoraAdapter],
    *,
    strategy: str = "linear",
    density: float | None = None,
    weights: Sequence[float] | None = None,
    majority_sign_method: str = "total",
    space: Literal["delta", "factors"] = "delta",
    seed: int = 0,
    model: Any = None,
) -> dict[str, torch.Tensor]:
    """The merged weight change of each module (in its ``weight``'s orientation).

    ``space="delta"`` merges each adapter's full ``ΔW`` with :mod:`peft.utils.merge_utils`;
    ``space="factors"`` loads the adapters into a PEFT wrapper of ``model`` and calls PEFT's
    ``add_weighted_adapter`` (A and B merged separately; equal ranks needed).
    """
    check_mergeable(adapters, strategy=strategy, density=density, space=space)
    weights = list(weights) if weights is not None else [1.0] * len(adapters)
    if len(weights) != len(adapters):
        raise MergeError(f"{len(weights)} weights for {len(adapters)} adapters")
    if space == "factors":
        if model is None:
            raise MergeError("merging LoRA factors needs the model the adapters belong to (model=...)")
        return _merge_factors(model, adapters, strategy, density, weights, majority_sign_method, seed)
    from peft.utils import merge_utils

    merged = {}
    for position, module in enumerate(adapters[0].modules):
        deltas = [adapter.delta(module) for adapter in adapters]
        weight_tensor = torch.tensor(weights, dtype=torch.float32)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed * 1_000_003 + position)  # DARE's random drop, reproducible
            if strategy == "linear":
                merged[module] = merge_utils.task_arithmetic(deltas, weight_tensor)
            elif strategy == "magnitude_prune":
                merged[module] = merge_utils.magnitude_prune(deltas, weight_tensor, density)
            elif strategy == "dare_linear":
                merged[module] = merge_utils.dare_linear(deltas, weight_tensor, density)
            elif strategy == "ties":
                merged[module] = merge_utils.ties(deltas, weight_tensor, density, majority_sign_method)
            else:  # dare_ties
                merged[module] = merge_utils.dare_ties(deltas, weight_tensor, density, majority_sign_method)
    return merged


def check_mergeable(adapters: Sequence[LoraAdapter], *, strategy: str, density: float | None, space: str) -> None:
    """Raise :class:`MergeError` for a merge PEFT would refuse or that would be meaningless."""
    if not adapters:
        raise MergeError("no adapters to merge")
    if strategy not in STRATEGIES:
        raise MergeError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    if space not in ("delta", "factors"):
        raise MergeError(f"unknown merge space {space!r}; choose 'delta' or 'factors'")
    if strategy in PRUNING_STRATEGIES and (density is None or not 0 < density <= 1):
        raise MergeError(f"strategy {strategy!r} needs a density in (0, 1], got {density}")
    modules = adapters[0].modules
    for index, adapter in enumerate(adapters):
        if adapter.modules != modules:
            raise MergeError(f"adapter {index} targets {adapter.modules}, adapter 0 targets {modules}; merge adapters of one editor")
    ranks = [adapter.rank for adapter in adapters]
    if space == "factors" and len(set(ranks)) > 1:
        raise MergeError(
            f"adapters of different ranks {sorted(set(ranks))} cannot be merged with strategy {strategy!r} in "
            f"merge_space 'factors': PEFT's add_weighted_adapter combines the LoRA factors and needs one rank. "
            f"Train them with one rank, or use merge_space 'delta' (merges full weight changes of any rank)"
        )


def _merge_factors(
    model: Any, adapters: Sequence[LoraAdapter], strategy: str, density: float | None,
    weights: list[float], majority_sign_method: str, seed: int,
) -> dict[str, torch.Tensor]:
    torch_model = model.torch_model
    modules = adapters[0].modules
    configs = {
        f"adapter_{i}": lora_config(modules, rank=a.rank, alpha=a.scaling * a.rank, fan_in_fan_out=a.fan_in_fan_out)
        for i, a in enumerate(adapters)
    }
    with peft_wrapped(torch_model, configs, seed=seed) as peft_model:
        with torch.no_grad():
            for (name, _), adapter in zip(configs.items(), adapters):
                for module in modules:
                    layer = torch_model.get_submodule(module)
                    layer.lora_A[name].weight.copy_(adapter.lora_A[module])
                    layer.lora_B[name].weight.copy_(adapter.lora_B[module])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            peft_model.add_weighted_adapter(
                list(configs), weights, "merged", combination_type=strategy, density=density,
                majority_sign_method=majority_sign_method,
            )
        return {m: torch_model.get_submodule(m).get_delta_weight("merged").detach().float().cpu() for m in modules}


# ------------------------------------------------------------------------------------------
# The editor
# ------------------------------------------------------------------------------------------


def fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass
class MergeWindow:
    """Adapters not yet closed into the base, and the weights they are merged onto."""

    base: dict[str, torch.Tensor]
    adapters: list[LoraAdapter]
    fingerprints: list[str]  # of the target weights after 0, 1, ... adapters of this window


class LoraMerge:
    """The ``lora-merge`` editor (see the module docstring)."""

    def __init__(self, config: LoraMergeConfig) -> None:
        require_peft()
        self.config = config
        self.window: MergeWindow | None = None
        self.adapters_trained = 0

    def target_modules(self, model: Any) -> list[str]:
        count = model.adapter.num_layers(model.torch_model)
        layers = self.config.layers if self.config.layers is not None else list(range(count))
        for layer in layers:
            model.adapter.check_layer(model.torch_model, layer)
        ordered = list(dict.fromkeys(layer % count for layer in layers))
        return [model.adapter.module_name(kind, layer) for layer in ordered for kind in self.config.modules]

    def weights_to_edit(self, model: Any, requests: Sequence[EditRequest]) -> list[str]:
        """The base ``weight`` of every LoRA target module: the only parameters a merge changes."""
        return [f"{module}.weight" for module in self.target_modules(model)]

    def edit(self, model: Any, requests: Sequence[EditRequest]) -> None:
        modules = self.target_modules(model)
        names = [f"{module}.weight" for module in modules]
        current = {name: model.parameter(name).detach().to("cpu", copy=True) for name in names}
        window = self._window_for(current)
        adapter = train_lora_adapter(model, modules, requests, self.config, seed=self.config.seed + self.adapters_trained)
        adapters = [*window.adapters, adapter]
        merged = merge_adapters(
            adapters, strategy=self.config.strategy, density=self.config.effective_density,
            weights=[self.config.adapter_weight] * len(adapters),
            majority_sign_method=self.config.majority_sign_method, space=self.config.merge_space,
            seed=self.config.seed + len(window.fingerprints) * 7919 + self.adapters_trained, model=model,
        )
        updated = {}
        with torch.no_grad():
            for module, name in zip(modules, names):
                parameter = model.parameter(name)
                value = (window.base[name].float() + merged[module]).to(parameter.dtype)
                parameter.copy_(value.to(parameter.device))
                updated[name] = parameter.detach().to("cpu", copy=True)
        # the editor's state changes only once the edit has succeeded
        self.adapters_trained += 1
        if len(adapters) >= self.config.merge_every:
            self.window = MergeWindow(updated, [], [fingerprint(updated)])
        else:
            self.window = MergeWindow(window.base, adapters, [*window.fingerprints, fingerprint(updated)])

    def _window_for(self, current: dict[str, torch.Tensor]) -> MergeWindow:
        """The open window, cut back to what the current weights still contain."""
        seen = fingerprint(current)
        window = self.window
        if window is not None and window.base.keys() == current.keys() and seen in window.fingerprints:
            kept = window.fingerprints.index(seen)  # an undo may have removed the newest adapters
            return MergeWindow(window.base, window.adapters[:kept], window.fingerprints[: kept + 1])
        if window is not None:
            logger.info("lora-merge: target weights changed outside this editor; starting a new merge window")
        return MergeWindow(current, [], [seen])
