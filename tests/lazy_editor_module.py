"""An editor module that only a by-reference registration names (tests/test_plugins.py checks
that it is imported when the editor is first used, not when the registry is built)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class LazyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    layer: int = 0


class LooseConfig(BaseModel):  # no extra="forbid": refused when first imported
    layer: int = 0


class LazyEditor:
    def __init__(self, config: LazyConfig) -> None:
        self.config = config

    def weights_to_edit(self, model, requests):
        return [model.adapter.weight_name("mlp_out", self.config.layer)]

    def edit(self, model, requests) -> None:
        pass


class NotAnEditor:
    pass


class NotAMetric:
    pass
