"""The taxonomy registry: every editor, dataset, metric, reward and architecture adapter the
loaded plugins registered, with the distribution each came from.

A plugin may register a class or function as the object itself or by reference, a string
``"package.module:attribute"``. A reference is imported the first time the object is used, so
building the registry, and ``easyetcon plugins``, imports no editor's dependencies (torch,
transformers): the registry lists names, families and summaries without them. A reference is
checked when it is imported, with the same checks and messages as an object registered directly.
"""

from __future__ import annotations

import enum
import pkgutil
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from pydantic import BaseModel, ValidationError

from easyetcon.errors import ConfigError, PluginError, UnknownNameError


class Family(str, enum.Enum):
    """The KnowEdit taxonomy's three families, plus EtCon's consolidation stage."""

    MEMORY = "external-memory"
    MERGING = "merging"
    INTRINSIC = "intrinsic"
    CONSOLIDATION = "consolidation"

    @classmethod
    def parse(cls, value: str | Family) -> Family:
        if isinstance(value, Family):
            return value
        aliases = {"memory": cls.MEMORY, "external": cls.MEMORY}
        try:
            return aliases.get(value) or cls(value)
        except ValueError:
            valid = ", ".join(f.value for f in cls)
            raise ConfigError(f"unknown family {value!r}; valid families: {valid}") from None


#: ``"package.module:attribute"``, the attribute possibly dotted (``"pkg.mod:Outer.Inner"``).
REFERENCE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def check_reference(value: Any, what: str) -> None:
    """Refuse, at registration, a string that is not a well-formed reference."""
    if isinstance(value, str) and REFERENCE.match(value) is None:
        raise PluginError(f"{what}: {value!r} is not a reference of the form 'package.module:attribute'")


def resolve(value: Any, what: str) -> Any:
    """``value`` itself, or the object a reference names (imported now)."""
    if not isinstance(value, str):
        return value
    module_name, _, attribute = value.partition(":")
    try:
        found = pkgutil.resolve_name(value)
    except ImportError as error:
        raise PluginError(f"{what}: cannot import {value!r}: {error}") from error
    except AttributeError:
        raise PluginError(f"{what}: module {module_name!r} has no attribute {attribute!r} (registered as {value!r})") from None
    return found


def resolved_config_model(source: Any, what: str) -> type[BaseModel]:
    """The config model ``source`` is or names, checked."""
    config = resolve(source, what)
    check_config_model(config, what)
    return config


def check_config_model(config: Any, what: str) -> None:
    if not (isinstance(config, type) and issubclass(config, BaseModel)):
        raise PluginError(f"{what}: config must be a pydantic BaseModel subclass, got {config!r}")
    if config.model_config.get("extra") != "forbid":
        raise PluginError(
            f"{what}: config model {config.__name__} must set model_config = "
            f"ConfigDict(extra='forbid') so misspelled options are rejected"
        )


@dataclass(frozen=True)
class EditorInfo:
    """What a plugin registered for one editor. ``editor_source`` and ``config_source`` are the
    class and config model as registered (objects or references); ``editor_class`` and
    ``config_model`` import and check them on first use."""

    name: str
    family: Family
    subfamily: str
    editor_source: type | str
    config_source: type[BaseModel] | str
    summary: str
    distribution: str

    @property
    def _what(self) -> str:
        return f"editor {self.name!r} ({self.distribution})"

    @cached_property
    def editor_class(self) -> type:
        from easyetcon.protocols import FAMILY_PROTOCOLS, missing_protocol_methods

        editor_class = resolve(self.editor_source, self._what)
        protocol = FAMILY_PROTOCOLS[self.family.value]
        missing = missing_protocol_methods(editor_class, protocol) if isinstance(editor_class, type) else ["a class"]
        if missing:
            raise PluginError(
                f"{self._what}: {editor_class!r} lacks {', '.join(missing)} required by "
                f"easyetcon.protocols.{protocol.__name__}"
            )
        return editor_class

    @cached_property
    def config_model(self) -> type[BaseModel]:
        return resolved_config_model(self.config_source, self._what)

    def validate_options(self, options: dict[str, Any] | BaseModel | None = None) -> BaseModel:
        """Validate ``options`` against the editor's config model; every field error is reported."""
        if isinstance(options, self.config_model):
            return options
        if isinstance(options, BaseModel):
            options = options.model_dump()
        try:
            return self.config_model.model_validate(options or {})
        except ValidationError as error:
            raise ConfigError(
                f"invalid options for editor {self.name!r}", format_field_errors(error)
            ) from None

    def create(self, options: dict[str, Any] | BaseModel | None = None, **kwargs: Any) -> Any:
        """Construct the editor from validated options (a dict, a config instance, or keywords)."""
        merged = dict(options or {}) if not isinstance(options, BaseModel) else options
        if kwargs:
            if isinstance(merged, BaseModel):
                merged = {**merged.model_dump(), **kwargs}
            else:
                merged = {**merged, **kwargs}
        return self.editor_class(self.validate_options(merged))


def format_field_errors(error: ValidationError, prefix: str = "") -> list[str]:
    """Turn a pydantic error into ``"field 'x': message"`` lines."""
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(options)"
        lines.append(f"{prefix}field {where!r}: {item['msg']}")
    return lines


@dataclass(frozen=True)
class DatasetInfo:
    """A registered dataset loader; the ``*_source`` fields are objects or references,
    imported (and checked) by ``loader``, ``config_model`` and ``detect`` on first use."""

    name: str
    loader_source: Callable[[BaseModel], list] | str
    config_source: type[BaseModel] | str
    summary: str
    distribution: str
    detect_source: Callable[[list[dict]], bool] | str | None = None

    @property
    def _what(self) -> str:
        return f"dataset {self.name!r} ({self.distribution})"

    @cached_property
    def loader(self) -> Callable[[BaseModel], list]:
        loader = resolve(self.loader_source, self._what)
        if not callable(loader):
            raise PluginError(f"{self._what}: loader must be callable")
        return loader

    @cached_property
    def config_model(self) -> type[BaseModel]:
        return resolved_config_model(self.config_source, self._what)

    @cached_property
    def detect(self) -> Callable[[list[dict]], bool] | None:
        detect = resolve(self.detect_source, self._what)
        if detect is not None and not callable(detect):
            raise PluginError(f"{self._what}: detect must be callable(records) -> bool")
        return detect

    def load(self, options: dict[str, Any] | None = None) -> list:
        try:
            config = self.config_model.model_validate(options or {})
        except ValidationError as error:
            raise ConfigError(
                f"invalid options for dataset {self.name!r}", format_field_errors(error)
            ) from None
        return self.loader(config)


@dataclass(frozen=True)
class NamedPart:
    """A registered metric, reward, architecture adapter or model name; ``source`` is the
    object or a reference, imported and checked (``check``) by ``obj`` on first use."""

    kind: str
    name: str
    source: Any
    summary: str
    distribution: str
    extra: dict[str, Any] = field(default_factory=dict)
    check: Callable[[Any, str], None] | None = field(default=None, compare=False, repr=False)

    @cached_property
    def obj(self) -> Any:
        what = f"{self.kind} {self.name!r} ({self.distribution})"
        found = resolve(self.source, what)
        if self.check is not None:
            self.check(found, what)
        return found


class Registry:
    """Everything registered by the loaded plugins, queryable by family and subfamily."""

    def __init__(self) -> None:
        self._editors: dict[str, EditorInfo] = {}
        self._datasets: dict[str, DatasetInfo] = {}
        self._parts: dict[str, dict[str, NamedPart]] = {
            "metric": {}, "reward": {}, "adapter": {}, "model": {}, "text-source": {}, "hparams-converter": {},
        }

    # ---- editors -------------------------------------------------------------------------
    def add_editor(self, info: EditorInfo) -> None:
        existing = self._editors.get(info.name)
        if existing is not None:
            raise PluginError(
                f"editor name {info.name!r} is registered twice: by distribution "
                f"{existing.distribution!r} and by {info.distribution!r}; uninstall one or block it "
                f"with EASYETCON_BLOCK_PLUGINS"
            )
        self._editors[info.name] = info

    def editors(
        self, family: str | Family | None = None, subfamily: str | None = None
    ) -> list[EditorInfo]:
        """Registered editors, optionally filtered, sorted by family then name."""
        wanted = Family.parse(family) if family is not None else None
        found = [
            info
            for info in self._editors.values()
            if (wanted is None or info.family is wanted)
            and (subfamily is None or info.subfamily == subfamily)
        ]
        order = list(Family)
        return sorted(found, key=lambda i: (order.index(i.family), i.name))

    def editor(self, name: str) -> EditorInfo:
        try:
            return self._editors[name]
        except KeyError:
            raise UnknownNameError(f"unknown editor {name!r}; {self.describe_known_editors()}") from None

    def describe_known_editors(self) -> str:
        if not self._editors:
            return "no editors are registered (are the plugins installed, or all blocked?)"
        groups = []
        for family in Family:
            names = [i.name for i in self.editors(family)]
            if names:
                groups.append(f"{family.value}: {', '.join(names)}")
        return "known editors by family — " + "; ".join(groups)

    # ---- datasets ------------------------------------------------------------------------
    def add_dataset(self, info: DatasetInfo) -> None:
        existing = self._datasets.get(info.name)
        if existing is not None:
            raise PluginError(
                f"dataset name {info.name!r} is registered twice: by {existing.distribution!r} "
                f"and by {info.distribution!r}"
            )
        self._datasets[info.name] = info

    def datasets(self) -> list[DatasetInfo]:
        return sorted(self._datasets.values(), key=lambda d: d.name)

    def datasets_in_registration_order(self) -> list[DatasetInfo]:
        """The order formats are tried in when a file's format is detected."""
        return list(self._datasets.values())

    def dataset(self, name: str) -> DatasetInfo:
        try:
            return self._datasets[name]
        except KeyError:
            known = ", ".join(sorted(self._datasets)) or "none"
            raise UnknownNameError(f"unknown dataset {name!r}; known datasets: {known}") from None

    # ---- metrics, rewards, adapters --------------------------------------------------------
    def add_part(self, part: NamedPart) -> None:
        table = self._parts[part.kind]
        existing = table.get(part.name)
        if existing is not None:
            raise PluginError(
                f"{part.kind} name {part.name!r} is registered twice: by "
                f"{existing.distribution!r} and by {part.distribution!r}"
            )
        table[part.name] = part

    def parts(self, kind: str) -> list[NamedPart]:
        return list(self._parts[kind].values())

    def part(self, kind: str, name: str) -> NamedPart:
        try:
            return self._parts[kind][name]
        except KeyError:
            known = ", ".join(sorted(self._parts[kind])) or "none"
            raise UnknownNameError(f"unknown {kind} {name!r}; known {kind}s: {known}") from None

    def metric(self, name: str) -> Any:
        return self.part("metric", name).obj

    def reward(self, name: str) -> Any:
        return self.part("reward", name).obj

    def all_names(self) -> Iterable[str]:
        return self._editors.keys()
