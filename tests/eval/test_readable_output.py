"""What a user reads from an evaluation: the progress bar's score, Ctrl-C and resume messages,
the results table, the retention plot, comparison labels and the report files' permissions."""

import json
import os
import shlex
import stat

import pytest
from click.testing import CliRunner

import easyetcon_eval.lifelong as lifelong_module
from easyetcon import EditRequest, Probe
from easyetcon.cli import INTERRUPTED_EXIT_CODE, cli
from easyetcon.hookspecs import hookimpl
from easyetcon.plugins import get_host
from easyetcon.testing import tiny_model, tiny_torch_model
from easyetcon_eval import compare_runs, run_lifelong, write_report
from easyetcon_eval.reports import METRIC_STYLES, UNEDITED, retention_figure

SUBJECTS = ["The Eiffel Tower", "The Colosseum", "Danielle Darrieux", "Toko Yasuda", "Apple"]
FAST = {"max_new_tokens": 4, "progress": False}


def requests(n=5):
    return [
        EditRequest(
            prompt=f"{s} is located in the city of", subject=s, target_new=t, case_id=f"r{i}",
            rephrase_prompts=[f"Where is {s}? It is in"],
            locality=[Probe(prompt="Oslo is located in the city of", answer="Oslo")],
        )
        for i, (s, t) in enumerate(zip(SUBJECTS[:n], ["Rome", "Paris", "Lima", "Quito", "Cairo"]))
    ]


@pytest.fixture
def fresh(eval_host):
    return lambda: tiny_model("llama", registry=eval_host.registry)


class RecordingBar:
    def __init__(self) -> None:
        self.postfixes: list[str] = []

    def update(self, n: int) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        self.postfixes.append(text)

    def close(self) -> None:
        pass


def test_the_edit_bar_shows_the_latest_generation_score(fresh, monkeypatch):
    bar = RecordingBar()
    monkeypatch.setattr(lifelong_module, "_edit_bar", lambda *args: bar)
    result = run_lifelong(fresh(), ["toy-notes"], requests(), schedule="every:2",
                          protocols=("teacher-forced", "generation"), max_new_tokens=4, progress=True)
    final = result.final["generation@1"]
    assert bar.postfixes[-1] == f"generation@1 (after 5 edits): reliability {final['reliability']:.2f}, locality {final['locality']:.2f}"
    assert any(p.startswith("generation@1 (after 2 edits): reliability ") for p in bar.postfixes)  # the point after two edits


def test_with_schedule_each_the_bar_shows_the_running_mean(fresh, monkeypatch):
    bar = RecordingBar()
    monkeypatch.setattr(lifelong_module, "_edit_bar", lambda *args: bar)
    result = run_lifelong(fresh(), ["toy-notes"], requests(3), schedule="each", protocols=("generation",),
                          max_new_tokens=4, progress=True)
    mean = sum(p["generation@1"]["reliability"] for p in result.immediate) / 3
    assert bar.postfixes[-1].startswith(f"generation@1 (just edited, mean): reliability {mean:.2f}")


def test_results_md_is_one_table_by_number_of_edits_from_the_unedited_model(fresh, tmp_path):
    run_lifelong(fresh(), ["toy-shift"], requests(), schedule="every:2", protocols=("teacher-forced", "generation"),
                 out_dir=tmp_path, **FAST)
    report = (tmp_path / "results.md").read_text()
    header = "| edits | protocol | reliability | generalization | locality | portability | locality_vs_truth | n | skipped |"
    assert report.count("| edits |") == 1 and header in report
    rows = [line for line in report.splitlines() if line.startswith("| ") and line != header]
    assert [row.split(" | ")[0].strip("| ") for row in rows] == [UNEDITED] * 2 + ["2"] * 2 + ["4"] * 2 + ["5"] * 2
    assert [row.split(" | ")[1] for row in rows[:2]] == ["teacher-forced@1", "generation@1"]
    unedited_locality = rows[0].split(" | ")[4]
    assert unedited_locality == "1.000"  # the unedited model agrees with itself
    assert "`toy-shift` edited `model.layers.0.mlp.down_proj.weight`" in report
    assert json.loads((tmp_path / "results.json").read_text())["edited_weights"] == {"toy-shift": ["model.layers.0.mlp.down_proj.weight"]}


def test_retention_plot_starts_at_the_unedited_model_with_distinguishable_lines(fresh, tmp_path):
    result = run_lifelong(fresh(), ["toy-shift"], requests(), schedule="every:2", protocols=("teacher-forced",),
                          out_dir=tmp_path, **FAST)
    figure = retention_figure(result.curve, baseline=result.baseline_summary)
    (axis,) = figure.axes
    lines = axis.get_lines()
    assert {line.get_label() for line in lines} == {"reliability", "generalization", "locality", "locality_vs_truth"}  # no portability probes
    assert all(list(line.get_xdata())[0] == 0 for line in lines)
    styles = [(line.get_marker(), line.get_linestyle()) for line in lines]
    assert len(set(styles)) == len(styles)  # no two lines share marker and line style
    (legend,) = figure.legends
    assert [text.get_text() for text in legend.get_texts()] == [line.get_label() for line in lines]
    assert set(METRIC_STYLES) == {"reliability", "generalization", "locality", "portability", "locality_vs_truth"}


def test_report_files_have_the_permissions_of_the_umask(fresh, tmp_path):
    previous = os.umask(0o022)
    try:
        result = run_lifelong(fresh(), ["toy-shift"], requests(3), schedule="every:2", protocols=("teacher-forced",),
                              out_dir=tmp_path / "run", **FAST)
        paths = write_report(tmp_path / "run", result)
        png, md = compare_runs([tmp_path / "run"], tmp_path / "cmp")
    finally:
        os.umask(previous)
    for path in [*paths.values(), png, md, tmp_path / "run" / "lifelong.json"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]


# ---- the command line -----------------------------------------------------------------------


@pytest.fixture
def workspace(tmp_path, eval_host):
    model, tokenizer = tiny_torch_model("gpt2")
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    (tmp_path / "shift.yaml").write_text("chain:\n  - editor: toy-shift\n    amount: 0.01\n")
    (tmp_path / "requests.json").write_text(json.dumps([r.model_dump(mode="json") for r in requests(4)]))
    return tmp_path


def invoke(*args):
    get_host().register_commands(cli)  # what `easyetcon` does at start-up
    return CliRunner().invoke(cli, [str(a) for a in args])


class CtrlC:
    """Raises KeyboardInterrupt before the request ``at`` is edited."""

    def __init__(self, at: str) -> None:
        self.at = at

    @hookimpl
    def easyetcon_before_step(self, step):
        if step.requests[0].request_id == self.at:
            raise KeyboardInterrupt


def test_ctrl_c_during_eval_gives_the_resume_command_and_the_resumed_run_says_where(workspace, eval_host):
    w = workspace
    args = ["eval", "--model", w / "model", "--chain", w / "shift.yaml", "--data", w / "requests.json",
            "--protocol", "teacher-forced", "--schedule", "every:2", "--max-new-tokens", "4", "--out", w / "run"]
    eval_host.register(CtrlC("r3"), name="ctrl-c")
    stopped = invoke(*args, "--no-resume")
    eval_host.pm.unregister(name="ctrl-c")
    assert stopped.exit_code == INTERRUPTED_EXIT_CODE, stopped.output
    assert "Traceback" not in stopped.output and "Aborted" not in stopped.output
    message = next(line for line in stopped.output.splitlines() if line.startswith("interrupted:"))
    command = shlex.join(["easyetcon", *map(str, args)])  # without --no-resume, which would refuse
    assert f"3 of 4 edit(s) done and kept in {str(w / 'run')!r}; to resume from edit 4: {command}" in message

    resumed = invoke(*shlex.split(command)[1:])
    assert resumed.exit_code == 0, resumed.output
    assert f"resuming the run in {str(w / 'run')!r} at edit 4 of 4 (request 'r3')" in resumed.output
    assert json.loads((w / "run" / "results.json").read_text())["resumed_at"] == 3


def test_compare_runs_tells_two_runs_of_one_chain_apart(workspace):
    w = workspace
    for name in ("first", "second"):
        done = invoke("eval", "--model", w / "model", "--chain", w / "shift.yaml", "--data", w / "requests.json",
                      "--protocol", "teacher-forced", "--max-new-tokens", "4", "--out", w / name)
        assert done.exit_code == 0, done.output
    shown = invoke("compare-runs", w / "first", w / "second", "--out", w / "cmp")
    assert shown.exit_code == 0, shown.output
    assert "| toy-shift (first) | 4 |" in shown.output and "| toy-shift (second) | 4 |" in shown.output
    same = invoke("compare-runs", w / "first", w / "second", "--label", "A", "--label", "A", "--out", w / "cmp")
    assert same.exit_code == 2 and "repeated: A" in same.output
