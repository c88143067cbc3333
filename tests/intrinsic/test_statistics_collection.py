"""Collecting key statistics fast: batches of similar length, one pass for every layer needed."""

import random
import warnings

import pytest
import torch
from easyetcon import statistics as covariance
from easyetcon.statistics import (
    LayerStatistics,
    StatisticsConfig,
    collect_second_moments,
    padding_fraction,
    plan_batches,
)
from easyetcon.activations import capture_input

from easyetcon.plugins import get_host
from easyetcon.testing import tiny_model
from easyetcon.testing.tiny import TINY_CORPUS

#: Texts from 1 to about 60 tokens, in no order of length.
MIXED_TEXTS = [
    " ".join(TINY_CORPUS[i % len(TINY_CORPUS)] for _ in range(1 + (7 * i) % 5))[: 8 + (37 * i) % 230] for i in range(40)
]


def make(arch="llama"):
    return tiny_model(arch, registry=get_host().registry)


def corpus_order_batches(lengths, batch_size):
    """Today's batching before sorting: consecutive texts, padded to the longest."""
    return [list(range(start, min(start + batch_size, len(lengths)))) for start in range(0, len(lengths), batch_size)]


def test_planned_batches_hold_every_text_once_and_need_less_padding():
    lengths = [random.Random(i).randint(8, 128) for i in range(200)]
    batches = plan_batches(lengths, 16)
    assert sorted(i for batch in batches for i in batch) == list(range(200))
    assert all(1 <= len(batch) <= 16 for batch in batches)
    sorted_padding = padding_fraction(lengths, batches)
    unsorted_padding = padding_fraction(lengths, corpus_order_batches(lengths, 16))
    assert unsorted_padding > 0.4 and sorted_padding < 0.1


def test_planned_batches_leave_out_texts_of_no_tokens():
    batches = plan_batches([3, 0, 5, 5, 0, 1], 2)
    assert batches == [[2, 3], [0, 5]]  # longest first, equal lengths in order
    assert padding_fraction([3, 0, 5, 5, 0, 1], batches) == pytest.approx(1 - 14 / 16)


@pytest.mark.parametrize(("arch", "max_length"), [("llama", 48), ("gpt2", 48), ("llama", 8)])
def test_sorted_batches_give_the_moment_of_corpus_order_batches(arch, max_length, monkeypatch):
    """At 8 tokens most sorted batches have no padding (keys read without a gather), unlike those in order."""
    model = make(arch)
    monkeypatch.setattr(covariance, "SORT_WINDOW_BATCHES", 2)  # several windows of 8 texts
    arguments = dict(samples=len(MIXED_TEXTS), max_length=max_length, batch_size=4, progress=False)
    by_length = collect_second_moments(model, [0, 2], MIXED_TEXTS, **arguments)
    monkeypatch.setattr(covariance, "plan_batches", corpus_order_batches)
    in_order = collect_second_moments(model, [0, 2], MIXED_TEXTS, **arguments)
    for layer in (0, 2):
        assert by_length[layer].tokens == in_order[layer].tokens
        torch.testing.assert_close(by_length[layer].mom2, in_order[layer].mom2, rtol=1e-5, atol=1e-8)


def test_a_left_padding_tokenizer_still_gives_each_text_its_own_positions():
    model = make("gpt2")  # absolute positions: a left-padded text would see other position embeddings
    model.tokenizer.padding_side = "left"
    texts = MIXED_TEXTS[:10]
    moment = collect_second_moments(model, [1], texts, samples=10, batch_size=4, progress=False)[1]
    module = model.adapter.module(model.torch_model, "mlp_out", 1)
    keys = []
    for text in texts:  # one text at a time: no padding at all
        with torch.no_grad(), capture_input(module) as captured:
            model.torch_model(input_ids=model.tokenizer(text, return_tensors="pt")["input_ids"])
        keys.append(captured[0][0].double())
    keys = torch.cat(keys)
    assert moment.tokens == len(keys)
    torch.testing.assert_close(moment.mom2.double(), keys.T @ keys / len(keys), rtol=1e-4, atol=1e-9)


def test_the_texts_used_are_the_first_non_empty_ones(monkeypatch):
    model = make()
    monkeypatch.setattr(covariance, "SORT_WINDOW_BATCHES", 1)
    texts = ["", MIXED_TEXTS[0], "   ", None, *MIXED_TEXTS[1:12]]
    tokens = collect_second_moments(model, [1], iter(texts), samples=9, batch_size=2, progress=False)[1].tokens
    expected = sum(len(model.tokenizer(text, truncation=True, max_length=128)["input_ids"]) for text in MIXED_TEXTS[:9])
    assert tokens == expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_buffered_key_products_sum_to_the_gram_of_all_keys(dtype):
    chunks = [torch.randn(n, 12, generator=torch.Generator().manual_seed(n)).to(dtype) for n in (3, 3, 7, 1, 4, 5)]
    moment_sum = covariance.KeyMomentSum(rows=5)  # buffered, flushed early, and wider than the buffer
    for chunk in chunks:
        moment_sum.add(chunk)
    moment_sum.flush()
    keys = torch.cat(chunks).double()
    assert moment_sum.total.dtype == torch.float64
    torch.testing.assert_close(moment_sum.total, keys.T @ keys, rtol=1e-5, atol=1e-5)


@pytest.fixture
def counted_passes(monkeypatch):
    """The layer lists of each collection pass, and the number of forward passes of the model."""
    passes: list[list[int]] = []
    original = covariance.collect_second_moments

    def counting(model, layers, *args, **kwargs):
        passes.append(sorted(layers))
        return original(model, layers, *args, **kwargs)

    monkeypatch.setattr(covariance, "collect_second_moments", counting)
    return passes


def statistics_over(texts, corpus_id=None, **options):
    statistics = LayerStatistics(StatisticsConfig(samples=len(texts), batch_size=4, progress=False, **options))
    statistics.use_texts(texts, corpus_id)
    return statistics


def test_a_reserved_layer_is_collected_in_the_pass_of_the_first_request(counted_passes):
    model = make()
    forwards = []
    model.torch_model.register_forward_pre_hook(lambda *_: forwards.append(1))
    statistics = statistics_over(MIXED_TEXTS[:10])
    statistics.reserve(model, [-1])  # layer 2 of 3
    first = statistics.get(model, [0])
    assert list(first) == [0] and counted_passes == [[0, 2]]
    assert len(forwards) == 3  # 10 texts, 4 a batch: one pass
    later = statistics.get(model, [2])[2]
    assert counted_passes == [[0, 2]] and len(forwards) == 3
    assert statistics.last_sources[2] == "memory"
    alone = collect_second_moments(model, [2], MIXED_TEXTS[:10], samples=10, batch_size=4, progress=False)[2]
    torch.testing.assert_close(later.mom2, alone.mom2, rtol=1e-5, atol=1e-8)


def test_layers_missing_from_the_cache_are_collected_together(counted_passes, tmp_path, monkeypatch):
    monkeypatch.setenv("EASYETCON_CACHE", str(tmp_path))  # a cache of this test alone
    model = make()
    statistics_over(MIXED_TEXTS[:10], corpus_id="mixed").get(model, [1])
    assert counted_passes == [[1]]
    statistics = statistics_over(MIXED_TEXTS[:10], corpus_id="mixed")
    statistics.reserve(model, [0, 1, 2])
    statistics.get(model, [1])
    assert counted_passes == [[1], [0, 2]]
    assert statistics.last_sources == {0: "computed", 1: "cache", 2: "computed"}
    statistics.get(model, [0, 2])
    assert counted_passes == [[1], [0, 2]]


def test_without_reservation_each_request_is_its_own_pass(counted_passes):
    model = make()
    statistics = statistics_over(MIXED_TEXTS[:10])
    statistics.get(model, [0])
    statistics.get(model, [0, 2])
    assert counted_passes == [[0], [2]]


def test_the_progress_bar_shows_tokens_per_second_unless_disabled(capsys):
    model = make()
    collect_second_moments(model, [0], MIXED_TEXTS, samples=12, batch_size=4, progress=True)
    shown = capsys.readouterr().err
    assert "key statistics" in shown and "tokens/s" in shown and "12/12" in shown
    collect_second_moments(model, [0], MIXED_TEXTS, samples=12, batch_size=4, progress=False)
    assert capsys.readouterr().err == ""


def test_a_source_with_fewer_texts_than_asked_says_so():
    from easyetcon.statistics import FewerTextsWarning

    model = tiny_model("llama", registry=get_host().registry)
    texts = MIXED_TEXTS[:6]
    with pytest.warns(FewerTextsWarning, match=r"50 texts were asked for \(statistics.samples\) but the source had only 6"):
        collect_second_moments(model, [1], texts, samples=50, batch_size=4, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FewerTextsWarning)
        collect_second_moments(model, [1], texts, samples=6, batch_size=4, progress=False)  # exactly enough: silent
