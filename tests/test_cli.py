"""The command line, end to end on a tiny saved model."""

import json

import pytest
from click.testing import CliRunner

from easyetcon.cli import cli
from easyetcon.model import load_model
from easyetcon.plugins import PluginHost, set_host
from easyetcon.requests import save_requests
from easyetcon.testing import tiny_requests, tiny_torch_model
from tests.conftest import require_example_plugin


@pytest.fixture
def workspace(tmp_path, toy_host):
    model, tokenizer = tiny_torch_model("llama")
    model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    save_requests(tiny_requests(), tmp_path / "requests.json")
    (tmp_path / "chain.yaml").write_text(
        f"model: {tmp_path / 'base'}\nchain:\n  - editor: toy-notes\n  - editor: toy-shift\n    amount: 0.5\n"
    )
    return tmp_path


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result


def test_plugins_table_filter_and_json(toy_host):
    table = run("plugins")
    assert table.exit_code == 0 and "toy-shift" in table.output and "toy-notes" in table.output
    filtered = run("plugins", "--family", "intrinsic")
    assert "toy-shift" in filtered.output and "toy-notes" not in filtered.output
    payload = json.loads(run("plugins", "--json").output)
    names = {(e["name"], e["family"], e["subfamily"]) for e in payload["editors"]}
    assert names == {("toy-shift", "intrinsic", "toy"), ("toy-notes", "external-memory", "retrieval")}
    assert "amount" in next(e for e in payload["editors"] if e["name"] == "toy-shift")["options"]
    assert "llama" in {a["name"] for a in payload["adapters"]}
    bad = run("plugins", "--family", "nonsense")
    assert bad.exit_code == 2 and "valid families" in bad.output


def test_plugins_reads_at_80_columns(monkeypatch):
    """The real plugins, at a terminal 80 columns wide: no line longer, no name broken."""
    from easyetcon import cli as cli_module
    from rich.console import Console

    monkeypatch.setattr(cli_module, "console", Console(width=80, force_terminal=False))
    set_host(PluginHost())
    try:
        result = run("plugins")
    finally:
        set_host(None)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    words = {word for line in lines for word in line.split()}
    for name in ("retrieval-memory", "lora-merge", "alphaedit", "ft-m", "tpsft", "grpo", "locate-then-edit", "external-memory"):
        assert name in words, f"{name!r} is wrapped or missing at 80 columns"


def test_edit_journal_undo_round_trip(workspace):
    base = load_model(workspace / "base").state_hash()
    result = run("edit", "--chain", workspace / "chain.yaml", "--data", workspace / "requests.json", "--out", workspace / "run")
    assert result.exit_code == 0, result.output
    assert (workspace / "run" / "model" / "model.safetensors").exists()
    assert load_model(workspace / "run" / "model").state_hash() != base

    shown = json.loads(run("journal", workspace / "run", "--json").output)
    assert [s["editor"] for s in shown["steps"]] == ["toy-notes", "toy-shift"] * 3
    assert shown["metadata"]["model"] == str(workspace / "base")

    last = run("undo", workspace / "run", "--last", "2")
    assert last.exit_code == 0 and "undid 2 step(s)" in last.output
    rest = run("undo", workspace / "run")
    assert rest.exit_code == 0 and "undid 4 step(s)" in rest.output
    assert load_model(workspace / "run" / "model").state_hash() == base
    assert "nothing to undo" in run("undo", workspace / "run").output


def test_edit_refuses_bad_input_before_touching_anything(workspace):
    (workspace / "bad.yaml").write_text("chain:\n  - editor: toy-shift\n    amount: -2\n  - editor: rome\n")
    result = run("edit", "--chain", workspace / "bad.yaml", "--data", workspace / "requests.json", "--out", workspace / "o1")
    assert result.exit_code == 2
    assert "step 0 (toy-shift): field 'amount'" in result.output and "step 1: unknown editor 'rome'" in result.output
    assert not (workspace / "o1").exists()

    (workspace / "bad.json").write_text('[{"prompt": "p", "subject": "s"}]')
    result = run("edit", "--chain", workspace / "chain.yaml", "--data", workspace / "bad.json", "--out", workspace / "o2")
    assert result.exit_code == 2 and "record 0: field 'target_new'" in result.output
    assert not (workspace / "o2").exists()

    (workspace / "taken").mkdir()
    (workspace / "taken" / "keep.txt").write_text("mine")
    result = run("edit", "--chain", workspace / "chain.yaml", "--data", workspace / "requests.json", "--out", workspace / "taken")
    assert result.exit_code != 0 and "not empty" in result.output
    assert (workspace / "taken" / "keep.txt").read_text() == "mine"


def test_a_failing_chain_writes_no_output(workspace):
    (workspace / "failing.yaml").write_text(
        f"model: {workspace / 'base'}\nchain:\n  - editor: toy-shift\n    fail_on: tiny-2\n"
    )
    result = run("edit", "--chain", workspace / "failing.yaml", "--data", workspace / "requests.json", "--out", workspace / "o3")
    assert result.exit_code == 2 and "step 0" in result.output and "tiny-2" in result.output
    assert not (workspace / "o3").exists()


def test_example_plugin_is_listed_configured_from_yaml_and_run(tmp_path, monkeypatch):
    monkeypatch.delenv("EASYETCON_BLOCK_PLUGINS", raising=False)
    host = PluginHost()
    require_example_plugin(host)
    set_host(host)
    try:
        listing = json.loads(run("plugins", "--family", "intrinsic", "--json").output)
        entry = next(e for e in listing["editors"] if e["name"] == "example-ft-last")
        assert entry["distribution"] == "easyetcon-example-editor"

        model, tokenizer = tiny_torch_model("gpt2")
        model.save_pretrained(tmp_path / "base")
        tokenizer.save_pretrained(tmp_path / "base")
        save_requests(tiny_requests()[:2], tmp_path / "requests.json")
        (tmp_path / "chain.yaml").write_text("chain:\n  - editor: example-ft-last\n    steps: 40\n")
        result = run("edit", "--model", tmp_path / "base", "--chain", tmp_path / "chain.yaml",
                     "--data", tmp_path / "requests.json", "--out", tmp_path / "run")
        assert result.exit_code == 0, result.output
        edited = load_model(tmp_path / "run" / "model")
        assert all(edited.predicts(r.prompt, r.target_new) for r in tiny_requests()[:2])
    finally:
        set_host(None)


ZSRE_RECORD = {  # KnowEdit ZsRE's shape (ZsRE-test-all.json), as `easyetcon eval` reads it
    "subject": "Epaspidoceras", "prompt": "Which family does Epaspidoceras belong to?", "target_new": "Noctuidae",
    "ground_truth": ["Aspidoceratidae"], "rephrase_prompt": "What family are Epaspidoceras?",
    "cond": "Aspidoceratidae >> Noctuidae || Which family does Epaspidoceras belong to?",
    "locality": {"Relation_Specificity": [{"prompt": "The taxon rank of Epaspidoceras is", "ground_truth": ["genus"]}]},
    "portability": {},
}


@pytest.fixture
def data_and_toy_host(monkeypatch):
    import easyetcon_data.plugin

    import tests.toy_plugins

    monkeypatch.setenv("EASYETCON_BLOCK_PLUGINS", "*")
    host = PluginHost(plugins=[tests.toy_plugins, easyetcon_data.plugin])
    set_host(host)
    yield host
    set_host(None)


def test_edit_reads_every_registered_format_with_limit(workspace, data_and_toy_host):
    records = [{**ZSRE_RECORD, "subject": f"Taxon{i}", "prompt": f"Which family does Taxon{i} belong to?"} for i in range(3)]
    (workspace / "zsre.json").write_text(json.dumps(records))
    result = run("edit", "--chain", workspace / "chain.yaml", "--data", workspace / "zsre.json", "--limit", 2,
                 "--out", workspace / "run")
    assert result.exit_code == 0, result.output
    assert "to 2 request(s)" in result.output
    named = run("edit", "--chain", workspace / "chain.yaml", "--data", workspace / "zsre.json", "--format", "knowedit-zsre",
                "--out", workspace / "run-named")
    assert named.exit_code == 0 and "to 3 request(s)" in named.output
    wrong = run("edit", "--chain", workspace / "chain.yaml", "--data", workspace / "zsre.json", "--format", "qa",
                "--out", workspace / "run-wrong")
    assert wrong.exit_code != 0 and "qa" in wrong.output and not (workspace / "run-wrong").exists()
