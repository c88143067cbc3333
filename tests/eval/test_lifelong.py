"""Lifelong runs: schedules, timings, and resuming from the journal after an interruption."""

import json

import pytest

from easyetcon import EditChain, EditRequest, Probe
from easyetcon.errors import ConfigError, JournalError
from easyetcon.hookspecs import hookimpl
from easyetcon.testing import tiny_model
from easyetcon_eval import parse_schedule, run_lifelong

SUBJECTS = ["The Eiffel Tower", "The Colosseum", "Danielle Darrieux", "Toko Yasuda", "Apple", "Berlin", "Vienna"]
FAST = {"protocols": ("teacher-forced",), "max_new_tokens": 4, "progress": False}


def requests(n=7):
    return [
        EditRequest(
            prompt=f"{s} is located in the city of", subject=s, target_new=t, case_id=f"r{i}",
            locality=[Probe(prompt="Oslo is located in the city of", answer="Oslo")],
        )
        for i, (s, t) in enumerate(zip(SUBJECTS[:n], ["Rome", "Paris", "Lima", "Quito", "Cairo", "Athens", "Tokyo"]))
    ]


@pytest.fixture
def fresh(eval_host):
    return lambda: tiny_model("llama", registry=eval_host.registry)


def test_schedules_parse_and_bad_ones_are_rejected():
    assert parse_schedule("each") == ("each", None) and parse_schedule("every:50") == ("every", 50)
    for bad in ("every:0", "every:x", "sometimes"):
        with pytest.raises(ConfigError, match="each', 'end' or 'every:N"):
            parse_schedule(bad)


def test_every_n_measures_retention_on_everything_edited_so_far(fresh):
    result = run_lifelong(fresh(), [("toy-shift", {"amount": 0.01})], requests(), schedule="every:3", batch_size=2, **FAST)
    assert [p["edits"] for p in result.curve] == [4, 6, 7]  # first group boundary past 3, 6, then the end
    assert [p["teacher-forced@1"]["n"] for p in result.curve] == [4, 6, 7]
    assert len(result.seconds_per_edit) == 4 and all(s > 0 for s in result.seconds_per_edit)
    assert result.final == {k: v for k, v in result.curve[-1].items() if k != "edits"}
    assert result.final["teacher-forced@1"]["locality"] is not None  # baseline computed once up front
    # the per-request scores behind the final point come with it (no second evaluation needed)
    assert result.final_evaluation.summary() == result.final and len(result.final_evaluation.per_request) == 7


def test_each_scores_every_application_right_after_it(fresh, tmp_path):
    result = run_lifelong(fresh(), ["toy-notes"], requests(4), schedule="each", out_dir=tmp_path, **FAST)
    assert [p["edits"] for p in result.immediate] == [1, 2, 3, 4]
    assert [p["teacher-forced@1"]["n"] for p in result.immediate] == [1, 1, 1, 1]
    assert [p["edits"] for p in result.curve] == [4]
    report = (tmp_path / "results.md").read_text()
    assert "## Right after each edit" in report and "| teacher-forced@1 |" in report


def test_batch_mode_is_one_application(fresh):
    result = run_lifelong(fresh(), ["toy-shift"], requests(5), schedule="end", mode="batch", baseline=False, **FAST)
    assert len(result.seconds_per_edit) == 1 and result.curve[-1]["edits"] == 5
    assert result.final["teacher-forced@1"]["skipped"]["locality"] == 5  # no baseline: skipped, counted


class Interrupt:
    """Raises KeyboardInterrupt before the given (group, step) runs — a user pressing Ctrl-C."""

    def __init__(self, group_first_id: str, step_index: int) -> None:
        self.at = (group_first_id, step_index)

    @hookimpl
    def easyetcon_before_step(self, step):
        if (step.requests[0].request_id, step.index) == self.at:
            raise KeyboardInterrupt


CHAIN = [{"editor": "toy-notes"}, {"editor": "toy-shift", "amount": 0.01}]


@pytest.mark.parametrize(("group_first_id", "step_index"), [("r4", 0), ("r4", 1)])
def test_an_interrupted_run_resumes_to_the_same_model(eval_host, fresh, tmp_path, group_first_id, step_index):
    straight = fresh()
    expected = run_lifelong(straight, EditChain(CHAIN), requests(), schedule="every:2", batch_size=2, out_dir=tmp_path / "straight", **FAST)

    interrupter = Interrupt(group_first_id, step_index)
    eval_host.register(interrupter, name="interrupter")
    with pytest.raises(KeyboardInterrupt):
        run_lifelong(fresh(), EditChain(CHAIN), requests(), schedule="every:2", batch_size=2, out_dir=tmp_path / "run", **FAST)
    eval_host.pm.unregister(interrupter)
    state = json.loads((tmp_path / "run" / "lifelong.json").read_text())
    assert state["edits"] == 4  # two groups of two completed

    resumed_model = fresh()
    resumed = run_lifelong(resumed_model, EditChain(CHAIN), requests(), schedule="every:2", batch_size=2, out_dir=tmp_path / "run", **FAST)
    assert resumed.resumed_at == 4 and resumed.edits == 7
    assert resumed_model.state_hash() == straight.state_hash()
    assert len(resumed_model.memory_store("toy-notes")) == 7
    assert resumed_model.rewrite_prompts(["Berlin is"]) == straight.rewrite_prompts(["Berlin is"])
    assert [p["edits"] for p in resumed.curve] == [p["edits"] for p in expected.curve] == [2, 4, 6, 7]
    assert resumed.final == expected.final
    assert resumed.final_evaluation.summary() == resumed.final
    assert len(resumed.seconds_per_edit) == 4
    assert (tmp_path / "run" / "results.md").exists() and (tmp_path / "run" / "retention.png").exists()


def test_resuming_needs_the_same_model_chain_and_requests(fresh, tmp_path):
    run_lifelong(fresh(), ["toy-shift"], requests(3), schedule="end", out_dir=tmp_path, report=False, **FAST)
    with pytest.raises(JournalError, match="another chain"):
        run_lifelong(fresh(), ["toy-notes"], requests(3), schedule="end", out_dir=tmp_path, **FAST)
    with pytest.raises(JournalError, match="other requests or batching"):
        run_lifelong(fresh(), ["toy-shift"], requests(3), schedule="end", batch_size=2, out_dir=tmp_path, **FAST)
    with pytest.raises(JournalError, match="not the model this journal started from"):
        run_lifelong(tiny_model("llama", seed=1), ["toy-shift"], requests(3), schedule="end", out_dir=tmp_path, **FAST)
    with pytest.raises(ConfigError, match="resume=True"):
        run_lifelong(fresh(), ["toy-shift"], requests(3), schedule="end", out_dir=tmp_path, resume=False, **FAST)


def test_retention_sample_caps_the_scored_requests(fresh):
    result = run_lifelong(fresh(), ["toy-shift"], requests(), schedule="every:2", retention_sample=3, baseline=False, **FAST)
    assert [p["teacher-forced@1"]["n"] for p in result.curve] == [2, 3, 3, 3]


def test_a_re_edited_fact_is_scored_by_its_newest_request_only():
    from easyetcon_eval.lifelong import _retention_subset

    first = requests(3)
    again = first[1].model_copy(update={"target_new": "Oslo", "case_id": "r1-again"})
    stream = [*first, again]
    assert [r.case_id for r in _retention_subset(stream, 4, None)] == ["r0", "r2", "r1-again"]
    assert [r.case_id for r in _retention_subset(stream, 3, None)] == ["r0", "r1", "r2"]
    assert len(_retention_subset(stream, 4, 2)) == 2


def test_a_damaged_state_file_is_one_clear_error_naming_it(fresh, tmp_path):
    run_lifelong(fresh(), ["toy-shift"], requests(3), schedule="end", out_dir=tmp_path, report=False, **FAST)
    (tmp_path / "lifelong.json").write_text('{"version": 1, "curve": [')
    with pytest.raises(JournalError, match="lifelong.json.*damaged.*delete it"):
        run_lifelong(fresh(), ["toy-shift"], requests(3), schedule="end", out_dir=tmp_path, report=False, **FAST)
