"""The plugin host: discovery, blocking, tracing, validation of what plugins register."""

import sys
from importlib import metadata

import pytest
from pydantic import BaseModel

from easyetcon.chain import EditChain
from easyetcon.errors import PluginError, UnknownNameError
from easyetcon.hookspecs import hookimpl
from easyetcon.plugins import PluginHost
from easyetcon.testing import tiny_model, tiny_requests
from tests import toy_plugins
from tests.conftest import require_example_plugin


def test_entry_point_plugins_are_discovered_with_their_distribution():
    host = PluginHost()
    require_example_plugin(host)
    info = host.registry.editor("example-ft-last")
    assert info.distribution == "easyetcon-example-editor"
    assert info.family.value == "intrinsic"


def test_core_imports_lists_and_runs_a_chain_with_every_plugin_blocked(monkeypatch):
    monkeypatch.setenv("EASYETCON_BLOCK_PLUGINS", "*")
    host = PluginHost()
    assert host.registry.editors() == []
    assert [name for name, _ in host.plugins()] == ["easyetcon.adapters"]
    assert {p.name for p in host.registry.parts("adapter")} >= {"gpt2", "llama", "qwen2"}
    host.register(toy_plugins)
    model = tiny_model(registry=host.registry)
    before = model.state_hash()
    EditChain(["toy-shift"], host=host).apply(model, tiny_requests()[:1])
    assert model.state_hash() != before


def test_blocking_one_entry_point_by_name(monkeypatch):
    monkeypatch.setenv("EASYETCON_BLOCK_PLUGINS", "example_editor")
    host = PluginHost()
    assert "example_editor" not in [name for name, _ in host.plugins()]
    with pytest.raises(UnknownNameError):
        host.registry.editor("example-ft-last")


class _Config(BaseModel):
    model_config = {"extra": "forbid"}


def _plugin_registering(name, family_hook="easyetcon_register_intrinsic_editors", **overrides):
    class Editor:
        def weights_to_edit(self, model, requests):
            return []

        def edit(self, model, requests):
            pass

    arguments = dict(config=_Config, subfamily="toy", summary="A toy.")
    arguments.update(overrides)
    editor_class = arguments.pop("editor_class", Editor)

    class Plugin:
        pass

    def hook(register):
        register(name, editor_class, **arguments)

    setattr(Plugin, family_hook, staticmethod(hookimpl(hook)))
    return Plugin()


def test_duplicate_editor_name_names_both_distributions(monkeypatch):
    monkeypatch.setenv("EASYETCON_BLOCK_PLUGINS", "*")
    host = PluginHost()
    host.register(_plugin_registering("twin"), name="first", distribution="dist-one")
    host.register(_plugin_registering("twin"), name="second", distribution="dist-two")
    with pytest.raises(PluginError, match="dist-one.*dist-two|dist-two.*dist-one"):
        host.registry


def test_misspelled_hook_fails_at_load_time(monkeypatch):
    monkeypatch.setenv("EASYETCON_BLOCK_PLUGINS", "*")

    class Typo:
        @hookimpl
        def easyetcon_register_intrinsic_editor(self, register):  # missing the final "s"
            pass

    with pytest.raises(PluginError, match="does not exist"):
        PluginHost(plugins=[Typo()])


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"config": dict}, "pydantic BaseModel"),
        ({"config": type("Loose", (BaseModel,), {})}, "extra='forbid'"),
        ({"summary": ""}, "summary"),
        ({"summary": "two\nlines"}, "summary"),
        ({"subfamily": " "}, "subfamily"),
        ({"editor_class": object}, "weights_to_edit"),
    ],
)
def test_invalid_registrations_are_refused_with_the_reason(monkeypatch, overrides, message):
    monkeypatch.setenv("EASYETCON_BLOCK_PLUGINS", "*")
    host = PluginHost(plugins=[_plugin_registering("bad", **overrides)])
    with pytest.raises(PluginError, match=message):
        host.registry


def test_memory_editor_must_satisfy_the_memory_protocol(monkeypatch):
    monkeypatch.setenv("EASYETCON_BLOCK_PLUGINS", "*")
    plugin = _plugin_registering("weights-not-memory", family_hook="easyetcon_register_memory_editors")
    with pytest.raises(PluginError, match="attach"):
        PluginHost(plugins=[plugin]).registry


def test_tracing_prints_hook_calls(monkeypatch, capsys):
    monkeypatch.setenv("EASYETCON_BLOCK_PLUGINS", "*")
    monkeypatch.setenv("EASYETCON_TRACE_HOOKS", "1")
    host = PluginHost(plugins=[toy_plugins])
    host.registry
    assert "easyetcon_register_intrinsic_editors" in capsys.readouterr().err


def test_a_plugin_that_fails_to_import_is_named(monkeypatch):
    broken = metadata.EntryPoint(name="broken", value="no_such_module_xyz", group="easyetcon")
    monkeypatch.setattr(metadata, "entry_points", lambda group: [broken])
    with pytest.raises(PluginError, match="'broken'.*failed to import.*EASYETCON_BLOCK_PLUGINS=broken"):
        PluginHost()


LAZY = "tests.lazy_editor_module"


def test_an_editor_registered_by_reference_is_imported_on_first_use(monkeypatch):
    monkeypatch.setenv("EASYETCON_BLOCK_PLUGINS", "*")
    monkeypatch.delitem(sys.modules, LAZY, raising=False)
    plugin = _plugin_registering("lazy", editor_class=f"{LAZY}:LazyEditor", config=f"{LAZY}:LazyConfig")
    registry = PluginHost(plugins=[plugin]).registry
    assert [e.name for e in registry.editors("intrinsic")] == ["lazy"]
    assert LAZY not in sys.modules  # listed without importing it
    editor = registry.editor("lazy").create({"layer": 2})
    assert LAZY in sys.modules and type(editor).__name__ == "LazyEditor" and editor.config.layer == 2


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"editor_class": f"{LAZY}:NoSuchEditor"}, f"has no attribute 'NoSuchEditor'.*{LAZY}:NoSuchEditor"),
        ({"editor_class": "tests.no_such_module:Editor"}, "cannot import 'tests.no_such_module:Editor'"),
        ({"editor_class": f"{LAZY}:NotAnEditor"}, "lacks weights_to_edit, edit"),
        ({"config": f"{LAZY}:LooseConfig"}, "extra='forbid'"),
    ],
)
def test_a_bad_reference_fails_on_first_use_naming_the_editor(monkeypatch, overrides, message):
    monkeypatch.setenv("EASYETCON_BLOCK_PLUGINS", "*")
    arguments = {"editor_class": f"{LAZY}:LazyEditor", "config": f"{LAZY}:LazyConfig", **overrides}
    registry = PluginHost(plugins=[_plugin_registering("lazy", **arguments)]).registry
    with pytest.raises(PluginError, match=f"editor 'lazy'.*{message}"):
        registry.editor("lazy").create()


def test_a_malformed_reference_is_refused_at_registration(monkeypatch):
    monkeypatch.setenv("EASYETCON_BLOCK_PLUGINS", "*")
    host = PluginHost(plugins=[_plugin_registering("lazy", editor_class="lazy_editor_module.LazyEditor")])
    with pytest.raises(PluginError, match="not a reference of the form 'package.module:attribute'"):
        host.registry


def test_a_metric_registered_by_reference_is_checked_when_imported(monkeypatch):
    monkeypatch.setenv("EASYETCON_BLOCK_PLUGINS", "*")

    class Plugin:
        @staticmethod
        @hookimpl
        def easyetcon_register_metrics(register):
            register("not-a-metric", f"{LAZY}:NotAMetric", summary="Missing protocol, version and score.")

    registry = PluginHost(plugins=[Plugin()]).registry
    assert [p.name for p in registry.parts("metric")] == ["not-a-metric"]
    with pytest.raises(PluginError, match="metric 'not-a-metric'.*needs a 'protocol' attribute"):
        registry.metric("not-a-metric")


def test_a_hook_asking_for_an_argument_the_spec_lacks_is_a_plugin_error(monkeypatch):
    monkeypatch.setenv("EASYETCON_BLOCK_PLUGINS", "*")

    class Plugin:
        @staticmethod
        @hookimpl
        def easyetcon_register_metrics(register, registry):  # the spec passes only `register`
            pass

    with pytest.raises(PluginError, match=r"(?s)plugin .wrong-arguments.*does not fit easyetcon.hookspecs.*registry"):
        PluginHost().register(Plugin(), name="wrong-arguments")
