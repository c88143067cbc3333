"""Protocols, metrics and baselines on tiny models."""

import math

import pytest

from easyetcon import EditChain, EditRequest, Probe
from easyetcon.errors import ConfigError, UnknownNameError
from easyetcon.hookspecs import hookimpl
from easyetcon.testing import tiny_requests
from easyetcon_eval import METRIC_NAMES, Baseline, compute_baseline, evaluate_edits
from easyetcon_eval import evaluate as evaluate_module
from easyetcon_eval.scoring import ngram_entropy, teacher_forced_predictions

FAST = {"max_new_tokens": 6}


def test_summary_is_keyed_by_protocol_and_version(llama):
    summary = evaluate_edits(llama, tiny_requests(), protocols=("teacher-forced", "teacher-forced-em", "generation"), **FAST).summary()
    assert list(summary) == ["teacher-forced@1", "teacher-forced-em@1", "generation@1"]
    for row in summary.values():
        assert set(METRIC_NAMES) <= set(row) and row["n"] == 3
        assert all(row[m] is None or 0.0 <= row[m] <= 1.0 for m in METRIC_NAMES)


def test_missing_fields_are_skipped_and_counted_not_scored_zero(llama):
    # tiny-0 has a rephrase and a locality probe; tiny-1 and tiny-2 have neither; nobody has portability
    result = evaluate_edits(llama, tiny_requests(), protocols="teacher-forced", **FAST)
    row = result.summary()["teacher-forced@1"]
    assert row["skipped"] == {"reliability": 0, "generalization": 2, "locality": 3, "portability": 3, "locality_vs_truth": 2}
    assert row["portability"] is None and row["locality"] is None
    assert result.per_request[1]["teacher-forced@1"]["generalization"] is None
    assert any("no baseline" in note for note in result.notes)


def test_unedited_model_agrees_with_its_own_baseline(llama):
    requests = tiny_requests()
    baseline = compute_baseline(llama, requests, **FAST)
    summary = evaluate_edits(llama, requests, baseline=baseline, protocols=("teacher-forced", "teacher-forced-em", "generation"), **FAST).summary()
    assert all(summary[key]["locality"] == 1.0 for key in summary)
    assert summary["teacher-forced@1"]["skipped"]["locality"] == 2  # only tiny-0 has a locality probe


def test_an_edit_moves_reliability_and_teacher_forced_em_matches_core_predicts(llama):
    requests = tiny_requests()
    baseline = compute_baseline(llama, requests, protocols=("teacher-forced",), **FAST)
    EditChain([("toy-shift", {"amount": 0.5})]).apply(llama, requests)
    after = evaluate_edits(llama, requests, protocols=("teacher-forced", "teacher-forced-em"), baseline=baseline, **FAST)
    em = [r["teacher-forced-em@1"]["reliability"] for r in after.per_request]
    assert em == [float(llama.predicts(r.prompt, r.target_new)) for r in requests]
    # toy-shift adds 1.5 to every MLP output weight of layer 0: the locality probe's argmax moves
    assert after.summary()["teacher-forced@1"]["locality"] < 1.0


def test_token_accuracy_counts_matching_positions(llama):
    [(expected, predicted)] = teacher_forced_predictions(llama, ["The Eiffel Tower is in"], ["the city of Paris"])
    accuracy = evaluate_edits(
        llama, [EditRequest(prompt="The Eiffel Tower is in", subject="The Eiffel Tower", target_new="the city of Paris")],
        protocols="teacher-forced", **FAST,
    ).summary()["teacher-forced@1"]["reliability"]
    assert len(expected) > 1
    assert accuracy == pytest.approx(sum(e == p for e, p in zip(expected, predicted)) / len(expected))


def test_aliases_count_for_generation(scripted):
    model = scripted({"Capital of the USSR?": " Moskva.", "Its old name?": " Leningrad."})
    request = EditRequest(
        prompt="Capital of the USSR?", subject="USSR", target_new="Moscow", target_aliases=("Moskva",),
        portability=[Probe(prompt="Its old name?", answer="Petrograd", aliases=("Leningrad",))],
    )
    row = evaluate_edits(model, [request], protocols="generation").summary()["generation@1"]
    assert row["reliability"] == 1.0 and row["portability"] == 1.0


class AlwaysRight:
    protocol, version = "generation", "3"

    def judge(self, prompts, generations, answers):
        return [1.0] * len(prompts)

    def score(self, model, prompts, answers):
        return [1.0] * len(prompts)


class JudgePlugin:
    @hookimpl
    def easyetcon_register_metrics(self, register):
        register("always-right", AlwaysRight(), summary="Test judge")


def test_the_generation_judge_is_looked_up_by_name(eval_host, llama):
    eval_host.register(JudgePlugin(), name="judge-plugin")
    summary = evaluate_edits(llama, tiny_requests(), protocols="generation", judge="always-right", **FAST).summary()
    assert list(summary) == ["generation@1[always-right@3]"]
    assert summary["generation@1[always-right@3]"]["reliability"] == 1.0
    with pytest.raises(UnknownNameError, match="known metrics: .*exact-match"):
        evaluate_edits(llama, tiny_requests(), protocols="generation", judge="no-such-judge", **FAST)
    with pytest.raises(ConfigError, match="protocol 'teacher-forced'"):
        evaluate_edits(llama, tiny_requests(), protocols="generation", judge="token-accuracy", **FAST)


def test_metrics_are_registered_with_protocol_and_version(eval_host):
    registry = eval_host.registry
    protocols = {p.name: (p.obj.protocol, p.obj.version) for p in registry.parts("metric")}
    assert protocols["exact-match"] == ("generation", "1")
    assert protocols["token-accuracy"] == ("teacher-forced", "1")
    assert protocols["teacher-forced-exact-match"] == ("teacher-forced-em", "1")
    assert {"fluency", "perplexity"} <= set(protocols)


def test_unknown_protocol_is_rejected(llama):
    with pytest.raises(ConfigError, match="choose from: teacher-forced"):
        evaluate_edits(llama, tiny_requests(), protocols=("greedy",))


def test_baseline_is_cached_on_disk_and_keyed_by_the_weights(llama, tmp_path, monkeypatch):
    requests = tiny_requests()
    first = compute_baseline(llama, requests, cache_dir=tmp_path, **FAST)
    assert len(list(tmp_path.glob("baseline-*.json"))) == 1
    monkeypatch.setattr(evaluate_module, "_evaluate", lambda *a, **k: pytest.fail("recomputed a cached baseline"))
    again = compute_baseline(llama, requests, cache_dir=tmp_path, **FAST)
    assert again.key == first.key and again.answers == first.answers
    assert Baseline.load(next(tmp_path.glob("baseline-*.json"))).forced == first.forced
    monkeypatch.undo()
    EditChain([("toy-shift", {"amount": 0.5})]).apply(llama, requests)
    assert compute_baseline(llama, requests, cache_dir=tmp_path, **FAST).key != first.key


def test_baseline_with_other_generation_settings_is_refused(llama):
    baseline = compute_baseline(llama, tiny_requests(), protocols="generation", max_new_tokens=4)
    with pytest.raises(evaluate_module.EvaluationError, match="max_new_tokens=4"):
        evaluate_edits(llama, tiny_requests(), protocols="generation", baseline=baseline, max_new_tokens=6)


def test_fluency_and_perplexity_extras(llama):
    result = evaluate_edits(llama, tiny_requests(), protocols="teacher-forced", fluency=True, heldout_texts=["The Colosseum is in Rome."], **FAST)
    summary = result.summary()
    assert summary["free-generation@1"]["n"] == 3 and summary["free-generation@1"]["fluency"] > 0
    assert summary["perplexity@1"]["perplexity"] > 1 and math.isfinite(summary["perplexity@1"]["perplexity"])
    assert ngram_entropy("the cat the cat the cat the cat") < ngram_entropy("a quick brown fox jumps over the lazy dog")
