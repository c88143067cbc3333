"""Architecture adapters: where a model family keeps its blocks, MLP projections, final norm,
embeddings and LM head. Editors ask an adapter, never a model's name.

This module is also an internal plugin: it registers the built-in adapters through the same
``easyetcon_register_model_adapters`` hook a third party uses to add an architecture.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from easyetcon.errors import UnsupportedModelError
from easyetcon.hookspecs import hookimpl

if TYPE_CHECKING:  # torch is imported where it runs: loading the host stays fast (`easyetcon --help`)
    import torch
    from torch import nn

MODULE_KINDS = ("mlp_in", "mlp_out", "attn_out")


def _conv1d_class() -> type | None:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - very old transformers
        return None
    return Conv1D


@dataclass(frozen=True)
class ArchitectureAdapter:
    """Dotted module paths of one architecture. Block-relative paths (``mlp_in``, ``mlp_out``,
    ``attn_out``) are joined to ``layers.<index>``.

    ``mlp_in`` is the projection into the FFN's hidden width (``up_proj``; GPT-2's ``c_fc``) and
    ``mlp_out`` the projection back to the residual stream (``down_proj``; ``c_proj``): the
    matrix ROME and MEMIT edit, whose *input* is the key and whose *output* is the value.
    """

    name: str
    layers: str
    mlp_in: str
    mlp_out: str
    final_norm: str
    embed: str
    lm_head: str
    attn_out: str | None = None

    # ---- names -----------------------------------------------------------------------------
    def module_name(self, kind: str, layer: int) -> str:
        """Full dotted name, e.g. ``module_name("mlp_out", 3) == "model.layers.3.mlp.down_proj"``."""
        if kind not in MODULE_KINDS:
            raise ValueError(f"unknown module kind {kind!r}; choose from {', '.join(MODULE_KINDS)}")
        relative = getattr(self, kind)
        if relative is None:
            raise UnsupportedModelError(f"adapter {self.name!r} does not know the {kind} module")
        return f"{self.layers}.{layer}.{relative}"

    def weight_name(self, kind: str, layer: int) -> str:
        return f"{self.module_name(kind, layer)}.weight"

    # ---- modules ---------------------------------------------------------------------------
    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.layers)

    def num_layers(self, model: nn.Module) -> int:
        return len(self.blocks(model))

    def module(self, model: nn.Module, kind: str, layer: int) -> nn.Module:
        self.check_layer(model, layer)
        return model.get_submodule(self.module_name(kind, layer))

    def check_layer(self, model: nn.Module, layer: int) -> None:
        count = self.num_layers(model)
        if not -count <= layer < count:
            raise IndexError(f"layer {layer} does not exist: {type(model).__name__} has {count} layers (0..{count - 1})")

    def final_norm_module(self, model: nn.Module) -> nn.Module:
        return model.get_submodule(self.final_norm)

    def lm_head_module(self, model: nn.Module) -> nn.Module:
        return self._submodule_or(model, self.lm_head, model.get_output_embeddings)

    def embed_module(self, model: nn.Module) -> nn.Module:
        return self._submodule_or(model, self.embed, model.get_input_embeddings)

    @staticmethod
    def _submodule_or(model: nn.Module, path: str, fallback: Any) -> nn.Module:
        # Module names drift across transformers releases (GPT-NeoX: embed_out -> lm_head).
        try:
            return model.get_submodule(path)
        except AttributeError:
            module = fallback()
            if module is None:
                raise
            return module

    # ---- weights in one orientation --------------------------------------------------------
    @staticmethod
    def is_transposed(module: nn.Module) -> bool:
        """True for GPT-2's Conv1D, which stores its weight as (in_features, out_features)."""
        conv1d = _conv1d_class()
        return conv1d is not None and isinstance(module, conv1d)

    @classmethod
    def out_in_weight(cls, module: nn.Module) -> torch.Tensor:
        """The module's weight as an (out_features, in_features) view, whatever its storage."""
        weight = module.weight
        return weight.T if cls.is_transposed(module) else weight

    @classmethod
    def in_out_features(cls, module: nn.Module) -> tuple[int, int]:
        rows, cols = module.weight.shape
        return (rows, cols) if cls.is_transposed(module) else (cols, rows)


# ------------------------------------------------------------------------------------------
# Built-in adapters
# ------------------------------------------------------------------------------------------

_LLAMA_LIKE = dict(
    layers="model.layers",
    mlp_in="mlp.up_proj",
    mlp_out="mlp.down_proj",
    attn_out="self_attn.o_proj",
    final_norm="model.norm",
    embed="model.embed_tokens",
    lm_head="lm_head",
)

BUILTIN_ADAPTERS: dict[str, tuple[ArchitectureAdapter, tuple[str, ...]]] = {
    # name: (adapter, transformers class names it matches by isinstance)
    "gpt2": (
        ArchitectureAdapter(
            "gpt2", "transformer.h", "mlp.c_fc", "mlp.c_proj", "transformer.ln_f",
            "transformer.wte", "lm_head", attn_out="attn.c_proj",
        ),
        ("GPT2LMHeadModel",),
    ),
    "gpt-neox": (
        ArchitectureAdapter(
            "gpt-neox", "gpt_neox.layers", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h",
            "gpt_neox.final_layer_norm", "gpt_neox.embed_in", "lm_head", attn_out="attention.dense",
        ),
        ("GPTNeoXForCausalLM",),
    ),
    "gpt-j": (
        ArchitectureAdapter(
            "gpt-j", "transformer.h", "mlp.fc_in", "mlp.fc_out", "transformer.ln_f",
            "transformer.wte", "lm_head", attn_out="attn.out_proj",
        ),
        ("GPTJForCausalLM",),
    ),
    "llama": (ArchitectureAdapter("llama", **_LLAMA_LIKE), ("LlamaForCausalLM",)),
    "mistral": (ArchitectureAdapter("mistral", **_LLAMA_LIKE), ("MistralForCausalLM",)),
    "qwen2": (ArchitectureAdapter("qwen2", **_LLAMA_LIKE), ("Qwen2ForCausalLM",)),
    "qwen3": (ArchitectureAdapter("qwen3", **_LLAMA_LIKE), ("Qwen3ForCausalLM",)),
}


def _instance_of_transformers_class(names: tuple[str, ...]) -> Any:
    """``matches(model)``: ``model`` is an instance of one of the transformers classes ``names``.

    The classes are imported on the first call, so registering the adapters imports nothing; a
    class absent from the installed transformers version matches no model."""
    classes: tuple[type, ...] | None = None

    def matches(model: Any) -> bool:
        nonlocal classes
        if classes is None:
            import transformers

            found = []
            for name in names:
                try:
                    found.append(getattr(transformers, name))
                except (AttributeError, ImportError):  # absent from this transformers version
                    continue
            classes = tuple(found)
        return bool(classes) and isinstance(model, classes)

    return matches


@hookimpl
def easyetcon_register_model_adapters(register: Any) -> None:
    for name, (adapter, class_names) in BUILTIN_ADAPTERS.items():
        register(name, adapter, matches=_instance_of_transformers_class(class_names))


# ------------------------------------------------------------------------------------------
# Resolution and the structural fallback
# ------------------------------------------------------------------------------------------


def resolve_adapter(model: nn.Module, registry: Any) -> ArchitectureAdapter:
    """The registered adapter whose ``matches`` fits ``model``, else a structural guess."""
    for part in registry.parts("adapter"):
        matches = part.extra["matches"]
        fits = isinstance(model, matches) if isinstance(matches, tuple) else bool(matches(model))
        if fits:
            return part.obj
    return infer_adapter(model)


def _linear_like(module: nn.Module) -> bool:
    from torch import nn

    conv1d = _conv1d_class()
    return isinstance(module, nn.Linear) or (conv1d is not None and isinstance(module, conv1d))


def infer_adapter(model: nn.Module) -> ArchitectureAdapter:
    """Find blocks, MLP projections, final norm, embeddings and head from the module structure.

    Raises :class:`UnsupportedModelError` naming the model class and what could not be found.
    """
    import torch
    from torch import nn

    model_class = type(model).__name__
    names = {id(module): name for name, module in model.named_modules()}

    def fail(what: str) -> UnsupportedModelError:
        return UnsupportedModelError(
            f"cannot edit a {model_class}: no architecture adapter is registered for it and the "
            f"structural fallback found no {what}. Register an ArchitectureAdapter through the "
            f"easyetcon_register_model_adapters hook (see the docs: 'Writing a plugin')."
        )

    try:
        embed = model.get_input_embeddings()
        head = model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        raise fail("input/output embeddings (get_input_embeddings)") from None
    if embed is None or head is None or id(embed) not in names or id(head) not in names:
        raise fail("input/output embeddings")
    hidden = embed.weight.shape[1]

    # The blocks: the longest ModuleList whose members share one class.
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) > 0
        and len({type(child) for child in module}) == 1
    ]
    if not candidates:
        raise fail("list of transformer blocks")
    layers_name, layers = max(candidates, key=lambda item: len(item[1]))

    block = layers[0]
    linears = [(name, m) for name, m in block.named_modules() if _linear_like(m)]
    shapes = {name: ArchitectureAdapter.in_out_features(m) for name, m in linears}
    mlp_out = [n for n, (i, o) in shapes.items() if o == hidden and i > hidden]
    if not mlp_out:
        raise fail(f"MLP output projection (a linear map from a width > {hidden} to {hidden})")
    mlp_out_name = max(mlp_out, key=lambda n: shapes[n][0])
    width = shapes[mlp_out_name][0]
    mlp_in = [n for n, (i, o) in shapes.items() if i == hidden and o == width]
    if not mlp_in:
        raise fail(f"MLP input projection ({hidden} -> {width})")

    # The final norm: a parameterised leaf after the blocks with a weight of size `hidden`.
    norm_name = None
    for name, module in model.named_modules():
        if name.startswith(layers_name) or list(module.children()):
            continue
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.shape == (hidden,):
            norm_name = name
    if norm_name is None:
        raise fail("final normalisation layer")

    return ArchitectureAdapter(
        name=f"inferred:{model_class}",
        layers=layers_name,
        mlp_in=mlp_in[-1],
        mlp_out=mlp_out_name,
        final_norm=norm_name,
        embed=names[id(embed)],
        lm_head=names[id(head)],
    )
