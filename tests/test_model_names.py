"""Model names (``easyetcon_register_models``), local folders and hub ids, resolved at once."""

import json

import pytest
from click.testing import CliRunner

import easyetcon_world.plugin
from easyetcon.cli import cli
from easyetcon.errors import EasyEtconError
from easyetcon.hookspecs import hookimpl
from easyetcon.model import resolve_model_source
from easyetcon.plugins import PluginError, PluginHost, set_host
from easyetcon.spec import load_chain_spec
from easyetcon.requests import save_requests
from easyetcon.testing import tiny_requests, tiny_torch_model
from easyetcon_world.shipped import SHIPPED_MODELS, shipped_model_path


@pytest.fixture
def world_host(monkeypatch):
    monkeypatch.setenv("EASYETCON_BLOCK_PLUGINS", "*")
    host = PluginHost(plugins=[easyetcon_world.plugin])
    set_host(host)
    yield host
    set_host(None)


def test_every_shipped_model_is_a_model_name(world_host):
    names = {part.name for part in world_host.registry.parts("model")}
    assert names == set(SHIPPED_MODELS)
    for name in names:
        assert resolve_model_source(name) == str(shipped_model_path(name))


def test_a_local_folder_of_that_name_wins_over_the_model_name(world_host, tmp_path, monkeypatch):
    (tmp_path / "wide").mkdir()
    monkeypatch.chdir(tmp_path)
    assert resolve_model_source("wide") == "wide"


@pytest.mark.parametrize("missing", ["widee", "./nope", "/no/such/folder", "a/b/c", "~/no-such-model"])
def test_a_missing_model_fails_at_once_with_the_absolute_path_tried(world_host, tmp_path, monkeypatch, missing):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(EasyEtconError, match="not found: no folder '/"):
        resolve_model_source(missing)


def test_a_bare_unknown_word_lists_the_model_names(world_host):
    with pytest.raises(EasyEtconError, match=r"neither a model name \(default, wide\) nor a hub id \(owner/name\)"):
        resolve_model_source("wider")


def test_hub_ids_are_left_to_the_hub(world_host, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_model_source("meta-llama/Llama-3.2-1B") == "meta-llama/Llama-3.2-1B"


def test_plugins_lists_the_model_names(world_host):
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert {m["name"] for m in json.loads(result.output)["models"]} == set(SHIPPED_MODELS)
    assert "model names: default, wide" in CliRunner().invoke(cli, ["plugins"]).output


def test_edit_names_the_missing_model_without_a_traceback(monkeypatch, tmp_path):
    import tests.toy_plugins

    monkeypatch.setenv("EASYETCON_BLOCK_PLUGINS", "*")
    set_host(PluginHost(plugins=[tests.toy_plugins, easyetcon_world.plugin]))
    try:
        (tmp_path / "chain.yaml").write_text("chain:\n  - editor: toy-shift\n")
        save_requests(tiny_requests()[:1], tmp_path / "requests.json")
        result = CliRunner().invoke(cli, ["edit", "--model", "widee", "--chain", str(tmp_path / "chain.yaml"),
                                          "--data", str(tmp_path / "requests.json"), "--out", str(tmp_path / "run")])
    finally:
        set_host(None)
    assert result.exit_code == 2 and "error: model 'widee' not found" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()


def test_a_relative_model_in_a_chain_file_is_relative_to_the_file(toy_host, tmp_path, monkeypatch):
    model, tokenizer = tiny_torch_model("llama")
    folder = tmp_path / "specs"
    model.save_pretrained(folder / "base")
    tokenizer.save_pretrained(folder / "base")
    chain = "chain:\n  - editor: toy-shift\n"
    (folder / "dotted.yaml").write_text("model: ./base\n" + chain)
    (folder / "bare.yaml").write_text("model: base\n" + chain)
    (folder / "hub.yaml").write_text("model: owner/name\n" + chain)
    monkeypatch.chdir(tmp_path)  # not the files' folder
    assert load_chain_spec(folder / "dotted.yaml")[0].model == str(folder / "base")
    assert load_chain_spec(folder / "bare.yaml")[0].model == str(folder / "base")
    assert load_chain_spec(folder / "hub.yaml")[0].model == "owner/name"


class BadNames:
    @staticmethod
    @hookimpl
    def easyetcon_register_models(register):
        register("owner/model", lambda: "/x", summary="a name that looks like a hub id")


def test_a_model_name_that_looks_like_a_hub_id_is_refused(monkeypatch):
    monkeypatch.setenv("EASYETCON_BLOCK_PLUGINS", "*")
    with pytest.raises(PluginError, match="one word without '/'"):
        PluginHost(plugins=[BadNames]).registry
