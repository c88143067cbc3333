"""Which source the key statistics come from is visible, and an edited world model keeps its world."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from click.testing import CliRunner

from easyetcon.cli import cli
from easyetcon.errors import ConfigError
from easyetcon.model import load_model
from easyetcon.plugins import get_host
from easyetcon.testing import tiny_model
from easyetcon.testing.tiny import TINY_CORPUS
from easyetcon.statistics import LayerStatistics, StatisticsConfig, choose_source
from tests.intrinsic.helpers import world_model

LOGGER = "easyetcon.intrinsic.statistics"
SMALL = {"samples": 6, "max_length": 16, "progress": False}


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EASYETCON_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "stats"


@pytest.fixture
def shipped():
    model = world_model("default")
    if model is None:
        pytest.skip("the fact world's shipped model is not available")
    return model


def statistics_lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == LOGGER]


def test_auto_on_a_plain_model_says_it_is_no_world_model_and_counts_texts_and_tokens(own_cache, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    model = tiny_model("llama", registry=get_host().registry)
    computed = LayerStatistics(StatisticsConfig(**SMALL)).get(model, [1])[1]
    assert computed.texts == SMALL["samples"]
    (line,) = statistics_lines(caplog)
    assert line.startswith("key statistics of layers [1]: source model-samples (auto: no registered text source has texts for the model (world: the pretraining corpus of a fact-world model")
    assert f"computed, from {SMALL['samples']} texts ({computed.tokens:,} tokens)" in line

    caplog.clear()
    again = LayerStatistics(StatisticsConfig(**SMALL))
    assert again.get(model, [1])[1].texts == SMALL["samples"]
    again.get(model, [1])  # from memory: nothing was read or computed, so nothing is said
    (line,) = statistics_lines(caplog)
    assert "source model-samples (auto: " in line
    assert f"read from the cache, from {SMALL['samples']} texts ({computed.tokens:,} tokens)" in line


def test_a_chosen_source_says_so_and_one_line_covers_cached_and_computed_layers(own_cache, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    model = tiny_model("llama", registry=get_host().registry)
    config = StatisticsConfig(source="model-samples", **SMALL)
    LayerStatistics(config).get(model, [0])
    caplog.clear()
    LayerStatistics(config).get(model, [0, 2])
    (line,) = statistics_lines(caplog)
    assert "source model-samples (set by statistics.source)" in line
    assert "layers [0] read from the cache, layers [2] computed" in line


def test_a_cache_of_one_source_is_never_read_for_another(own_cache):
    model = tiny_model("llama", registry=get_host().registry)
    config = StatisticsConfig(source="model-samples", **SMALL)
    LayerStatistics(config).get(model, [1])
    texts = LayerStatistics(config)
    # the same corpus identity as the model samples: only the source's kind tells them apart
    texts.use_texts(TINY_CORPUS, corpus_id=choose_source(model, config).corpus)
    texts.get(model, [1])
    assert texts.last_sources == {1: "computed"}
    stored = sorted(json.dumps(torch.load(path, weights_only=True)["key"]) for path in own_cache.glob("*.pt"))
    assert [json.loads(key)["source"] for key in stored] == sorted(["model-samples", "texts"])


def test_use_texts_is_named_as_the_source(own_cache, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    model = tiny_model("llama", registry=get_host().registry)
    statistics = LayerStatistics(StatisticsConfig(**SMALL))
    statistics.use_texts(TINY_CORPUS)
    statistics.get(model, [1])
    (line,) = statistics_lines(caplog)
    assert "source texts (given to LayerStatistics.use_texts, without a corpus_id: not cached)" in line


def test_auto_on_the_shipped_world_model_names_its_world_file(shipped, own_cache, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    chosen = choose_source(shipped, StatisticsConfig())
    assert chosen.kind == "world" and chosen.corpus.startswith("world:")
    assert chosen.reason == f"auto: the model is a fact-world model: world.json beside its weights in {shipped.source!r}"
    LayerStatistics(StatisticsConfig(**SMALL)).get(shipped, [3])
    (line,) = statistics_lines(caplog)
    assert f"layers [3]: source world (auto: the model is a fact-world model: world.json beside its weights in {shipped.source!r});" in line


def nudge_a_weight(torch_model) -> None:
    with torch.no_grad():
        torch_model.model.layers[0].mlp.down_proj.weight[0, 0] += 1e-3


def test_a_plain_save_pretrained_of_an_edited_world_model_keeps_its_world(shipped, tmp_path, own_cache):
    from easyetcon_world import load_pretrained

    torch_model, tokenizer, _ = load_pretrained()
    nudge_a_weight(torch_model)
    torch_model.save_pretrained(tmp_path / "edited")
    tokenizer.save_pretrained(tmp_path / "edited")
    assert not (tmp_path / "edited" / "world.json").exists()

    edited = load_model(tmp_path / "edited")
    chosen = choose_source(edited, StatisticsConfig())
    assert chosen.kind == "world"
    assert chosen.reason.startswith("auto: the model is a fact-world model: its config.json names fact world ")
    assert "(preset 'default', seed 0), regenerated" in chosen.reason
    # the regenerated world is the one beside the shipped weights: same texts, same cache identity
    original = choose_source(shipped, StatisticsConfig())
    assert chosen.corpus == original.corpus
    assert list(chosen.open_texts())[:50] == list(original.open_texts())[:50]


def test_a_world_folder_whose_config_names_no_world_gets_the_entry_before_saving(shipped, tmp_path, own_cache):
    legacy = tmp_path / "legacy"
    shutil.copytree(shipped.source, legacy)
    config = json.loads((legacy / "config.json").read_text())
    config.pop("easyetcon_world", None)  # as a world model built before the entry existed
    (legacy / "config.json").write_text(json.dumps(config))
    model = load_model(legacy)
    assert choose_source(model, StatisticsConfig()).kind == "world"
    nudge_a_weight(model.torch_model)
    model.save_pretrained(tmp_path / "saved")
    assert choose_source(load_model(tmp_path / "saved"), StatisticsConfig()).kind == "world"


def test_a_built_world_model_names_its_world_in_config_json(shipped, tmp_path):
    from easyetcon_world import load_pretrained, shipped_train_config
    from easyetcon_world.pretraining import save_model_directory

    torch_model, tokenizer, world = load_pretrained()
    del torch_model.config.easyetcon_world  # as a freshly trained model has no entry yet
    save_model_directory(tmp_path / "built", torch_model, tokenizer, world, shipped_train_config())
    entry = json.loads((tmp_path / "built" / "config.json").read_text())["easyetcon_world"]
    assert entry["fingerprint"] == world.fingerprint() and entry["generator"]["preset"] == "default"
    (tmp_path / "built" / "world.json").unlink()
    assert choose_source(load_model(tmp_path / "built"), StatisticsConfig()).kind == "world"


def test_a_world_file_that_is_not_the_configs_world_is_refused(shipped, tmp_path):
    from easyetcon_world import build_world

    folder = tmp_path / "mixed"
    shipped.save_pretrained(folder)
    build_world("tiny").save(folder / "world.json")
    with pytest.raises(ConfigError, match="is not the world the model's config.json names"):
        choose_source(load_model(folder), StatisticsConfig())


def test_a_dataset_world_without_its_world_file_says_what_to_copy():
    model = tiny_model("llama", registry=get_host().registry)
    model.torch_model.config.easyetcon_world = {"fingerprint": "ab" * 32, "generator": None}
    with pytest.raises(ConfigError, match="built from a dataset file.*copy the world.json"):
        choose_source(model, StatisticsConfig())
    model.torch_model.config.easyetcon_world = {"fingerprint": "not a digest"}
    with pytest.raises(ConfigError, match="'easyetcon_world' entry is not a fact-world identity"):
        choose_source(model, StatisticsConfig())
    # a source set by hand does not look at the world at all
    assert choose_source(model, StatisticsConfig(source="model-samples")).kind == "model-samples"


@pytest.mark.slow
def test_easyetcon_edit_out_keeps_the_world_and_shows_the_statistics_line(shipped, tmp_path, own_cache):
    chain = tmp_path / "chain.yaml"
    chain.write_text(
        "chain:\n  - editor: rome\n    layer: 0\n    value: {steps: 3}\n    key: {prefixes: 1}\n"
        "    statistics: {samples: 20, max_length: 32, progress: false}\n"
    )

    def edit(model: str, out: str):
        result = CliRunner().invoke(
            cli, ["edit", "--model", model, "--chain", str(chain), "--data", "fact-world",
                  "--data-option", "n=1", "--out", str(tmp_path / out)],
        )
        assert result.exit_code == 0, result.output
        return result.output

    first = edit("default", "first")
    assert "key statistics of layers [0]: source world (auto: the model is a fact-world model: world.json beside" in first
    saved = load_model(tmp_path / "first" / "model")
    assert choose_source(saved, StatisticsConfig()).kind == "world"
    again = edit(str(tmp_path / "first" / "model"), "again")
    assert "source world (auto: the model is a fact-world model: its config.json names fact world" in again
