"""The easyetcon hook specifications: the contract between the host and every plugin.

A plugin is any module or object with functions marked ``@hookimpl`` whose names match the
specs below. Built-in plugins (``plugins/easyetcon_*``) and third-party ones are found the same
way: through the ``easyetcon`` entry-point group of an installed distribution::

    [project.entry-points.easyetcon]
    my_editor = "my_package.plugin"

Hooks come in three groups:

* **Registration** hooks run once when the host loads. Each receives a ``register`` callable;
  the host, not the plugin, owns duplicate detection, validation and error messages, and records
  which distribution every name came from.
* **Chain lifecycle** hooks run around every step of an :class:`easyetcon.EditChain`.
* **Command-line** hooks let a plugin add ``easyetcon`` sub-commands.

Hookspecs are never changed incompatibly: a hook gains an argument by declaring it with a
default, so older implementations keep working.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # imported for annotations only; keeps this module import-light
    import click

    from easyetcon.chain import StepContext
    from easyetcon.records import EditRecord

PROJECT = "easyetcon"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --------------------------------------------------------------------------------------------
# Registration: the four families of editing methods (KnowEdit taxonomy + consolidation)
# --------------------------------------------------------------------------------------------


@hookspec
def easyetcon_register_memory_editors(register: Any) -> None:
    """Register editors of the **external-memory** family.

    Called when the host builds its registry: on first use, and again after a plugin is
    registered later. External-memory editors keep edits outside the
    weights (a retrieval memory, a codebook at a layer) and decide at inference time whether a
    query is in scope.

    :param register: call ``register(name, editor_class, *, config, subfamily, summary)`` once
        per editor. ``name`` is the unique editor name used in chains (``"retrieval-memory"``);
        ``editor_class`` is constructed as ``editor_class(config_instance)`` and must satisfy
        :class:`easyetcon.protocols.MemoryEditor`; ``config`` is a pydantic model class with
        ``extra="forbid"`` holding every option; ``subfamily`` is a short label such as
        ``"retrieval"`` or ``"codebook"``; ``summary`` is one line shown by
        ``easyetcon plugins``. A name registered twice is an error naming both distributions.
        ``editor_class`` and ``config`` may also be given by reference, a string
        ``"package.module:Class"``: the module is imported the first time the editor is used
        and checked then, so listing the plugins does not import its dependencies (the
        built-ins register this way).
    :returns: nothing; results go through ``register``.
    """


@hookspec
def easyetcon_register_merging_editors(register: Any) -> None:
    """Register editors of the **merging** family.

    Called when the host builds its registry: on first use, and again after a plugin is
    registered later. Merging editors train small adapters for the new
    knowledge (e.g. LoRA) and merge them into the base weights (task arithmetic, TIES, DARE).

    :param register: ``register(name, editor_class, *, config, subfamily, summary)`` as in
        :func:`easyetcon_register_memory_editors`; ``editor_class`` must satisfy
        :class:`easyetcon.protocols.WeightEditor`. Typical subfamily: ``"adapter-merge"``.
    :returns: nothing; results go through ``register``.
    """


@hookspec
def easyetcon_register_intrinsic_editors(register: Any) -> None:
    """Register editors of the **intrinsic-editing** family.

    Called when the host builds its registry: on first use, and again after a plugin is
    registered later. Intrinsic editors change the weights that store a
    fact (FT-L, FT-M, ROME, MEMIT, AlphaEdit).

    :param register: ``register(name, editor_class, *, config, subfamily, summary)`` as in
        :func:`easyetcon_register_memory_editors`; ``editor_class`` must satisfy
        :class:`easyetcon.protocols.WeightEditor`. Typical subfamilies: ``"fine-tuning"``,
        ``"locate-then-edit"``.
    :returns: nothing; results go through ``register``.
    """


@hookspec
def easyetcon_register_consolidators(register: Any) -> None:
    """Register **consolidation** stages, which run after an edit so the model *uses* the new fact
    when it generates freely (EtCon's TPSFT and GRPO).

    Called when the host builds its registry: on first use, and again after a plugin is
    registered later.

    :param register: ``register(name, editor_class, *, config, subfamily, summary)`` as in
        :func:`easyetcon_register_memory_editors`; ``editor_class`` must satisfy
        :class:`easyetcon.protocols.WeightEditor`. Typical subfamilies: ``"proximal-SFT"``,
        ``"RL"``.
    :returns: nothing; results go through ``register``.
    """


# --------------------------------------------------------------------------------------------
# Registration: what editors and evaluations are built from
# --------------------------------------------------------------------------------------------


@hookspec
def easyetcon_register_datasets(register: Any) -> None:
    """Register loaders of edit datasets (KnowEdit, CounterFact, ZsRE, the fact world, ...).

    Called when the host builds its registry: on first use, and again after a plugin is
    registered later.

    :param register: call ``register(name, loader, *, config, summary, detect=None)``.
        ``loader(config_instance)`` returns a list of :class:`easyetcon.EditRequest`;
        ``config`` is a pydantic model class of the loader's options (a path, a split, a seed);
        ``detect``, if given, is ``detect(records: list[dict]) -> bool`` and says whether raw
        JSON records are in this loader's format, so formats can be recognised automatically.
        ``loader``, ``config`` and ``detect`` may be references (``"package.module:name"``),
        imported on first use.
    :returns: nothing; results go through ``register``.
    """


@hookspec
def easyetcon_register_metrics(register: Any) -> None:
    """Register evaluation metrics and judges.

    Called when the host builds its registry: on first use, and again after a plugin is
    registered later.

    :param register: call ``register(name, metric, *, summary)``. ``metric`` is an object with
        string attributes ``protocol`` and ``version`` (every score is stored with both, so
        scores from different protocols are never mixed) and a method
        ``score(model, prompts, answers) -> list[float]`` where ``model`` is an
        :class:`easyetcon.EditableModel`, ``prompts`` a sequence of strings and ``answers`` a
        sequence of sequences of acceptable answers (one sequence per prompt). ``metric`` may be
        a reference (``"package.module:INSTANCE"``), imported and checked on first use.
    :returns: nothing; results go through ``register``.
    """


@hookspec
def easyetcon_register_rewards(register: Any) -> None:
    """Register reward functions for reinforcement-learning consolidation (GRPO).

    Called when the host builds its registry: on first use, and again after a plugin is
    registered later.

    :param register: call ``register(name, reward, *, summary)``. ``reward`` is a callable
        ``reward(completions, requests) -> list[float]`` taking the generated completions and,
        for each, the :class:`easyetcon.EditRequest` it answers; it returns one score per
        completion. ``reward`` may be a reference (``"package.module:function"``), imported on
        first use.
    :returns: nothing; results go through ``register``.
    """


@hookspec
def easyetcon_register_models(register: Any) -> None:
    """Register model names: short names that ``--model`` and a chain spec's ``model:`` accept
    wherever they accept a model folder (the world plugin registers ``default`` and ``wide``).

    Called when the host builds its registry: on first use, and again after a plugin is
    registered later.

    :param register: call ``register(name, locate, *, summary)``. ``locate()`` returns the model's
        folder (a :class:`pathlib.Path` that ``from_pretrained`` reads), or raises an
        :class:`easyetcon.errors.EasyEtconError` saying why it is missing and how to get it; it is
        called only when the name is used.
    :returns: nothing; results go through ``register``.
    """


@hookspec
def easyetcon_register_text_sources(register: Any) -> None:
    """Register sources of ordinary text for a model: what key statistics (``statistics.source``)
    and the preservation terms of consolidators read as "text the model usually sees".

    Called when the host builds its registry: on first use, and again after a plugin is
    registered later. The core reads ``model-samples`` and ``dataset:<path>`` itself; a plugin
    that knows more about some models offers their texts here (the world plugin registers
    ``world``: the pretraining corpus of a fact-world model).

    :param register: call ``register(name, find, *, summary)``. ``name`` is what
        ``statistics.source`` names (one word; not ``auto``, ``model-samples`` or ``dataset:...``);
        ``find(model)`` takes an :class:`easyetcon.EditableModel` and returns an
        :class:`easyetcon.statistics.TextSource` (a sentence saying why the texts are the model's,
        their identity for the statistics cache, and a function returning the texts), or ``None``
        when it has no texts for this model. ``statistics.source: auto`` asks every registered
        source in registration order and takes the first that returns one, else
        ``model-samples``. ``find`` may raise :class:`easyetcon.errors.ConfigError` saying why a
        model that should be its own is broken. ``find`` may be a reference, imported on first use.
    :returns: nothing; results go through ``register``.
    """


@hookspec
def easyetcon_register_hparams_converters(register: Any) -> None:
    """Register converters of EasyEdit hyperparameter files (``easyetcon convert-hparams``).

    Called when the host builds its registry: on first use, and again after a plugin is
    registered later. A plugin converts the files of the methods its editors implement; the
    host answers the keys every EasyEdit file has (``device``, module templates, ...).

    :param register: call ``register(alg_name, convert, *, summary)``. ``alg_name`` is the value
        of EasyEdit's ``alg_name`` key (matched case-insensitively); ``convert(hparams)`` takes
        the file's mapping without those common keys and returns an
        :class:`easyetcon.hparams.Conversion`: the editor, its options, and for every key it read
        the option it became or why there is none. The options are validated by the editor's
        config afterwards. ``convert`` may be a reference, imported on first use.
    :returns: nothing; results go through ``register``.
    """


@hookspec
def easyetcon_register_model_adapters(register: Any) -> None:
    """Register architecture adapters: where a model family keeps its blocks, MLP projections,
    final norm, embeddings and LM head.

    Called when the host builds its registry: on first use, and again after a plugin is
    registered later. Adapters are matched to a model by its class (or a
    structural predicate), never by substrings of its name.

    :param register: call ``register(name, adapter, *, matches)``. ``adapter`` is an
        :class:`easyetcon.adapters.ArchitectureAdapter`; ``matches`` is a tuple of
        ``torch.nn.Module`` classes (the model is an instance of one of them) or a callable
        ``matches(model) -> bool``.
    :returns: nothing; results go through ``register``.
    """


# --------------------------------------------------------------------------------------------
# Chain lifecycle
# --------------------------------------------------------------------------------------------


@hookspec
def easyetcon_before_step(step: StepContext) -> str | None:
    """Called before a chain step edits the model, for logging, timing or veto.

    :param step: a :class:`easyetcon.chain.StepContext` with the step ``index``, the ``editor``
        name, its ``family`` and validated ``config``, the ``requests`` of this step and the
        ``model`` (an :class:`easyetcon.EditableModel`).
    :returns: ``None`` to let the step run, or a string giving the reason to **veto** it. A veto
        stops the chain, restores the model to its state before the chain and raises
        :class:`easyetcon.errors.ChainStepError` quoting the reason.
    """


@hookspec
def easyetcon_after_step(step: StepContext, record: EditRecord, seconds: float) -> None:
    """Called after a chain step has edited the model successfully.

    :param step: the :class:`easyetcon.chain.StepContext` of the step (as in
        :func:`easyetcon_before_step`).
    :param record: the :class:`easyetcon.records.EditRecord` that can undo the step.
    :param seconds: wall-clock seconds the step took.
    :returns: nothing.
    """


@hookspec
def easyetcon_step_error(step: StepContext, error: BaseException) -> None:
    """Called when a chain step raised: after the failing step's own partial change has been
    reverted, before the chain undoes its earlier steps.

    :param step: the :class:`easyetcon.chain.StepContext` of the failed step.
    :param error: the exception the editor (or a veto) raised.
    :returns: nothing. Implementations must not raise; the error is re-raised by the chain as
        :class:`easyetcon.errors.ChainStepError`.
    """


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


@hookspec
def easyetcon_register_commands(cli: click.Group) -> None:
    """Add sub-commands to the ``easyetcon`` command line.

    Called once when the CLI starts, after the core commands (``plugins``, ``edit``, ``undo``)
    exist, so a plugin's commands appear only when the plugin is installed.

    :param cli: the root :class:`click.Group`; add commands with ``@cli.command()`` or
        ``cli.add_command(...)``.
    :returns: nothing.
    """
