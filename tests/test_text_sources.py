"""Text sources registered by plugins (``easyetcon_register_text_sources``): what ``statistics.source``
reads besides the core's own ``model-samples`` and ``dataset:``."""

import logging

import pytest
from pydantic import ValidationError

from easyetcon.errors import ConfigError, PluginError
from easyetcon.hookspecs import hookimpl
from easyetcon.plugins import PluginHost
from easyetcon.statistics import LayerStatistics, StatisticsConfig, TextSource, choose_source
from easyetcon.testing import tiny_model
from easyetcon.testing.tiny import TINY_CORPUS


def notes_of(model):
    if getattr(model.torch_model.config, "has_notes", False):
        return TextSource("its config says it has notes", "notes:v1", lambda: list(TINY_CORPUS))
    return None


class NotesPlugin:
    @hookimpl
    def easyetcon_register_text_sources(self, register):
        register("notes", notes_of, summary="short notes about models that have them")


@pytest.fixture
def host(monkeypatch):
    host = PluginHost(plugins=[NotesPlugin()])
    monkeypatch.setattr("easyetcon.plugins._default_host", host)
    return host


def model_with_notes(host, notes=True):
    model = tiny_model("llama", registry=host.registry)
    model.torch_model.config.has_notes = notes
    return model


def test_auto_takes_the_first_registered_source_with_texts_for_the_model(host, caplog):
    model = model_with_notes(host)
    chosen = choose_source(model, StatisticsConfig())
    assert (chosen.kind, chosen.reason, chosen.corpus) == ("notes", "auto: its config says it has notes", "notes:v1")
    config = StatisticsConfig(samples=4, max_length=16, cache=False, progress=False)
    with caplog.at_level(logging.INFO, logger="easyetcon.intrinsic.statistics"):
        LayerStatistics(config).get(model, [0])
    assert "source notes (auto: its config says it has notes); computed, from 4 texts" in caplog.text


def test_auto_without_a_claiming_source_samples_the_model_and_says_what_it_asked(host):
    chosen = choose_source(model_with_notes(host, notes=False), StatisticsConfig())
    assert chosen.kind == "model-samples"
    assert "no registered text source has texts for the model" in chosen.reason
    assert "notes: short notes about models that have them" in chosen.reason and "world: " in chosen.reason


def test_a_named_source_is_validated_against_the_registry_and_must_have_texts(host):
    assert StatisticsConfig(source="notes").source == "notes"
    with pytest.raises(ValidationError, match="unknown statistics source 'nowhere'.*notes"):
        StatisticsConfig(source="nowhere")
    with pytest.raises(ConfigError, match="statistics source 'notes' \\(short notes about models that have them\\) has no texts for model"):
        choose_source(model_with_notes(host, notes=False), StatisticsConfig(source="notes"))


def test_a_source_that_returns_something_else_is_named(monkeypatch):
    class Broken:
        @hookimpl
        def easyetcon_register_text_sources(self, register):
            register("broken", lambda model: "some text", summary="returns a string")

    host = PluginHost(plugins=[Broken()])
    monkeypatch.setattr("easyetcon.plugins._default_host", host)
    with pytest.raises(ConfigError, match="text source 'broken' .* returned str, not an easyetcon.statistics.TextSource"):
        choose_source(tiny_model("llama", registry=host.registry), StatisticsConfig(source="broken"))


@pytest.mark.parametrize("name", ["auto", "model-samples", "dataset:x", "two words", ""])
def test_a_source_may_not_take_a_core_name_or_look_like_one(name):
    class Squatter:
        @hookimpl
        def easyetcon_register_text_sources(self, register):
            register(name, notes_of, summary="takes a name it may not")

    with pytest.raises(PluginError, match="a text source's name is one word"):
        PluginHost(plugins=[Squatter()]).registry
