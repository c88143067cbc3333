"""EasyEdit's ROME and AlphaEdit, loaded from a checkout the user supplies, one timed edit at a time.

Used by ``benchmarks/width.py`` to time EasyEdit (https://github.com/zjunlp/EasyEdit) against
easyetcon on the same model. No EasyEdit code is copied here: :func:`load_easyedit` imports it
from ``--easyedit PATH`` at run time.

How EasyEdit is loaded (offline, without its heavy dependencies)
    ``easyeditor/__init__.py`` and ``easyeditor/models/__init__.py`` import every method and the
    trainers (``higher``, ``hydra``, ``peft``, ``zhipuai``, ``sklearn``, ...: ``import easyeditor``
    fails in our venv on ``higher``). Both are replaced in ``sys.modules`` by empty package
    modules whose ``__path__`` is the checkout's folder, so Python finds the submodules in the
    checkout but never runs those two ``__init__`` files. What then loads is EasyEdit's own
    ``easyeditor/util`` (nethook, runningstats, generate, hparams, logit_lens: torch, numpy, yaml,
    transformers), ``models/rome`` (also ``datasets``, ``tqdm`` and ``matplotlib``, which
    ``compute_v`` imports without using) and ``models/alphaedit``; nothing needs installing.
    ``PATH`` is not put on ``sys.path``, so the checkout's top-level folders (``steer``,
    ``examples``, ...) cannot shadow other packages.

How the key statistics are supplied offline
    EasyEdit's ``layer_stats`` calls ``datasets.load_dataset("wikimedia/wikipedia", ...)``. That
    one name, ``load_dataset`` in the ``layer_stats`` module, is replaced by a function returning
    the local texts the caller passes (``{"train": [{"text": ...}, ...]}``); it raises instead of
    downloading when no texts were given. Everything else is EasyEdit's: its ``TokenizedDataset``
    (texts cut at ``config.max_position_embeddings`` tokens), its sampler (``mom2_n_samples`` texts
    in a seeded random order), its ``SecondMoment`` over the inputs of ``down_proj``, its ``.npz``
    cache (in a scratch folder of ours, removed at exit), ROME's ``torch.inverse`` and AlphaEdit's
    SVD projector. ``mom2_dataset`` stays ``"wikipedia"`` only because ``layer_stats`` rejects
    other names before loading.

One-time costs, reported apart from the edit
    :func:`prepare_rome` (statistics + inverse, kept in EasyEdit's ``inv_mom2_cache``) and
    :func:`prepare_alphaedit` (statistics + SVD projector ``P``, handed to ``AlphaEdit_main``
    through the module globals ``P``/``P_loaded`` it reads, so it neither recomputes ``P`` nor
    writes ``null_space_project.pt`` into the working folder) return their seconds. Context
    templates are one-time too: pass easyetcon's prefixes (``EditSettings.prefixes``) to use the
    same prompts on both sides, or leave them out to let EasyEdit sample its own (top-k) in
    ``prepare``. The timed part of :func:`easyedit_rome` / :func:`easyedit_alphaedit` is EasyEdit's
    public ``apply_rome_to_model`` / ``apply_AlphaEdit_to_model`` call, which computes the update
    and adds it to the weight (EasyEdit's prints are captured, not shown); AlphaEdit's
    ``K_p K_pᵀ`` cache is reset to zeros before each edit (one edit on a fresh editor), its update
    at the end of the edit is timed. EasyEdit's ``get_project`` runs its SVD on the CPU even for a
    GPU model; ``prepare_alphaedit(..., projector_device="cuda")`` runs the same SVD on the GPU.
    :func:`release` drops a model's prepared state (``d_ff × d_ff`` per layer and editor).

EasyEdit keys its caches by model name and keeps templates and ``P`` in module globals, so each
model gets a unique ``config._name_or_path`` (``"<model_type>-easyedit-side-<n>"``; the substring
``llama`` is what EasyEdit dispatches on) and this module reinstalls the model's templates and ``P``
before each of its edits: models of several widths can be interleaved.

What is matched, and what cannot be: :data:`EASYEDIT_SETTINGS`. Written against EasyEdit commit
14cea8245f06715684592ab55184939b99d70784 (July 2026).

Smoke test (tiny random Llama, one ROME and one AlphaEdit edit)::

    OMP_NUM_THREADS=1 python benchmarks/easyedit_side.py --easyedit /tmp/easyedit/EasyEdit
    OMP_NUM_THREADS=1 python benchmarks/easyedit_side.py --easyedit /tmp/easyedit/EasyEdit --hidden 1024
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import importlib.machinery
import io
import itertools
import json
import os
import re
import shutil
import sys
import tempfile
import time
import types
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

#: EasyEdit hyperparameter -> where its value comes from, and what is not the same as easyetcon.
EASYEDIT_SETTINGS: dict[str, str] = {
    "layers": "ROME: [settings.layer]; AlphaEdit: settings.layers (default [settings.layer])",
    "fact_token": "settings.fact_token: 'subject_last' or 'last', as easyetcon's; EasyEdit's AlphaEdit "
    "refuses 'last' (compute_z raises 'This is definitely bugged'), so AlphaEdit needs 'subject_last'",
    "v_num_grad_steps": "settings.steps + 1: EasyEdit runs v_num_grad_steps forward passes and one Adam step "
    "after each but the last; easyetcon's `steps` Adam steps plus a measuring pass is the same work",
    "early stop": "EasyEdit stops once its total loss (NLL + KL + decay) is below 0.05, hard-coded; easyetcon "
    "when the target NLL is below stop_nll. info['value_passes'] says how many passes EasyEdit ran",
    "v_lr": "settings.learning_rate (Adam)",
    "v_loss_layer": "num_hidden_layers - 1 (the last layer, as in EasyEdit's Llama YAMLs)",
    "v_weight_decay": "settings.weight_decay; EasyEdit's term is wd*|d|/|v|^2, easyetcon's wd*(|d|/|v|)^2: "
    "the same number weighs differently (a step costs the same)",
    "clamp_norm_factor": "settings.clamp_norm_factor (|d| <= factor*|v| after each step, as easyetcon)",
    "kl_factor": "settings.kl_factor; EasyEdit's essence prompt is hard-coded '{} is a', easyetcon's "
    "default kl_prompts ['{subject} is a'] with kl_continuation_tokens=0 is the same",
    "context templates": "settings.prefixes (e.g. easyetcon's make_prefixes list, '{}' first) installed as "
    "EasyEdit's CONTEXT_TEMPLATES_CACHE (AlphaEdit: [['{}'], the others], its grouping); None: EasyEdit "
    "samples its own with generate_fast (ROME: settings.prefix_count x settings.prefix_length tokens "
    "incl. the seed word; AlphaEdit: hard-coded 5 x 10)",
    "mom2_adjustment": "ROME: settings.use_covariance (C^-1 k, EasyEdit inverts C with no ridge; easyetcon "
    "adds ridge*tr(C)/d*I); AlphaEdit always uses its projector P",
    "mom2_dataset": "'wikipedia' by name only; the texts are the caller's (see the module docstring)",
    "mom2_n_samples": "settings.mom2_n_samples texts (easyetcon: statistics.samples); EasyEdit cuts each at "
    "config.max_position_embeddings tokens (easyetcon at statistics.max_length): build the model with "
    "max_position_embeddings = max_length, or pass texts no longer than that",
    "mom2_dtype": "settings.mom2_dtype ('float32', EasyEdit's YAML value)",
    "nullspace_threshold": "settings.nullspace_threshold: eigen/singular values of C below it span the null "
    "space (easyetcon's nullspace_rule='absolute')",
    "L2": "settings.l2, added as L2*I to the solve (easyetcon's l2 is relative: l2*E|k|^2)",
    "module templates": "Llama: model.layers.{}.mlp.down_proj / model.layers.{} / model.layers.{}.mlp / "
    "model.layers.{}.self_attn / model.norm / lm_head",
    "model_name": "'<model_type>-easyedit-side-<n>', also set as config._name_or_path (unique per model)",
    "device": "the model's device",
}

_TAG = "easyedit-side"


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


@dataclass
class EasyEdit:
    """Handles on the EasyEdit modules we use, and our per-model state."""

    root: Path
    rome_main: types.ModuleType
    compute_u: types.ModuleType
    layer_stats: types.ModuleType
    alphaedit_main: types.ModuleType
    ROMEHyperParams: type
    AlphaEditHyperParams: type
    scratch: Path
    texts: list[str] | None = None  # what the patched load_dataset returns
    prepared: dict = field(default_factory=dict)  # (model name, editor, settings...) -> _Prepared
    names: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary)
    counter: Any = field(default_factory=itertools.count)


def _empty_package(name: str, folder: Path) -> types.ModuleType:
    spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = [str(folder)]
    module = types.ModuleType(name)
    module.__spec__, module.__path__, module.__package__ = spec, [str(folder)], name
    module.__file__ = None
    return module


def load_easyedit(path: str | os.PathLike) -> EasyEdit:
    """Import EasyEdit's ROME and AlphaEdit from the checkout at ``path`` (see the module docstring)."""
    root = Path(path).expanduser().resolve()
    package = root / "easyeditor"
    needed = [package / "models" / "rome" / "rome_main.py", package / "models" / "alphaedit" / "AlphaEdit_main.py"]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{root} is not an EasyEdit checkout (missing {', '.join(missing)}); "
                                "pass the folder that holds easyeditor/, e.g. a clone of github.com/zjunlp/EasyEdit")
    loaded = sys.modules.get("easyeditor")
    if loaded is not None:
        where = list(getattr(loaded, "__path__", []))
        if where != [str(package)]:
            raise RuntimeError(f"another easyeditor is already imported from {where}; run in a fresh process")
    else:
        sys.modules["easyeditor"] = _empty_package("easyeditor", package)
        sys.modules["easyeditor.models"] = _empty_package("easyeditor.models", package / "models")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    rome_main = importlib.import_module("easyeditor.models.rome.rome_main")
    compute_u = importlib.import_module("easyeditor.models.rome.compute_u")
    layer_stats = importlib.import_module("easyeditor.models.rome.layer_stats")
    alphaedit_main = importlib.import_module("easyeditor.models.alphaedit.AlphaEdit_main")
    scratch = Path(tempfile.mkdtemp(prefix="easyedit-side-"))
    atexit.register(shutil.rmtree, scratch, True)
    ee = EasyEdit(
        root=root, rome_main=rome_main, compute_u=compute_u, layer_stats=layer_stats,
        alphaedit_main=alphaedit_main, ROMEHyperParams=rome_main.ROMEHyperParams,
        AlphaEditHyperParams=alphaedit_main.AlphaEditHyperParams, scratch=scratch,
    )

    def local_dataset(name: str, config: str | None = None, **_: Any) -> dict[str, list[dict[str, str]]]:
        if ee.texts is None:
            raise RuntimeError(f"EasyEdit asked for the dataset {name!r}: this benchmark never downloads; "
                               "pass texts= to prepare_rome / prepare_alphaedit")
        return {"train": [{"text": text} for text in ee.texts]}

    # layer_stats did `from datasets import load_dataset`; only its own name is replaced.
    layer_stats.load_dataset = local_dataset
    return ee


def easyedit_commit(ee: EasyEdit) -> str | None:
    """The checkout's git commit, when it is a git work tree."""
    head = ee.root / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            return (ee.root / ".git" / ref[5:]).read_text().strip()
        return ref
    except OSError:
        return None


# --------------------------------------------------------------------------------------------
# Settings and hyperparameters
# --------------------------------------------------------------------------------------------


@dataclass
class EditSettings:
    """The options an easyetcon config and an EasyEdit hparams object share (see :data:`EASYEDIT_SETTINGS`).

    Defaults are easyetcon's ROME defaults; AlphaEdit callers pass theirs (lr 0.1, clamp 0.75, ...).
    """

    layer: int = 0
    layers: list[int] | None = None  # AlphaEdit's layers; None: [layer]
    fact_token: str = "subject_last"
    steps: int = 25  # Adam steps; EasyEdit's v_num_grad_steps is steps + 1
    learning_rate: float = 0.5
    kl_factor: float = 0.0625
    weight_decay: float = 0.01
    clamp_norm_factor: float = 4.0
    prefixes: list[str] | None = None  # templates with '{}', the bare '{}' first; None: EasyEdit samples its own
    prefix_count: int = 10  # only when EasyEdit samples them (ROME; a multiple of 5)
    prefix_length: int = 10
    use_covariance: bool = True  # ROME's mom2_adjustment
    mom2_n_samples: int = 1000
    mom2_dtype: str = "float32"
    nullspace_threshold: float = 2e-2
    l2: float = 1.0
    device: str | None = None  # None: the model's

    @classmethod
    def of(cls, settings: EditSettings | Mapping[str, Any] | None) -> EditSettings:
        if settings is None:
            return cls()
        if isinstance(settings, cls):
            return settings
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ValueError(f"unknown EasyEdit setting(s) {unknown}; known: {sorted(known)}")
        return cls(**settings)

    def alphaedit_layers(self) -> list[int]:
        return list(self.layers) if self.layers is not None else [self.layer]


def _check_llama_like(model: Any) -> None:
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "norm") or not hasattr(model, "lm_head"):
        raise ValueError(f"{type(model).__name__} does not have Llama's module layout (model.layers, model.norm, "
                         "lm_head); these EasyEdit module templates are Llama's")


def model_name(ee: EasyEdit, model: Any) -> str:
    """The unique name EasyEdit sees for ``model`` (set on ``config._name_or_path`` once)."""
    if model not in ee.names:
        ee.names[model] = f"{model.config.model_type}-{_TAG}-{next(ee.counter)}"
        model.config._name_or_path = ee.names[model]
    return ee.names[model]


def _module_templates() -> dict[str, str]:
    return dict(
        rewrite_module_tmp="model.layers.{}.mlp.down_proj",
        layer_module_tmp="model.layers.{}",
        mlp_module_tmp="model.layers.{}.mlp",
        attn_module_tmp="model.layers.{}.self_attn",
        ln_f_module="model.norm",
        lm_head_module="lm_head",
    )


def _common(ee: EasyEdit, model: Any, s: EditSettings, editor: str) -> dict[str, Any]:
    _check_llama_like(model)
    if s.steps < 1:
        raise ValueError(f"steps must be at least 1, got {s.steps}")
    name = model_name(ee, model)
    return dict(
        fact_token=s.fact_token,
        v_num_grad_steps=s.steps + 1,
        v_lr=s.learning_rate,
        v_loss_layer=model.config.num_hidden_layers - 1,
        v_weight_decay=s.weight_decay,
        clamp_norm_factor=s.clamp_norm_factor,
        kl_factor=s.kl_factor,
        mom2_dataset="wikipedia",
        mom2_n_samples=s.mom2_n_samples,
        mom2_dtype=s.mom2_dtype,
        device=s.device or str(next(model.parameters()).device),
        model_name=name,
        stats_dir=str(ee.scratch / editor),
        **_module_templates(),
    )


def rome_hparams(ee: EasyEdit, model: Any, settings: EditSettings | Mapping[str, Any] | None) -> Any:
    """EasyEdit's ``ROMEHyperParams`` for ``settings`` (built in code, no YAML)."""
    s = EditSettings.of(settings)
    if s.fact_token not in ("subject_last", "last"):
        raise ValueError(f"fact_token must be 'subject_last' or 'last', got {s.fact_token!r}")
    return ee.ROMEHyperParams(
        alg_name="ROME",
        layers=[s.layer],
        mom2_adjustment=s.use_covariance,
        context_template_length_params=[[s.prefix_length, s.prefix_count]],
        **_common(ee, model, s, "rome"),
    )


def alphaedit_hparams(ee: EasyEdit, model: Any, settings: EditSettings | Mapping[str, Any] | None) -> Any:
    """EasyEdit's ``AlphaEditHyperParams`` for ``settings`` (built in code, no YAML)."""
    s = EditSettings.of(settings)
    if s.fact_token != "subject_last":
        raise ValueError(f"EasyEdit's AlphaEdit only runs fact_token='subject_last' (its 'last' branch raises), "
                         f"got {s.fact_token!r}")
    if not s.use_covariance:
        raise ValueError("AlphaEdit always uses its null-space projector; use_covariance=False has no EasyEdit meaning")
    return ee.AlphaEditHyperParams(
        alg_name="AlphaEdit",
        layers=s.alphaedit_layers(),
        layer_selection="all",
        mom2_adjustment=True,
        mom2_update_weight=15000,  # unused by EasyEdit's AlphaEdit; its YAML value
        nullspace_threshold=s.nullspace_threshold,
        L2=s.l2,
        # Must exist, or apply_AlphaEdit_to_model recomputes P and writes ./null_space_project.pt;
        # P itself is handed over through the module global (see prepare_alphaedit).
        P_loc=str(ee.scratch),
        **_common(ee, model, s, "alphaedit"),
    )


# --------------------------------------------------------------------------------------------
# One-time work
# --------------------------------------------------------------------------------------------


@dataclass
class _Prepared:
    templates: Any
    projector: torch.Tensor | None
    seconds: float


@contextlib.contextmanager
def _captured_stdout():
    """EasyEdit prints every step; keep it off the terminal (and read the loss lines from it)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield buffer


@contextlib.contextmanager
def _texts(ee: EasyEdit, texts: Sequence[str] | None):
    ee.texts = list(texts) if texts is not None else None
    try:
        yield
    finally:
        ee.texts = None


@contextlib.contextmanager
def _grad_flags_kept(model: Any):
    """EasyEdit's set_requires_grad(False, model) is permanent; put the flags back afterwards."""
    flags = [p.requires_grad for p in model.parameters()]
    try:
        yield
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)


def _synchronise(model: Any) -> None:
    if next(model.parameters()).is_cuda:
        torch.cuda.synchronize()


def _rome_key(ee: EasyEdit, model: Any, s: EditSettings) -> tuple:
    prefixes = tuple(s.prefixes) if s.prefixes is not None else (s.prefix_count, s.prefix_length)
    return (model_name(ee, model), "rome", s.layer, s.use_covariance, s.mom2_n_samples, s.mom2_dtype, prefixes)


def _alphaedit_key(ee: EasyEdit, model: Any, s: EditSettings) -> tuple:
    prefixes = tuple(s.prefixes) if s.prefixes is not None else None
    return (model_name(ee, model), "alphaedit", tuple(s.alphaedit_layers()), s.mom2_n_samples, s.mom2_dtype,
            s.nullspace_threshold, prefixes)


def prepare_rome(
    ee: EasyEdit, model: Any, tokenizer: Any, settings: EditSettings | Mapping[str, Any] | None,
    texts: Sequence[str] | None = None,
) -> float:
    """ROME's one-time work on the unedited model: context templates and (with ``use_covariance``)
    the inverse second moment of ``down_proj``'s input over ``texts``. Returns its seconds
    (0 when already done for this model and these settings)."""
    s = EditSettings.of(settings)
    key = _rome_key(ee, model, s)
    if key in ee.prepared:
        return 0.0
    hparams = rome_hparams(ee, model, s)
    rome, compute_u = ee.rome_main, ee.compute_u
    started = time.perf_counter()
    with _captured_stdout(), _texts(ee, texts), _grad_flags_kept(model), torch.no_grad():
        if s.prefixes is not None:
            templates = list(s.prefixes)
        else:
            rome.CONTEXT_TEMPLATES_CACHE = None
            templates = rome.get_context_templates(model, tokenizer, hparams.context_template_length_params)
        if s.use_covariance:
            layer_name = hparams.rewrite_module_tmp.format(s.layer)
            compute_u.inv_mom2_cache.pop((model_name(ee, model), layer_name), None)
            compute_u.get_inv_cov(model, tokenizer, layer_name, hparams.mom2_dataset, hparams.mom2_n_samples,
                                  hparams.mom2_dtype, hparams=hparams)
        _synchronise(model)
    seconds = time.perf_counter() - started
    ee.prepared[key] = _Prepared(templates, None, seconds)
    return seconds


def easyedit_statistics_seconds(
    ee: EasyEdit, model: Any, tokenizer: Any, settings: EditSettings | Mapping[str, Any] | None, texts: Sequence[str],
) -> float:
    """Seconds of EasyEdit's ``layer_stats`` alone (ROME's second moment of ``down_proj``'s input at
    ``settings.layer`` over ``texts``), recomputed (``force_recompute``), without the inverse."""
    s = EditSettings.of(settings)
    hparams = rome_hparams(ee, model, s)
    started = time.perf_counter()
    with _captured_stdout(), _texts(ee, texts), _grad_flags_kept(model), torch.no_grad():
        ee.layer_stats.layer_stats(
            model, tokenizer, hparams.rewrite_module_tmp.format(s.layer), hparams.stats_dir, hparams.mom2_dataset,
            to_collect=["mom2"], sample_size=hparams.mom2_n_samples, precision=hparams.mom2_dtype,
            force_recompute=True, hparams=hparams,
        )
        _synchronise(model)
    return time.perf_counter() - started


def prepare_alphaedit(
    ee: EasyEdit, model: Any, tokenizer: Any, settings: EditSettings | Mapping[str, Any] | None,
    texts: Sequence[str] | None = None, *, projector_device: str | None = None, projector: torch.Tensor | None = None,
) -> float:
    """AlphaEdit's one-time work on the unedited model: context templates, the second moment of
    ``down_proj``'s input over ``texts`` and the null-space projector ``P`` per layer. Returns its seconds.

    ``P`` comes from EasyEdit's ``get_project``, which runs a full SVD of the ``d_ff × d_ff``
    moment on the CPU even when the model is on a GPU (at d_ff = 16384 that is long). With
    ``projector_device`` (e.g. ``"cuda"``) the moment still comes from EasyEdit's ``get_cov`` but
    the same three lines of ``get_project`` (SVD, ``S < nullspace_threshold``, ``U Uᵀ``) run there.
    A given ``projector`` (``layers × d_ff × d_ff``) is used instead of either: no statistics, no SVD
    (for timing edits at widths where the one-time SVD is out of reach).
    """
    s = EditSettings.of(settings)
    key = _alphaedit_key(ee, model, s)
    if key in ee.prepared:
        return 0.0
    hparams = alphaedit_hparams(ee, model, s)
    alpha = ee.alphaedit_main
    started = time.perf_counter()
    with _captured_stdout(), _texts(ee, texts), _grad_flags_kept(model), torch.no_grad():
        if s.prefixes is not None:
            bare, *others = list(s.prefixes)
            if bare != "{}":
                raise ValueError(f"settings.prefixes must start with the bare '{{}}', got {bare!r}")
            templates = [["{}"], others] if others else [["{}"]]
        else:
            alpha.CONTEXT_TEMPLATES_CACHE = None
            templates = alpha.get_context_templates(model, tokenizer)
        for layer in hparams.layers:
            alpha.COV_CACHE.pop((model_name(ee, model), hparams.rewrite_module_tmp.format(layer)), None)
        if projector is not None:
            pass
        elif projector_device is None:
            projector = torch.stack([alpha.get_project(model, tokenizer, layer, hparams) for layer in hparams.layers])
        else:
            projector = torch.stack([
                _projector_on(alpha, model, tokenizer, layer, hparams, projector_device) for layer in hparams.layers
            ])
        _synchronise(model)
    seconds = time.perf_counter() - started
    ee.prepared[key] = _Prepared(templates, projector, seconds)
    return seconds


def _projector_on(
    alpha: types.ModuleType, model: Any, tokenizer: Any, layer: int, hparams: Any, device: str
) -> torch.Tensor:
    cov = alpha.get_cov(model, tokenizer, hparams.rewrite_module_tmp.format(layer), hparams.mom2_dataset,
                        hparams.mom2_n_samples, hparams.mom2_dtype, hparams=hparams).to(device)
    U, S, _ = torch.linalg.svd(cov, full_matrices=False)
    null = U[:, S < hparams.nullspace_threshold]
    return (null @ null.T).cpu()


def state_bytes(ee: EasyEdit, model: Any, measure: Any) -> int:
    """Bytes of what EasyEdit keeps for ``model`` between edits (ROME's inverse second moments,
    AlphaEdit's projectors and ``K_p K_pᵀ``), as ``measure`` (a tensor-bytes walker) counts them."""
    name = ee.names.get(model)
    alpha = ee.alphaedit_main
    kept = [
        [v for k, v in ee.compute_u.inv_mom2_cache.items() if k[0] == name],
        [v for k, v in alpha.COV_CACHE.items() if k[0] == name],
        [v.projector for k, v in ee.prepared.items() if k[0] == name],
        [getattr(alpha, "cache_c", None)],
    ]
    return measure(kept)


def release(ee: EasyEdit, model: Any) -> None:
    """Drop what was prepared for ``model`` here and in EasyEdit's caches (a d_ff × d_ff matrix or more per layer)."""
    name = ee.names.get(model)
    if name is None:
        return
    for key in [k for k in ee.prepared if k[0] == name]:
        del ee.prepared[key]
    for cache in (ee.compute_u.inv_mom2_cache, ee.alphaedit_main.COV_CACHE):
        for key in [k for k in cache if k[0] == name]:
            del cache[key]
    for editor in ("rome", "alphaedit"):
        shutil.rmtree(ee.scratch / editor / name, ignore_errors=True)
    alpha = ee.alphaedit_main
    alpha.P, alpha.cache_c, alpha.P_loaded, alpha.cache_c_new = None, None, False, False


# --------------------------------------------------------------------------------------------
# One edit
# --------------------------------------------------------------------------------------------


def easyedit_request(request: Any) -> dict[str, Any]:
    """EasyEdit's request dict from an easyetcon ``EditRequest`` or a mapping
    (``target_new`` a string or ``{"str": ...}`` as in the ROME repository's data)."""
    get = (lambda k: request.get(k)) if isinstance(request, Mapping) else (lambda k: getattr(request, k, None))
    target = get("target_new")
    if isinstance(target, Mapping):
        target = target.get("str")
    prompt, subject = get("prompt"), get("subject")
    if not (isinstance(prompt, str) and isinstance(subject, str) and isinstance(target, str)) or not target.strip():
        raise ValueError(f"an EasyEdit request needs string prompt, subject and target_new; got {request!r}")
    if "{}" not in prompt and subject not in prompt:
        raise ValueError(f"subject {subject!r} is not in prompt {prompt!r}")
    case_id = get("case_id") or get("request_id") or 0
    # EasyEdit puts the space before the target itself.
    return {"prompt": prompt, "subject": subject, "target_new": target.lstrip(), "case_id": case_id}


_LOSS_LINE = re.compile(r"^loss (\S+) = ", re.MULTILINE)


def _timed_edit(model: Any, weight_names: list[str], restore: bool, info: dict | None, edit: Any) -> float:
    weights = dict(model.named_parameters())
    missing = [n for n in weight_names if n not in weights]
    if missing:
        raise ValueError(f"the model has no parameter(s) {missing}")
    before = {n: weights[n].detach().clone() for n in weight_names}
    with _grad_flags_kept(model), _captured_stdout() as printed:
        _synchronise(model)
        started = time.perf_counter()
        edit()
        _synchronise(model)
        seconds = time.perf_counter() - started
    with torch.no_grad():
        changes = {n: float((weights[n].detach() - before[n]).float().norm()) for n in weight_names}
        finite = all(bool(torch.isfinite(weights[n]).all()) for n in weight_names)
        if restore:
            for n in weight_names:
                weights[n].copy_(before[n])
    if info is not None:
        losses = [float(x) for x in _LOSS_LINE.findall(printed.getvalue())]
        info.update(seconds=seconds, weight_change_norm=changes, finite=finite, value_passes=len(losses),
                    final_loss=losses[-1] if losses else None, restored=restore)
    return seconds


def easyedit_rome(
    ee: EasyEdit, model: Any, tokenizer: Any, request: Any, settings: EditSettings | Mapping[str, Any] | None,
    *, texts: Sequence[str] | None = None, restore: bool = True, info: dict | None = None,
) -> float:
    """One edit with EasyEdit's ``apply_rome_to_model``; returns its wall-clock seconds.

    The one-time work (:func:`prepare_rome`) is done first if needed, untimed (its seconds go to
    ``info["prepare_seconds"]``). With ``restore`` the edited weight is put back afterwards, so
    repeated calls time the same edit of the same model. ``info``, if given, is filled with
    ``seconds``, ``weight_change_norm`` ({parameter: ‖ΔW‖}), ``finite``, ``value_passes`` (forward
    passes of EasyEdit's value optimisation), ``final_loss`` and ``prepare_seconds``.
    """
    s = EditSettings.of(settings)
    prepare_seconds = prepare_rome(ee, model, tokenizer, s, texts)
    hparams = rome_hparams(ee, model, s)
    ee.rome_main.CONTEXT_TEMPLATES_CACHE = ee.prepared[_rome_key(ee, model, s)].templates
    request = easyedit_request(request)
    names = [f"{hparams.rewrite_module_tmp.format(layer)}.weight" for layer in hparams.layers]

    def edit() -> None:
        ee.rome_main.apply_rome_to_model(model, tokenizer, [request], hparams)

    seconds = _timed_edit(model, names, restore, info, edit)
    if info is not None:
        info["prepare_seconds"] = prepare_seconds
    return seconds


def easyedit_alphaedit(
    ee: EasyEdit, model: Any, tokenizer: Any, request: Any, settings: EditSettings | Mapping[str, Any] | None,
    *, texts: Sequence[str] | None = None, restore: bool = True, info: dict | None = None,
) -> float:
    """One edit with EasyEdit's ``apply_AlphaEdit_to_model`` on a fresh editor (``K_p K_pᵀ = 0``);
    returns its wall-clock seconds. One-time work, ``restore`` and ``info`` as in :func:`easyedit_rome`;
    ``info`` also gets ``nullspace_dims`` (the rank of ``P`` per layer)."""
    s = EditSettings.of(settings)
    prepare_seconds = prepare_alphaedit(ee, model, tokenizer, s, texts)
    hparams = alphaedit_hparams(ee, model, s)
    prepared = ee.prepared[_alphaedit_key(ee, model, s)]
    alpha = ee.alphaedit_main
    alpha.CONTEXT_TEMPLATES_CACHE = prepared.templates
    alpha.P, alpha.P_loaded = prepared.projector, True
    d = prepared.projector.shape[-1]
    alpha.cache_c, alpha.cache_c_new = torch.zeros((len(hparams.layers), d, d)), True
    request = easyedit_request(request)
    names = [f"{hparams.rewrite_module_tmp.format(layer)}.weight" for layer in hparams.layers]

    def edit() -> None:
        alpha.apply_AlphaEdit_to_model(model, tokenizer, [request], hparams)

    seconds = _timed_edit(model, names, restore, info, edit)
    if info is not None:
        info["prepare_seconds"] = prepare_seconds
        info["nullspace_dims"] = [round(float(p.trace())) for p in prepared.projector]  # P is a projector
    return seconds


# --------------------------------------------------------------------------------------------
# Smoke test
# --------------------------------------------------------------------------------------------


def random_llama(
    hidden: int, intermediate: int, tokenizer: Any, *, layers: int = 2, positions: int = 128, seed: int = 0
) -> Any:
    """A random ``layers``-layer Llama (fp32, eval) for ``tokenizer``; heads of 64 dimensions."""
    from transformers import LlamaConfig, LlamaForCausalLM

    heads = max(1, hidden // 64)
    config = LlamaConfig(
        hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=heads, vocab_size=len(tokenizer), max_position_embeddings=positions,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def random_texts(tokenizer: Any, count: int, length: int, seed: int = 0) -> list[str]:
    """``count`` texts of about ``length`` random tokens (enough tokens make the second moment full rank)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, len(tokenizer), (count, length), generator=generator)
    return [tokenizer.decode(row.tolist(), skip_special_tokens=True) for row in ids]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one EasyEdit ROME and one AlphaEdit edit on a random Llama.")
    parser.add_argument("--easyedit", required=True, help="EasyEdit checkout (the folder holding easyeditor/)")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--intermediate", type=int, default=None, help="default 4 x hidden")
    parser.add_argument("--steps", type=int, default=5, help="Adam steps of the value optimisation")
    parser.add_argument("--samples", type=int, default=None, help="statistics texts (default: enough tokens for d_ff)")
    parser.add_argument("--generated-prefixes", action="store_true", help="let EasyEdit sample its context templates")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="e.g. cuda (the projector's SVD then runs there too)")
    parser.add_argument("--repeat", type=int, default=1, help="timed edits per editor (the fastest is reported)")
    parser.add_argument("--out", type=Path, help="write the numbers as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from easyetcon.testing.tiny import tiny_tokenizer

    ee = load_easyedit(args.easyedit)
    tokenizer = tiny_tokenizer()
    intermediate = args.intermediate or 4 * args.hidden
    model = random_llama(args.hidden, intermediate, tokenizer).to(args.device)
    positions = model.config.max_position_embeddings
    samples = args.samples or -(-2 * intermediate // (positions - 8))  # about 2 x d_ff tokens
    texts = random_texts(tokenizer, samples, positions - 8)
    prefixes = None if args.generated_prefixes else [
        "{}", "The city of Rome is old. {}", "Therefore the answer is. {}", "Because it was late. {}",
        "I think that. {}", "You said that. {}",
    ]
    request = {"prompt": "The Eiffel Tower is located in", "subject": "The Eiffel Tower", "target_new": "Rome"}
    common = dict(layer=0, steps=args.steps, mom2_n_samples=samples, prefixes=prefixes, prefix_count=5)
    rome = EditSettings(learning_rate=0.5, clamp_norm_factor=4.0, weight_decay=1e-3, **common)
    alpha = EditSettings(learning_rate=0.1, clamp_norm_factor=0.75, weight_decay=0.5, **common)

    report: dict[str, Any] = {
        "easyedit": str(ee.root), "commit": easyedit_commit(ee), "hidden": args.hidden, "intermediate": intermediate,
        "threads": torch.get_num_threads(), "statistics_texts": samples,
        "settings": {"rome": asdict(rome), "alphaedit": asdict(alpha)},
    }
    report["rome_prepare_seconds"] = prepare_rome(ee, model, tokenizer, rome, texts)
    on_gpu = torch.device(args.device).type != "cpu"
    report["alphaedit_prepare_seconds"] = prepare_alphaedit(
        ee, model, tokenizer, alpha, texts, projector_device=args.device if on_gpu else None
    )
    for name, run, settings in (("rome", easyedit_rome, rome), ("alphaedit", easyedit_alphaedit, alpha)):
        best, info = float("inf"), {}
        for _ in range(args.repeat):
            info = {}
            best = min(best, run(ee, model, tokenizer, request, settings, info=info))
        changed = all(v > 0 for v in info["weight_change_norm"].values())
        report[name] = {"seconds": best, **info}
        print(f"EasyEdit {name}: {best:.3f} s per edit (hidden {args.hidden}, d_ff {intermediate}); prepare "
              f"{report[name + '_prepare_seconds']:.2f} s; |dW| {info['weight_change_norm']}; "
              f"{info['value_passes']} value passes, final loss {info['final_loss']}", flush=True)
        if not (changed and info["finite"]):
            raise SystemExit(f"EasyEdit {name} did not change the weight finitely: {info}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
