"""Reports, method comparison and the `easyetcon eval` / `compare-runs` commands."""

import json

import pytest
from click.testing import CliRunner

from easyetcon.cli import cli
from easyetcon.plugins import get_host
from easyetcon.testing import tiny_requests, tiny_torch_model
from easyetcon_eval import compare_runs, evaluate_edits, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_report_of_an_evaluation_lists_protocols_and_skipped_counts(llama, tmp_path):
    result = evaluate_edits(llama, tiny_requests(), protocols=("teacher-forced", "generation"), max_new_tokens=4)
    paths = write_report(tmp_path, result, metadata={"model": "tiny"})
    table = paths["md"].read_text()
    assert "| teacher-forced@1 |" in table and "| generation@1 |" in table
    assert "portability: 3" in table  # skipped requests are counted, not scored zero
    assert json.loads(paths["json"].read_text())["summary"]["generation@1"]["n"] == 3
    assert "png" not in paths  # a single evaluation has no curve


@pytest.fixture
def cli_workspace(tmp_path, eval_host):
    model, tokenizer = tiny_torch_model("gpt2")
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    (tmp_path / "shift.yaml").write_text("chain:\n  - editor: toy-shift\n    amount: 0.01\n")
    (tmp_path / "notes.yaml").write_text("chain:\n  - editor: toy-notes\n")
    (tmp_path / "qa.json").write_text(json.dumps([
        {"question": "The Eiffel Tower is located in the city of", "new_answer": ["Rome", "Roma"], "old_answer": "Paris",
         "subject": "The Eiffel Tower", "unrelated": [{"question": "The Colosseum is in", "answer": "Rome"}]},
        {"question": "Toko Yasuda plays the instrument", "new_answer": "piano", "paraphrases": ["Toko Yasuda plays"]},
        {"question": "Berlin is a city in", "new_answer": "Peru"},
    ]))
    return tmp_path


def invoke(*args):
    get_host().register_commands(cli)  # what `easyetcon` does at start-up
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_eval_command_writes_json_markdown_and_plots_then_compares(cli_workspace):
    w = cli_workspace
    for name in ("shift", "notes"):
        result = invoke("eval", "--model", w / "model", "--chain", w / f"{name}.yaml", "--data", w / "qa.json",
                        "--protocol", "teacher-forced", "--protocol", "generation", "--schedule", "every:2",
                        "--max-new-tokens", "4", "--out", w / name)
        assert result.exit_code == 0, result.output
        data = json.loads((w / name / "results.json").read_text())
        assert [p["edits"] for p in data["curve"]] == [2, 3]
        assert data["metadata"]["requests"] == 3 and set(data["final"]) == {"teacher-forced@1", "generation@1"}
        assert (w / name / "retention.png").read_bytes()[:8] == PNG_MAGIC
    png, md = compare_runs([w / "shift", w / "notes"], w / "cmp")
    comparison = md.read_text()
    assert png.read_bytes()[:8] == PNG_MAGIC and "## generation@1" in comparison
    assert "| toy-shift | 3 |" in comparison.split("## generation@1")[1]  # a row per run, with its edits
    shown = invoke("compare-runs", w / "shift", w / "notes", "--label", "A", "--label", "B", "--out", w / "cmp2")
    assert shown.exit_code == 0 and "| A | 3 |" in shown.output and "| B | 3 |" in shown.output


def test_eval_command_reports_bad_input_clearly(cli_workspace):
    w = cli_workspace
    (w / "odd.json").write_text(json.dumps([{"foo": 1, "bar": 2}]))
    result = invoke("eval", "--model", w / "model", "--chain", w / "shift.yaml", "--data", w / "odd.json", "--out", w / "x")
    assert result.exit_code == 2 and "record 0 has keys [bar, foo]" in result.output
    bad_schedule = invoke("eval", "--model", w / "model", "--chain", w / "shift.yaml", "--data", w / "qa.json", "--schedule", "often", "--out", w / "y")
    assert bad_schedule.exit_code == 2 and "every:N" in bad_schedule.output
    limited = invoke("eval", "--model", w / "model", "--chain", w / "shift.yaml", "--data", w / "qa.json", "--limit", "1",
                     "--protocol", "teacher-forced", "--out", w / "z")
    assert limited.exit_code == 0, limited.output
    assert json.loads((w / "z" / "results.json").read_text())["edits"] == 1
