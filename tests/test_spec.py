"""Chain spec files: YAML is the format, pydantic the truth, every error reported at once."""

import pytest

from easyetcon.errors import ConfigError
from easyetcon.spec import load_chain_spec, parse_chain_spec


def test_yaml_spec_builds_the_chain(toy_host, tmp_path):
    path = tmp_path / "chain.yaml"
    path.write_text(
        "model: ./somewhere\nmode: batch\nbatch_size: 4\nchain:\n"
        "  - editor: toy-notes\n    prefix: 'Fact:'\n"
        "  - editor: toy-shift\n    amount: 0.1\n    label: shift\n"
    )
    spec, chain = load_chain_spec(path)
    assert spec.model == str(tmp_path / "somewhere") and spec.mode == "batch" and spec.batch_size == 4
    assert [s.name for s in chain.steps] == ["toy-notes", "shift"]
    assert chain.steps[0].config.prefix == "Fact:"
    assert chain.steps[1].config.amount == 0.1


def test_json_spec(toy_host, tmp_path):
    path = tmp_path / "chain.json"
    path.write_text('{"chain": [{"editor": "toy-shift"}]}')
    assert load_chain_spec(path)[1].steps[0].name == "toy-shift"


def test_all_errors_are_reported_together_with_step_and_field(toy_host):
    spec = {
        "chain": [
            {"editor": "toy-shift", "amount": -1},
            {"editor": "rome"},
            {"prefix": "no editor key"},
            {"editor": "toy-notes", "prefix": 3, "colour": "red"},
        ]
    }
    with pytest.raises(ConfigError) as caught:
        parse_chain_spec(spec)
    problems = caught.value.problems
    assert any(p.startswith("step 0 (toy-shift): field 'amount'") for p in problems)
    assert any(p.startswith("step 1: unknown editor 'rome'") for p in problems)
    assert any(p.startswith("step 2: missing 'editor'") for p in problems)
    assert any(p.startswith("step 3 (toy-notes): field 'prefix'") for p in problems)
    assert any(p.startswith("step 3 (toy-notes): field 'colour'") for p in problems)
    assert len(problems) == 5


def test_top_level_typos_and_shapes(toy_host, tmp_path):
    with pytest.raises(ConfigError, match="field 'chian'"):
        parse_chain_spec({"chian": [{"editor": "toy-shift"}], "chain": [{"editor": "toy-shift"}]})
    with pytest.raises(ConfigError, match="field 'batch_size'"):
        parse_chain_spec({"batch_size": 0, "chain": [{"editor": "toy-shift"}]})
    with pytest.raises(ConfigError, match="field 'chain'"):
        parse_chain_spec({"chain": []})
    path = tmp_path / "list.yaml"
    path.write_text("- editor: toy-shift\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_chain_spec(path)
    path.write_text("chain: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid yaml"):
        load_chain_spec(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_chain_spec(tmp_path / "missing.yaml")
