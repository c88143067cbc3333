"""EasyEdit hyperparameter files as easyetcon chain specs (``easyetcon convert-hparams``).

An EasyEdit hparams YAML names its method in ``alg_name`` and mixes three kinds of keys: the
method's options (``v_lr``, ``layers``, ``mom2_update_weight``), where the method runs
(``device``, ``model_parallel``, ``fp16``) and where the model keeps its modules
(``rewrite_module_tmp``, ``ln_f_module``, ...). Plugins convert the first kind for the editors
they register (:func:`~easyetcon.hookspecs.easyetcon_register_hparams_converters`); the other
two are the same for every method and are answered here. Every key of the file ends up either
mapped to an option (said with its easyetcon name) or listed with why it has no equivalent, and
the result is validated by the editor's own config, so a file converts to a chain that loads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from easyetcon.errors import ConfigError, UnknownNameError

#: Keys of every EasyEdit hparams file that are not a method's options, and why easyetcon needs none.
RUNTIME_KEYS = {
    "alg_name": "names the method: it chose the editor",
    "model_name": "becomes the chain's model",
    "device": "easyetcon edits the model on the device it was loaded on",
    "model_parallel": "easyetcon edits a model placed on several devices where accelerate's device_map put it",
    "fp16": "the model's dtype is the spec's dtype option",
    "half": "the model's dtype is the spec's dtype option",
    "stats_dir": "key statistics are cached under $EASYETCON_CACHE/stats",
    "results_dir": "results go where `easyetcon edit --out` or the benchmark says",
    "layer_module_tmp": "the architecture adapter finds the decoder blocks",
    "mlp_module_tmp": "the architecture adapter finds the MLP modules",
    "attn_module_tmp": "the architecture adapter finds the attention modules",
    "ln_f_module": "the architecture adapter finds the final norm",
    "lm_head_module": "the architecture adapter finds the LM head",
    "model_class": "models load with transformers' AutoModelForCausalLM",
    "tokenizer_class": "tokenizers load with transformers' AutoTokenizer",
    "tokenizer_name": "the tokenizer is loaded from the model's folder",
    "silent": "easyetcon logs through the easyetcon logger; the CLI shows its INFO lines",
}


#: Substrings of EasyEdit's module templates, per adapter module kind (its files name modules by path).
MODULE_KINDS = {
    "mlp_out": ("down_proj", "c_proj", "fc_out", "dense_4h_to_h", "fc2", "w2"),
    "mlp_in": ("up_proj", "c_fc", "fc_in", "dense_h_to_4h", "fc1", "w3"),
}


def number(value: Any) -> float | None:
    """A number from an EasyEdit YAML value: PyYAML reads ``5e-4`` (no dot) as a string."""
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def module_kind(template: Any) -> str | None:
    """The adapter kind an EasyEdit module template names (``model.layers.{}.mlp.down_proj`` -> ``mlp_out``)."""
    if not isinstance(template, str):
        return None
    last = template.removesuffix(".weight").rsplit(".", 1)[-1]
    return next((kind for kind, names in MODULE_KINDS.items() if last in names), None)


#: A layer index in an EasyEdit module name: ``model.layers.11.mlp`` or ``model.layers[27].mlp``.
LAYER_IN_NAME = re.compile(r"[.\[](\d+)[.\]]")


def layers_and_kinds(names: list[Any]) -> tuple[list[int], set[str | None]]:
    """The layer indices and module kinds that EasyEdit module names (``inner_params``) list."""
    layers = sorted({int(match.group(1)) for name in names if (match := LAYER_IN_NAME.search(str(name)))})
    return layers, {module_kind(name) for name in names}


@dataclass
class Conversion:
    """What a plugin's converter returns for one hparams file: the editor, its options (nested as
    its config reads them), and for each key of the file it used, the option it became
    (``mapped``: key -> option path, with a note after ``;`` when the meaning differs), and for
    each it did not, why (``unmapped``: key -> reason)."""

    editor: str
    options: dict[str, Any] = field(default_factory=dict)
    mapped: dict[str, str] = field(default_factory=dict)
    unmapped: dict[str, str] = field(default_factory=dict)

    def set(self, key: str, path: str, value: Any, note: str = "") -> None:
        """Record that EasyEdit's ``key`` becomes option ``path`` (dotted into sections) with
        ``value``; a key that becomes several options lists them all."""
        *sections, name = path.split(".")
        target = self.options
        for section in sections:
            target = target.setdefault(section, {})
        target[name] = value
        entry = f"{path}; {note}" if note else path
        self.mapped[key] = f"{self.mapped[key]} and {entry}" if key in self.mapped else entry

    def skip(self, key: str, reason: str) -> None:
        self.unmapped[key] = reason

    def skip_present(self, hparams: dict[str, Any], reasons: dict[str, str]) -> None:
        """:meth:`skip` each key of ``reasons`` the file has."""
        for key, reason in reasons.items():
            if key in hparams:
                self.skip(key, reason)


@dataclass
class ConvertedHparams:
    """A converted file: the chain spec (a dict ``load_chain_spec`` reads) and, per EasyEdit key,
    the option it became or why it has none."""

    spec: dict[str, Any]
    editor: str
    mapped: dict[str, str]
    unmapped: dict[str, str]


def read_hparams(path: str | Path) -> dict[str, Any]:
    """The mapping an EasyEdit hparams YAML holds (a clear error for a missing, unreadable or non-mapping file)."""
    import yaml

    file = Path(path)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"no hparams file {str(file)!r}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read hparams file {str(file)!r}: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"hparams file {str(file)!r} holds {type(data).__name__}, not a mapping of options")
    return data


def convert_hparams(hparams: dict[str, Any], registry: Any) -> ConvertedHparams:
    """Convert an EasyEdit hparams mapping with the converter registered for its ``alg_name``."""
    name = hparams.get("alg_name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError("the hparams file has no alg_name: it does not say which method it configures")
    converters = {part.name.lower(): part for part in registry.parts("hparams-converter")}
    part = converters.get(name.strip().lower())
    if part is None:
        known = ", ".join(sorted(p.name for p in converters.values())) or "none"
        raise UnknownNameError(f"no converter for EasyEdit's alg_name {name!r}; known: {known}")
    conversion = part.obj({k: v for k, v in hparams.items() if k not in RUNTIME_KEYS})
    if not isinstance(conversion, Conversion):
        raise ConfigError(f"hparams converter {part.name!r} ({part.distribution}) returned {type(conversion).__name__}, not a Conversion")
    unmapped = dict(conversion.unmapped)
    for key in hparams:
        if key in RUNTIME_KEYS and key != "model_name":
            unmapped[key] = RUNTIME_KEYS[key]
    leftover = sorted(set(hparams) - set(conversion.mapped) - set(unmapped) - {"model_name"})
    for key in leftover:
        unmapped[key] = "not read by the converter: no easyetcon equivalent is known"
    registry.editor(conversion.editor).validate_options(conversion.options)  # the chain loads, or says why
    spec: dict[str, Any] = {}
    mapped = dict(conversion.mapped)
    if isinstance(hparams.get("model_name"), str):
        spec["model"] = hparams["model_name"]
        mapped["model_name"] = "model"
    spec["chain"] = [{"editor": conversion.editor, **conversion.options}]
    return ConvertedHparams(spec, conversion.editor, mapped, unmapped)
