"""`easyetcon convert-hparams`: EasyEdit hparams files (written here in EasyEdit's format) as chain specs."""

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from easyetcon.cli import cli
from easyetcon.errors import ConfigError, UnknownNameError
from easyetcon.hookspecs import hookimpl
from easyetcon.hparams import Conversion, convert_hparams, read_hparams
from easyetcon.plugins import PluginHost, get_host
from easyetcon.spec import load_chain_spec

FILES = Path(__file__).parent / "hparams_files"


def converted(name):
    return convert_hparams(read_hparams(FILES / name), get_host().registry)


@pytest.mark.parametrize("name", ["rome.yaml", "alphaedit.yaml", "ft.yaml", "ultraedit.yaml", "grace.yaml", "wise.yaml", "lora.yaml"])
def test_every_key_is_mapped_or_said_why_not_and_the_spec_loads(name, tmp_path):
    result = converted(name)
    keys = set(read_hparams(FILES / name))
    assert set(result.mapped) | set(result.unmapped) == keys
    assert not set(result.mapped) & set(result.unmapped)
    spec = tmp_path / "chain.yaml"
    spec.write_text(yaml.safe_dump({**result.spec, "model": "default"}))
    _, chain = load_chain_spec(spec)
    assert [step.info.name for step in chain.steps] == [result.editor]


def test_rome_options_land_in_their_sections():
    result = converted("rome.yaml")
    step = result.spec["chain"][0]
    assert result.spec["model"] == "./hugging_cache/some-model"
    assert step["editor"] == "rome" and step["layer"] == 5 and step["use_covariance"] is True
    assert step["key"] == {"fact_token": "subject_last", "prefixes": 20, "prefix_length": 10}
    assert step["value"] == {"steps": 20, "learning_rate": 0.5, "clamp_norm_factor": 4.0, "kl_factor": 0.0625, "weight_decay": 0.5}
    assert step["statistics"] == {"samples": 100000}
    assert "retune" in result.mapped["v_weight_decay"]  # the penalty's form differs: said, not hidden
    assert "never downloads" in result.unmapped["mom2_dataset"]
    assert "architecture adapter" in result.unmapped["ln_f_module"]


def test_alphaedit_takes_the_papers_null_space_rule_and_says_what_it_leaves():
    step = converted("alphaedit.yaml").spec["chain"][0]
    assert (step["nullspace_rule"], step["nullspace_threshold"], step["key"]["fact_token"]) == ("absolute", 0.02, "last")
    unmapped = converted("alphaedit.yaml").unmapped
    assert "scale-free" in unmapped["L2"] and "λC" in unmapped["mom2_update_weight"]


def test_ft_with_the_target_new_objective_is_ft_m_with_an_l_inf_bound():
    result = converted("ft.yaml")
    step = result.spec["chain"][0]
    assert step == {"editor": "ft-m", "layers": [21], "modules": ["mlp_out"], "steps": 25, "learning_rate": 0.0005,
                    "weight_decay": 0.0, "max_change": 0.005}
    assert "truncated" in result.unmapped["max_length"]


def test_ultraedit_reads_layers_and_module_from_its_module_names():
    step = converted("ultraedit.yaml").spec["chain"][0]
    assert (step["layers"], step["module"], step["positions"], step["chunk_size"]) == ([11, 12], "mlp_in", "all", 10)
    mixed = {**read_hparams(FILES / "ultraedit.yaml"), "inner_params": ["model.layers.3.mlp.gate_proj", "model.layers.4.mlp.up_proj"]}
    result = convert_hparams(mixed, get_host().registry)
    assert "layers" not in result.spec["chain"][0] and "gate projections" in result.unmapped["inner_params"]


def test_wise_takes_the_papers_margins_and_shards():
    result = converted("wise.yaml")
    assert result.spec["chain"][0] == {
        "editor": "wise", "layer": 27, "mask_ratio": 0.2, "learning_rate": 1.0, "steps": 70, "norm_bound": 1.0,
        "threshold_ratio": 0.88, "edits_per_shard": 500, "merge_density": 0.53, "irrelevant_margin": 5.0,
        "edit_margin": 20.0, "gap_margin": 10.0, "shards_per_merge": 2,
    }
    assert "WISE-Retrieve" in result.unmapped["retrieve"] and "equal weights" in result.unmapped["weights"]


def test_grace_and_lora_find_their_layer_and_modules_in_module_names():
    grace = converted("grace.yaml").spec["chain"][0]
    assert grace == {"editor": "grace", "layer": 27, "module": "mlp_out", "learning_rate": 1.0, "steps": 50, "initial_radius": 1.0}
    lora = converted("lora.yaml")
    assert lora.spec["chain"][0]["modules"] == ["mlp_in", "mlp_out"] and lora.spec["chain"][0]["learning_rate"] == 0.005
    assert "plain LoRA" in lora.unmapped["lora_type"]


def test_unknown_methods_and_files_without_alg_name_are_named():
    with pytest.raises(UnknownNameError, match=r"no converter for EasyEdit's alg_name 'SOMETHING'; known: .*MEMIT"):
        convert_hparams({"alg_name": "SOMETHING"}, get_host().registry)
    with pytest.raises(ConfigError, match="no alg_name"):
        convert_hparams({"layers": [1]}, get_host().registry)


def test_an_option_a_converter_got_wrong_is_the_editors_validation_error():
    with pytest.raises(ConfigError, match="invalid options for editor 'memit'"):
        convert_hparams({"alg_name": "MEMIT", "v_num_grad_steps": 0}, get_host().registry)


def test_a_third_party_plugin_registers_a_converter(monkeypatch):
    class Plugin:
        @hookimpl
        def easyetcon_register_hparams_converters(self, register):
            register("MyFT", lambda hparams: Conversion("ft-m", {"steps": int(hparams["n"])}, {"n": "steps"}), summary="mine")

    host = PluginHost(plugins=[Plugin()])
    result = convert_hparams({"alg_name": "myft", "n": 3, "device": 0}, host.registry)
    assert result.spec == {"chain": [{"editor": "ft-m", "steps": 3}]}
    assert set(result.unmapped) == {"alg_name", "device"}


def test_the_command_prints_the_spec_and_refuses_to_overwrite(tmp_path):
    runner = CliRunner()
    printed = runner.invoke(cli, ["convert-hparams", str(FILES / "rome.yaml")])
    assert printed.exit_code == 0, printed.output
    assert yaml.safe_load(printed.stdout)["chain"][0]["editor"] == "rome"
    out = tmp_path / "chain.yaml"
    out.write_text("mine\n")
    refused = runner.invoke(cli, ["convert-hparams", str(FILES / "rome.yaml"), "--out", str(out)])
    assert refused.exit_code == 2 and "exists" in refused.output and out.read_text() == "mine\n"
    missing = runner.invoke(cli, ["convert-hparams", str(tmp_path / "none.yaml")])
    assert missing.exit_code == 2 and "no hparams file" in missing.output
