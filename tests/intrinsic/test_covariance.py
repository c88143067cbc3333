"""Key statistics: streamed exactly, from every kind of source, cached on disk."""

import json
import warnings

import pytest
import torch
from easyetcon.statistics import (
    LayerStatistics,
    StatisticsConfig,
    cache_path,
    collect_second_moments,
    dataset_texts,
    resolve_texts,
    symmetric_gram,
)
from easyetcon.activations import capture_input
from easyetcon.locate.solve import add_to_weight

from easyetcon.errors import ConfigError
from easyetcon.plugins import get_host
from easyetcon.testing import tiny_model
from easyetcon.testing.tiny import TINY_CORPUS


def make(arch="llama"):
    return tiny_model(arch, registry=get_host().registry)


def explicit_second_moment(model, layer, texts):
    """E[k kᵀ] the slow way: one text at a time, every token."""
    module = model.adapter.module(model.torch_model, "mlp_out", layer)
    keys = []
    for text in texts:
        ids = model.tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad(), capture_input(module) as captured:
            model.torch_model(input_ids=ids)
        keys.append(captured[0][0].double())
    keys = torch.cat(keys)
    return keys.T @ keys / len(keys), len(keys)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_streamed_moments_equal_the_explicit_ones_without_padding(arch):
    model = make(arch)
    moments = collect_second_moments(model, [0, 2], TINY_CORPUS, samples=len(TINY_CORPUS), batch_size=4, progress=False)
    for layer in (0, 2):
        expected, tokens = explicit_second_moment(model, layer, TINY_CORPUS)
        assert moments[layer].tokens == tokens
        assert moments[layer].mom2.dtype == torch.float32
        assert torch.allclose(moments[layer].mom2.double(), expected, rtol=1e-4, atol=1e-9)


def test_sample_count_limits_the_texts():
    model = make()
    few = collect_second_moments(model, [1], TINY_CORPUS, samples=2, progress=False)[1]
    _, tokens = explicit_second_moment(model, 1, TINY_CORPUS[:2])
    assert few.tokens == tokens


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """A cache folder of this test alone (these tests look at, and damage, the files in it)."""
    monkeypatch.setenv("EASYETCON_CACHE", str(tmp_path))
    return tmp_path / "stats"


def test_cache_miss_hit_and_corruption(own_cache):
    model = make()
    config = StatisticsConfig(source="model-samples", samples=8, max_length=16, progress=False)
    first = LayerStatistics(config)
    computed = first.get(model, [1])[1]
    assert first.last_sources == {1: "computed"}
    assert first.get(model, [1])[1] is computed and first.last_sources[1] == "memory"

    second = LayerStatistics(config)  # a new editor: the disk cache answers
    cached = second.get(model, [1])[1]
    assert second.last_sources == {1: "cache"}
    assert torch.equal(cached.mom2, computed.mom2) and cached.tokens == computed.tokens

    files = list(own_cache.glob("*.pt"))
    assert files
    for path in files:
        path.write_bytes(b"not a tensor file")
    third = LayerStatistics(config)
    with pytest.warns(UserWarning, match="unusable"):
        recomputed = third.get(model, [1])[1]
    assert third.last_sources == {1: "computed"}
    assert torch.allclose(recomputed.mom2, computed.mom2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rewritten file is whole again
        assert LayerStatistics(config).get(model, [1])[1].tokens == computed.tokens


def test_cache_key_changes_with_weights_samples_and_layer():
    model = make()
    config = StatisticsConfig(source="model-samples", samples=8, max_length=16, progress=False)
    LayerStatistics(config).get(model, [0, 1])
    more = LayerStatistics(config.model_copy(update={"samples": 9}))
    more.get(model, [1])
    assert more.last_sources == {1: "computed"}
    out_features, in_features = model.adapter.out_in_weight(model.adapter.module(model.torch_model, "mlp_out", 0)).shape
    left, right = torch.zeros(out_features, 1, dtype=torch.float64), torch.zeros(1, in_features, dtype=torch.float64)
    left[0, 0], right[0, 0] = 1e-3, 1.0  # one weight moves by 1e-3
    add_to_weight(model, 0, left, right)
    edited = LayerStatistics(config)
    edited.get(model, [1])
    assert edited.last_sources == {1: "computed"}


def test_cache_file_names_its_key(own_cache):
    model = make()
    statistics = LayerStatistics(StatisticsConfig(source="model-samples", samples=4, max_length=8, progress=False))
    statistics.get(model, [2])
    stored = [torch.load(path, weights_only=True) for path in own_cache.glob("*.pt")]
    assert len(stored) == 1
    key = stored[0]["key"]
    assert key["module"] == model.adapter.module_name("mlp_out", 2) and key["samples"] == 4
    assert key["weights"] == model.state_hash() and key["corpus"].startswith("model-samples")
    assert cache_path(key).is_file() and stored[0]["mom2"].shape == (64, 64)


def test_any_iterable_of_strings(own_cache):
    model = make()
    statistics = LayerStatistics(StatisticsConfig(samples=100, progress=False))
    statistics.use_texts(iter(TINY_CORPUS))  # no corpus id: nothing cached

    moment = statistics.get(model, [0])[0]
    expected, tokens = explicit_second_moment(model, 0, TINY_CORPUS)
    assert moment.tokens == tokens
    assert not list(own_cache.glob("*.pt"))


def test_local_dataset_files_and_folders(tmp_path):
    import datasets

    model = make()
    lines = tmp_path / "texts.jsonl"
    lines.write_text("\n".join(json.dumps({"body": t, "id": i}) for i, t in enumerate(TINY_CORPUS)))
    texts, identity = resolve_texts(model, StatisticsConfig(source=f"dataset:{lines}", text_column="body"))
    assert list(texts) == TINY_CORPUS and "texts.jsonl" in identity

    folder = tmp_path / "saved"
    datasets.Dataset.from_dict({"text": TINY_CORPUS}).save_to_disk(str(folder))
    texts, _ = dataset_texts(str(folder), split="train", column="text")
    assert list(texts) == TINY_CORPUS

    with pytest.raises(ConfigError, match="no column 'text'.*text_column"):
        dataset_texts(str(lines), split="train", column="text")


def test_bad_sources_are_config_errors():
    with pytest.raises(ConfigError, match="statistics.source"):
        get_host().registry.editor("rome").create({"statistics": {"source": "wikipedia"}})
    model = make()
    with pytest.raises(ConfigError, match="fact-world model"):
        resolve_texts(model, StatisticsConfig(source="world"))
    with pytest.raises(ConfigError, match="cannot read"):
        resolve_texts(model, StatisticsConfig(source="dataset:/no/such/dataset/here"))


@pytest.mark.parametrize("blocks", [None, 1, 3, 8])
def test_symmetric_gram_equals_the_full_product(blocks):
    rows = torch.randn(37, 1030, generator=torch.Generator().manual_seed(0))
    gram = symmetric_gram(rows, blocks=blocks)
    torch.testing.assert_close(gram, rows.T @ rows, rtol=1e-5, atol=1e-4)
    assert torch.equal(gram, gram.T)


def test_symmetric_gram_of_narrow_rows_falls_back_to_one_product():
    rows = torch.randn(5, 6)
    torch.testing.assert_close(symmetric_gram(rows, blocks=8), rows.T @ rows)


@pytest.mark.parametrize("width", [40, 1100])  # one product, and the banded sum of wide keys
def test_the_moment_sum_adds_the_same_numbers_as_symmetric_gram_without_a_full_product(width):
    from easyetcon.statistics import KeyMomentSum

    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(n, width, generator=generator) for n in (30, 7, 50)]
    total = KeyMomentSum(rows=40)
    for keys in batches:
        total.add(keys)
    expected = symmetric_gram(torch.cat(batches[:2])).double() + symmetric_gram(batches[2]).double()
    assert torch.equal(total.finish(), expected)
