"""EasyEdit hparams files of the intrinsic methods as options of this plugin's editors.

Each converter maps what has an equivalent, with a note where the meaning differs, and says why
the rest has none (:class:`easyetcon.hparams.Conversion`); ``easyetcon convert-hparams`` adds
the keys every EasyEdit file has and validates the result against the editor's config.
"""

from __future__ import annotations

from typing import Any

from easyetcon.hparams import Conversion, layers_and_kinds, module_kind, number

WEIGHT_DECAY_NOTE = "easyetcon's penalty is (‖δ‖/‖v‖)², EasyEdit's ‖δ‖/‖v‖²: the same number weighs differently; retune"


def _locate_then_edit(hparams: dict[str, Any], conversion: Conversion, *, one_layer: bool) -> None:
    """The keys ROME, MEMIT, AlphaEdit and EMMET files share."""
    get = hparams.get
    layers = get("layers")
    if isinstance(layers, list) and layers:
        if one_layer:
            conversion.set("layers", "layer", layers[0], "one layer" if len(layers) == 1 else f"the first of {layers}")
        else:
            conversion.set("layers", "layers", list(layers))
    token = get("fact_token")
    if token in ("subject_last", "last"):
        conversion.set("fact_token", "key.fact_token", token)
    elif token is not None:
        conversion.skip("fact_token", f"{token!r}: easyetcon reads keys at the subject's last token or the prompt's last")
    for key, path, cast, note in (
        ("v_num_grad_steps", "value.steps", int, ""),
        ("v_lr", "value.learning_rate", float, ""),
        ("clamp_norm_factor", "value.clamp_norm_factor", float, ""),
        ("kl_factor", "value.kl_factor", float, ""),
        ("v_weight_decay", "value.weight_decay", float, WEIGHT_DECAY_NOTE),
        ("mom2_n_samples", "statistics.samples", int, ""),
    ):
        if get(key) is not None:
            conversion.set(key, path, cast(get(key)), note)
    template = get("rewrite_module_tmp")
    if template is not None and module_kind(template) != "mlp_out":
        conversion.skip("rewrite_module_tmp", f"{template!r}: easyetcon's locate-then-edit editors write the MLP output projection")
    elif template is not None:
        conversion.skip("rewrite_module_tmp", "the MLP output projection, which the architecture adapter finds")
    lengths = get("context_template_length_params")
    if isinstance(lengths, list) and all(isinstance(p, list) and len(p) == 2 for p in lengths):
        count = sum(int(n) for _, n in lengths)
        longest = max(int(length) for length, _ in lengths)
        conversion.set("context_template_length_params", "key.prefixes", count)
        conversion.set("context_template_length_params", "key.prefix_length", longest, "one length for every prefix here")
    if get("v_loss_layer") is not None:
        conversion.skip("v_loss_layer", "the target's loss is read at the model's output (EasyEdit's files name the last layer)")
    if get("mom2_dataset") is not None:
        conversion.skip(
            "mom2_dataset",
            f"{get('mom2_dataset')!r} is downloaded by EasyEdit; easyetcon never downloads at run time: set "
            f"statistics.source to dataset:<a local copy> (default auto: the model's own samples, or the fact world's corpus)",
        )
    if get("mom2_dtype") is not None:
        conversion.skip("mom2_dtype", "statistics are summed in fp64 and kept in fp32")
    if get("layer_selection") is not None:
        conversion.skip("layer_selection", "the layers are the ones listed")


def convert_rome(hparams: dict[str, Any]) -> Conversion:
    """ROME and R-ROME: ``rome`` (which uses R-ROME's same-key fix)."""
    conversion = Conversion("rome")
    _locate_then_edit(hparams, conversion, one_layer=True)
    if hparams.get("mom2_adjustment") is not None:
        conversion.set("mom2_adjustment", "use_covariance", bool(hparams["mom2_adjustment"]))
    for key in ("original_implementation", "enable_prompt_keys", "enable_random_prefix_keys"):
        if key in hparams:
            conversion.skip(key, "easyetcon's ROME is R-ROME's: the same prefix-averaged key on both sides of the update")
    return conversion


def convert_memit(hparams: dict[str, Any]) -> Conversion:
    conversion = Conversion("memit")
    _locate_then_edit(hparams, conversion, one_layer=False)
    if hparams.get("mom2_update_weight") is not None:
        conversion.set("mom2_update_weight", "covariance_weight", float(hparams["mom2_update_weight"]))
    if hparams.get("mom2_adjustment") is not None:
        conversion.skip("mom2_adjustment", "MEMIT always uses the key statistics")
    return conversion


def convert_alphaedit(hparams: dict[str, Any]) -> Conversion:
    conversion = Conversion("alphaedit")
    _locate_then_edit(hparams, conversion, one_layer=False)
    if hparams.get("nullspace_threshold") is not None:
        conversion.set("nullspace_threshold", "nullspace_threshold", float(hparams["nullspace_threshold"]))
        conversion.set("nullspace_threshold", "nullspace_rule", "absolute", "the paper's rule (eigenvalues below the threshold)")
    if hparams.get("L2") is not None:
        conversion.skip("L2", "easyetcon's ridge is l2 · E‖k‖² (scale-free); EasyEdit's L2 is absolute: keep l2 or retune")
    conversion.skip_present(hparams, {
        "mom2_update_weight": "AlphaEdit's projection replaces MEMIT's λC term (covariance_weight 0, the paper's)",
        "mom2_adjustment": "AlphaEdit always uses the key statistics",
        "P_loc": "the projector is computed from the statistics in prepare, and kept with the editor",
    })
    return conversion


def convert_emmet(hparams: dict[str, Any]) -> Conversion:
    conversion = Conversion("emmet")
    _locate_then_edit(hparams, conversion, one_layer=False)
    if hparams.get("emmet_lambda") is not None:
        conversion.skip("emmet_lambda", "easyetcon's equality_ridge is relative to the mean diagonal of Kᵀ A⁻¹ K; EasyEdit's is absolute")
    conversion.skip_present(hparams, {
        "mom2_update_weight": "a scale of C, which EMMET's equality-constrained update does not depend on",
        "mom2_adjustment": "EMMET always uses the key statistics",
        "update_norm_lambda": "the ridge of C is ridge · tr C / d (scale-free)",
    })
    return conversion


def convert_ft(hparams: dict[str, Any]) -> Conversion:
    """FT: ``ft-l`` (``objective_optimization: prompt_last``) or ``ft-m`` (``target_new``)."""
    objective = hparams.get("objective_optimization", "prompt_last")
    conversion = Conversion("ft-m" if objective == "target_new" else "ft-l")
    if "objective_optimization" in hparams:
        conversion.mapped["objective_optimization"] = f"editor {conversion.editor}"
    get = hparams.get
    if isinstance(get("layers"), list) and get("layers"):
        conversion.set("layers", "layers", list(get("layers")))
    kind = module_kind(get("rewrite_module_tmp"))
    if kind is not None:
        conversion.set("rewrite_module_tmp", "modules", [kind])
    elif get("rewrite_module_tmp") is not None:
        conversion.skip("rewrite_module_tmp", f"{get('rewrite_module_tmp')!r}: easyetcon fine-tunes MLP projections only")
    for key, path in (("num_steps", "steps"), ("lr", "learning_rate"), ("weight_decay", "weight_decay")):
        if get(key) is not None:
            conversion.set(key, path, int(get(key)) if path == "steps" else float(get(key)))
    if get("batch_size") is not None:
        size = int(get("batch_size"))
        if size > 1:
            conversion.set("batch_size", "batch_size", size)
        else:
            conversion.skip("batch_size", "1: each call edits its requests together (set batch_size for mini-batches)")
    constraint = number(get("norm_constraint"))
    if constraint is not None and constraint > 0:
        conversion.set("norm_constraint", "max_change", constraint)
    elif "norm_constraint" in hparams:
        conversion.skip("norm_constraint", "false: no L∞ bound (max_change unset)")
    if number(get("kl_factor")):
        conversion.skip("kl_factor", "easyetcon's FT has no KL term; FT-M with eaft limits forgetting instead")
    elif "kl_factor" in hparams:
        conversion.skip("kl_factor", "0: no KL term, as in easyetcon's FT")
    if get("max_length") is not None:
        conversion.skip("max_length", "prompts and targets are not truncated")
    return conversion


def convert_ultraedit(hparams: dict[str, Any]) -> Conversion:
    conversion = Conversion("ultraedit")
    get = hparams.get
    names = get("inner_params") or []
    layers, kinds = layers_and_kinds(names)
    if layers and len(kinds) == 1 and None not in kinds:
        conversion.set("inner_params", "layers", layers)
        conversion.set("inner_params", "module", kinds.pop())
    elif names:
        conversion.skip(
            "inner_params",
            "easyetcon's UltraEdit edits one kind of module (mlp_in or mlp_out) in every listed layer; these name "
            f"{sorted(str(k) for k in kinds)} (gate projections have no adapter kind)",
        )
    if get("lr") is not None:
        conversion.set("lr", "learning_rate", float(get("lr")))
    token = get("token")
    if token in ("mask", "ans"):
        conversion.set("token", "positions", "all" if token == "mask" else "target")
    if get("batch_size_once") is not None:
        conversion.set("batch_size_once", "chunk_size", int(get("batch_size_once")))
    conversion.skip_present(hparams, {
        "batch_size": "requests per call: the chain's batch_size (mode: batch)",
        "editor_batch_size": "rows are normalised in one pass",
        "dropout": "dropout is off while editing",
        "no_grad_layers": "only the edited modules' probes carry gradients",
        "max_length": "prompts and targets are not truncated",
    })
    return conversion
