"""The taxonomy registry: every editor, dataset, metric, reward and architecture adapter the
loaded plugins registered, with the distribution each came from."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class EditorInfo:
    """What a plugin registered for one editor."""

    name: str
    family: Family
    subfamily: str
    editor_class: type
    config_model: type[BaseModel]
    summary: str
    distribution: str

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
    name: str
    loader: Callable[[BaseModel], list]
    config_model: type[BaseModel]
    summary: str
    distribution: str
    detect: Callable[[list[dict]], bool] | None = None

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
    """A registered metric, reward, architecture adapter or model name."""

    kind: str
    name: str
    obj: Any
    summary: str
    distribution: str
    extra: dict[str, Any] = field(default_factory=dict)


class Registry:
    """Everything registered by the loaded plugins, queryable by family and subfamily."""

    def __init__(self) -> None:
        self._editors: dict[str, EditorInfo] = {}
        self._datasets: dict[str, DatasetInfo] = {}
        self._parts: dict[str, dict[str, NamedPart]] = {"metric": {}, "reward": {}, "adapter": {}, "model": {}}

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
