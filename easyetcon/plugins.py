"""The plugin host: a typed facade over pluggy's PluginManager.

Load order (after tox 4): internal plugins, then the ``easyetcon`` entry points of installed
distributions minus the blocked ones, then plugins passed explicitly; finally
``check_pending()`` so a misspelled hook implementation fails at load time.

Environment variables:

* ``EASYETCON_BLOCK_PLUGINS`` — comma-separated entry-point names not to load
  (``EASYETCON_BLOCK_PLUGINS=world,intrinsic``); ``*`` blocks every entry point.
* ``EASYETCON_TRACE_HOOKS`` — set to ``1`` to print every hook call to stderr.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from importlib import metadata
from typing import Any

import pluggy
from pydantic import BaseModel

from easyetcon import hookspecs
from easyetcon.errors import PluginError
from easyetcon.hookspecs import PROJECT
from easyetcon.registry import DatasetInfo, EditorInfo, Family, NamedPart, Registry, check_reference

BLOCK_ENV = "EASYETCON_BLOCK_PLUGINS"
TRACE_ENV = "EASYETCON_TRACE_HOOKS"
ENTRY_POINT_GROUP = "easyetcon"
CORE_DISTRIBUTION = "easyetcon (core)"

#: Internal plugins: part of the host, registered before entry points and never blocked.
INTERNAL_PLUGINS = ("easyetcon.adapters",)

_EDITOR_HOOKS = {
    "easyetcon_register_memory_editors": Family.MEMORY,
    "easyetcon_register_merging_editors": Family.MERGING,
    "easyetcon_register_intrinsic_editors": Family.INTRINSIC,
    "easyetcon_register_consolidators": Family.CONSOLIDATION,
}


def blocked_from_environment() -> set[str]:
    raw = os.environ.get(BLOCK_ENV, "")
    return {name.strip() for name in raw.split(",") if name.strip()}


class PluginHost:
    """Loads plugins and builds the :class:`~easyetcon.registry.Registry` from their hooks."""

    def __init__(
        self,
        *,
        load_entry_points: bool = True,
        blocked: Iterable[str] = (),
        plugins: Iterable[object] = (),
        trace: bool | None = None,
    ) -> None:
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._distributions: dict[str, str] = {}
        self._registry: Registry | None = None
        self.blocked = set(blocked) | blocked_from_environment()

        import importlib

        for module_name in INTERNAL_PLUGINS:
            self._register(importlib.import_module(module_name), module_name, CORE_DISTRIBUTION)
        if load_entry_points:
            self._load_entry_points()
        for plugin in plugins:
            self.register(plugin)
        if trace if trace is not None else os.environ.get(TRACE_ENV, "") not in ("", "0"):
            self.pm.trace.root.setwriter(sys.stderr.write)
            self.pm.enable_tracing()
        self._check_pending()

    # ---- loading -------------------------------------------------------------------------
    def _load_entry_points(self) -> None:
        block_all = "*" in self.blocked
        for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if block_all or entry_point.name in self.blocked:
                continue
            if self.pm.get_plugin(entry_point.name) is not None:
                continue  # the same distribution seen twice on sys.path
            distribution = entry_point.dist.name if entry_point.dist else "unknown"
            try:
                plugin = entry_point.load()
            except Exception as error:
                raise PluginError(
                    f"plugin {entry_point.name!r} (distribution {distribution!r}, "
                    f"{entry_point.value}) failed to import: {error}; fix it, or block it with "
                    f"{BLOCK_ENV}={entry_point.name}"
                ) from error
            self._register(plugin, entry_point.name, distribution)

    def _register(self, plugin: object, name: str, distribution: str) -> None:
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as error:  # e.g. a hook implementation asking for an argument the spec lacks
            raise PluginError(
                f"plugin {name!r} from {distribution!r} does not fit easyetcon.hookspecs: {error}"
            ) from error
        except ValueError as error:
            raise PluginError(f"plugin {name!r} from {distribution!r}: {error}") from error
        self._distributions[name] = distribution
        self._registry = None

    def register(self, plugin: object, name: str | None = None, distribution: str | None = None) -> str:
        """Register a plugin object directly (tests, notebooks). Returns its plugin name."""
        name = name or getattr(plugin, "__name__", None) or f"local-{id(plugin)}"
        self._register(plugin, name, distribution or f"local:{name}")
        self._check_pending()
        return name

    def _check_pending(self) -> None:
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as error:
            name = self.pm.get_name(error.plugin) if error.plugin else "?"
            raise PluginError(
                f"plugin {name!r} ({self._distributions.get(name or '', 'unknown')}) implements a "
                f"hook that does not exist — check the spelling against easyetcon.hookspecs: {error}"
            ) from error

    def plugins(self) -> list[tuple[str, str]]:
        """``(plugin name, distribution)`` of every loaded plugin, in load order."""
        return [(name, self._distributions[name]) for name in self._distributions if self.pm.get_plugin(name)]

    # ---- the registry ---------------------------------------------------------------------
    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = self._build_registry()
        return self._registry

    def _call_per_plugin(self, hook_name: str, make_register: Callable[[str, str], Callable]) -> None:
        """Call a registration hook plugin by plugin, so each ``register`` knows its caller."""
        hook = getattr(self.pm.hook, hook_name)
        all_plugins = [impl.plugin for impl in hook.get_hookimpls()]
        for impl in hook.get_hookimpls():
            name = impl.plugin_name
            distribution = self._distributions.get(name, f"local:{name}")
            others = [p for p in all_plugins if p is not impl.plugin]
            caller = self.pm.subset_hook_caller(hook_name, remove_plugins=others)
            try:
                caller(register=make_register(name, distribution))
            except PluginError:
                raise
            except Exception as error:
                raise PluginError(
                    f"plugin {name!r} ({distribution}) failed in {hook_name}: {error}"
                ) from error

    def _build_registry(self) -> Registry:
        registry = Registry()
        for hook_name, family in _EDITOR_HOOKS.items():
            self._call_per_plugin(
                hook_name,
                lambda plugin, dist, family=family: _editor_register(registry, family, plugin, dist),
            )
        self._call_per_plugin(
            "easyetcon_register_datasets",
            lambda plugin, dist: _dataset_register(registry, plugin, dist),
        )
        for hook_name, kind in (
            ("easyetcon_register_metrics", "metric"),
            ("easyetcon_register_rewards", "reward"),
            ("easyetcon_register_models", "model"),
            ("easyetcon_register_text_sources", "text-source"),
            ("easyetcon_register_hparams_converters", "hparams-converter"),
        ):
            self._call_per_plugin(
                hook_name, lambda plugin, dist, kind=kind: _part_register(registry, kind, plugin, dist)
            )
        self._call_per_plugin(
            "easyetcon_register_model_adapters",
            lambda plugin, dist: _adapter_register(registry, plugin, dist),
        )
        return registry

    # ---- typed lifecycle calls ------------------------------------------------------------
    def before_step(self, step: Any) -> list[str]:
        """Veto reasons returned by ``easyetcon_before_step`` implementations (empty: go ahead)."""
        return [reason for reason in self.pm.hook.easyetcon_before_step(step=step) if reason]

    def after_step(self, step: Any, record: Any, seconds: float) -> None:
        self.pm.hook.easyetcon_after_step(step=step, record=record, seconds=seconds)

    def step_error(self, step: Any, error: BaseException) -> None:
        try:
            self.pm.hook.easyetcon_step_error(step=step, error=error)
        except Exception:  # an observer must never mask the real error
            pass

    def register_commands(self, cli: Any) -> None:
        self.pm.hook.easyetcon_register_commands(cli=cli)


def _check_summary(summary: Any, what: str) -> None:
    if not isinstance(summary, str) or not summary.strip() or "\n" in summary.strip():
        raise PluginError(f"{what}: summary must be one non-empty line")


def _editor_register(registry: Registry, family: Family, plugin: str, distribution: str) -> Callable:
    def register(
        name: str,
        editor_class: type | str,
        *,
        config: type[BaseModel] | str,
        subfamily: str,
        summary: str,
    ) -> None:
        what = f"editor {name!r} from plugin {plugin!r} ({distribution})"
        if not isinstance(name, str) or not name.strip():
            raise PluginError(f"plugin {plugin!r} registered an editor without a name")
        _check_summary(summary, what)
        if not isinstance(subfamily, str) or not subfamily.strip():
            raise PluginError(f"{what}: subfamily must be a non-empty label such as 'fine-tuning'")
        check_reference(editor_class, what)
        check_reference(config, what)
        info = EditorInfo(name, family, subfamily, editor_class, config, summary.strip(), distribution)
        # objects registered directly are checked now; references when first imported
        if not isinstance(config, str):
            info.config_model
        if not isinstance(editor_class, str):
            info.editor_class
        registry.add_editor(info)

    return register


def _dataset_register(registry: Registry, plugin: str, distribution: str) -> Callable:
    def register(
        name: str,
        loader: Callable | str,
        *,
        config: type[BaseModel] | str,
        summary: str,
        detect: Callable[[list[dict]], bool] | str | None = None,
    ) -> None:
        what = f"dataset {name!r} from plugin {plugin!r} ({distribution})"
        _check_summary(summary, what)
        for source in (loader, config, detect):
            check_reference(source, what)
        info = DatasetInfo(name, loader, config, summary.strip(), distribution, detect)
        for source, attribute in ((loader, "loader"), (config, "config_model"), (detect, "detect")):
            if not isinstance(source, str):
                getattr(info, attribute)
        registry.add_dataset(info)

    return register


def _check_metric(metric: Any, what: str) -> None:
    for attribute in ("protocol", "version", "score"):
        if not hasattr(metric, attribute):
            raise PluginError(f"{what}: a metric needs a {attribute!r} attribute")


def _check_reward(reward: Any, what: str) -> None:
    if not callable(reward):
        raise PluginError(f"{what}: a reward must be callable(completions, requests)")


def _check_model_locator(locate: Any, what: str) -> None:
    if not callable(locate):
        raise PluginError(f"{what}: a model name's locate must be callable")


def _check_text_source(find: Any, what: str) -> None:
    if not callable(find):
        raise PluginError(f"{what}: a text source's find must be callable(model)")


def _check_converter(convert: Any, what: str) -> None:
    if not callable(convert):
        raise PluginError(f"{what}: an hparams converter must be callable(hparams)")


_PART_CHECKS = {
    "metric": _check_metric, "reward": _check_reward, "model": _check_model_locator, "text-source": _check_text_source,
    "hparams-converter": _check_converter,
}
#: Statistics sources the core reads itself; a text source may not take their names.
_CORE_TEXT_SOURCES = ("auto", "model-samples")


def _part_register(registry: Registry, kind: str, plugin: str, distribution: str) -> Callable:
    def register(name: str, obj: Any, *, summary: str) -> None:
        what = f"{kind} {name!r} from plugin {plugin!r} ({distribution})"
        _check_summary(summary, what)
        if kind == "model" and (not isinstance(name, str) or not name.strip() or "/" in name):
            raise PluginError(f"{what}: a model name is one word without '/' (hub ids have one)")
        if kind == "text-source" and (
            not isinstance(name, str) or not name.strip() or any(c in name for c in ":/ ") or name in _CORE_TEXT_SOURCES
        ):
            raise PluginError(f"{what}: a text source's name is one word without ':' or '/', other than {', '.join(_CORE_TEXT_SOURCES)}")
        check_reference(obj, what)
        part = NamedPart(kind, name, obj, summary.strip(), distribution, check=_PART_CHECKS[kind])
        if not isinstance(obj, str):
            part.obj
        registry.add_part(part)

    return register


def _adapter_register(registry: Registry, plugin: str, distribution: str) -> Callable:
    from easyetcon.adapters import ArchitectureAdapter

    def register(name: str, adapter: ArchitectureAdapter, *, matches: Any) -> None:
        what = f"model adapter {name!r} from plugin {plugin!r} ({distribution})"
        if not isinstance(adapter, ArchitectureAdapter):
            raise PluginError(f"{what}: adapter must be an easyetcon.adapters.ArchitectureAdapter")
        if not (callable(matches) or (isinstance(matches, tuple) and matches)):
            raise PluginError(f"{what}: matches must be a tuple of model classes or a predicate")
        registry.add_part(
            NamedPart("adapter", name, adapter, f"architecture adapter {name}", distribution, {"matches": matches})
        )

    return register


_default_host: PluginHost | None = None


def get_host() -> PluginHost:
    """The process-wide plugin host, loaded on first use."""
    global _default_host
    if _default_host is None:
        _default_host = PluginHost()
    return _default_host


def set_host(host: PluginHost | None) -> None:
    """Replace (or with ``None`` forget) the process-wide host; tests use a fresh one."""
    global _default_host
    _default_host = host
