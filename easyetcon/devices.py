"""Where a model's modules compute when accelerate placed it with a ``device_map``.

A model loaded with ``device_map`` carries accelerate hooks that move each module's inputs to its
*execution device* before its forward pass. The first parameter's device (``model.device`` in
transformers) is then only the embeddings', not the edited block's; and a module *offloaded* to
the CPU (next to GPUs) or to disk keeps its weights on the ``meta`` device between forward passes,
so even its own weight's ``.device`` is not where it computes. Editors ask here instead: tensors
an editor makes for a module go on that module's :func:`execution_device`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from easyetcon.errors import EasyEtconError, OffloadedWeightError


def _hooks(module: nn.Module) -> Iterator[Any]:
    hook = getattr(module, "_hf_hook", None)
    if hook is not None:
        yield from getattr(hook, "hooks", (hook,))  # a SequentialHook chains several


def execution_device(module: nn.Module) -> torch.device:
    """Where ``module`` computes: the execution device accelerate's hook on it names, else the
    device of its first parameter or buffer not on ``meta`` (the CPU for a module without any)."""
    for hook in _hooks(module):
        device = getattr(hook, "execution_device", None)
        if device is not None:
            return torch.device(device)
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        if tensor.device.type != "meta":
            return tensor.device
    return torch.device("cpu")


def runs_on_one_device(torch_model: nn.Module) -> bool:
    """Whether every module of ``torch_model`` computes on one device (always, without a device map)."""
    if not hasattr(torch_model, "hf_device_map"):
        return True
    devices = {str(execution_device(m)) for m in torch_model.modules() if any(True for _ in _hooks(m))}
    return len(devices) <= 1


def offloaded_value(module: nn.Module, attribute: str) -> torch.Tensor | None:
    """The value of ``module``'s parameter or buffer ``attribute`` when accelerate offloaded it
    (read from its weights map in CPU memory or on disk), else ``None``."""
    tensor = getattr(module, attribute, None)
    if not isinstance(tensor, torch.Tensor) or tensor.device.type != "meta":
        return None
    for hook in _hooks(module):
        weights = getattr(hook, "weights_map", None)
        if weights is not None and attribute in weights:
            return weights[attribute]
    return None


def current_value(module: nn.Module, attribute: str = "weight") -> torch.Tensor:
    """``module``'s tensor ``attribute`` as it is: its offloaded value when accelerate offloaded it."""
    value = offloaded_value(module, attribute)
    return getattr(module, attribute) if value is None else value


def state_tensors(torch_model: nn.Module) -> dict[str, torch.Tensor]:
    """``state_dict()`` with each offloaded tensor replaced by its value (:func:`offloaded_value`),
    so digests of an offloaded model are those of the same model loaded on one device."""
    state = torch_model.state_dict()
    for name, tensor in state.items():
        if tensor.device.type == "meta":
            module_name, _, attribute = name.rpartition(".")
            value = offloaded_value(torch_model.get_submodule(module_name), attribute)
            if value is None:
                raise EasyEtconError(
                    f"{name!r} is on the meta device and accelerate holds no value for it: the model's weights "
                    f"were never loaded; load the model with its weights (from_pretrained) before editing it"
                )
            state[name] = value
    return state


def require_on_device(model: Any, names: Sequence[str]) -> None:
    """Raise :class:`OffloadedWeightError` naming each module among the parameters ``names`` that
    accelerate offloaded (weights on ``meta``): it cannot be written in place."""
    offloaded = [name for name in dict.fromkeys(names) if model.parameter(name).device.type == "meta"]
    if not offloaded:
        return
    modules = sorted({name.rpartition(".")[0] for name in offloaded})
    where = getattr(model.torch_model, "hf_device_map", None)
    placed = (
        f" (the device map puts it on {', '.join(sorted({repr(_placement(where, m)) for m in modules}))})" if where else ""
    )
    raise OffloadedWeightError(
        f"cannot edit {', '.join(modules[:5])}{' ...' if len(modules) > 5 else ''}: accelerate offloaded "
        f"{'this module' if len(modules) == 1 else 'these modules'}{placed}, so the weight lives on the meta "
        f"device and is loaded only during the forward pass. Load it onto a device: give the module a GPU "
        f"(or 'cpu' when no GPU takes part) in device_map, or raise max_memory so that device_map='auto' "
        f"does not offload it, or edit other layers"
    )


def _placement(device_map: dict[str, Any], module: str) -> Any:
    """The device map's entry for ``module``: its own, or its nearest listed ancestor's."""
    parts = module.split(".")
    for end in range(len(parts), -1, -1):
        key = ".".join(parts[:end])
        if key in device_map:
            return device_map[key]
    return "?"
