"""What the core commands print: the journal table at 80 columns, Ctrl-C, and INFO lines."""

import logging
import shlex

import pytest
from click.testing import CliRunner
from rich.console import Console

from easyetcon import cli as cli_module
from easyetcon.cli import INTERRUPTED_EXIT_CODE, cli, request_ids_cell
from easyetcon.hookspecs import hookimpl
from easyetcon.requests import save_requests
from easyetcon.testing import tiny_requests, tiny_torch_model

LONG_IDS = [f"counterfact-case-{i:06d}" for i in range(10)]


@pytest.fixture
def workspace(tmp_path, toy_host):
    model, tokenizer = tiny_torch_model("llama")
    model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    base = tiny_requests()
    requests = [base[i % len(base)].model_copy(update={"case_id": case_id}) for i, case_id in enumerate(LONG_IDS)]
    save_requests(requests, tmp_path / "requests.json")
    (tmp_path / "chain.yaml").write_text(
        f"model: {tmp_path / 'base'}\nmode: sequential\nbatch_size: 5\nchain:\n"
        "  - editor: toy-notes\n    label: notes-for-every-subject\n"
        "  - editor: toy-shift\n    label: shift-the-second-layer\n    amount: 0.01\n"
    )
    return tmp_path


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_journal_table_keeps_names_and_request_ids_whole_at_80_columns(workspace, monkeypatch):
    edited = run("edit", "--chain", workspace / "chain.yaml", "--data", workspace / "requests.json", "--out", workspace / "run")
    assert edited.exit_code == 0, edited.output
    monkeypatch.setattr(cli_module, "console", Console(width=80, force_terminal=False))
    shown = run("journal", workspace / "run")
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    words = {word.strip(",│") for line in lines for word in line.split()}
    for name in ("notes-for-every-subject", "shift-the-second-layer", "toy-notes", "toy-shift", "external-memory", "applied"):
        assert name in words, f"{name!r} is cut or broken in:\n{shown.output}"
    for case_id in LONG_IDS:  # two groups of five: every id is listed, none is cut
        assert case_id in words, f"{case_id!r} is cut or broken in:\n{shown.output}"


def test_a_large_batch_lists_its_first_ids_whole_and_counts_the_rest():
    ids = [f"request-{i}" for i in range(20)]
    cell = request_ids_cell(ids)
    assert cell.startswith("request-0, request-1,") and "request-4," in cell and "request-5" not in cell
    assert "+15 more" in cell and "--json" in cell
    assert request_ids_cell(ids[:3]) == "request-0, request-1, request-2"


class CtrlC:
    """Raises KeyboardInterrupt before the second step runs, as a user pressing Ctrl-C."""

    @hookimpl
    def easyetcon_before_step(self, step):
        if step.index == 1:
            raise KeyboardInterrupt


def test_ctrl_c_during_edit_says_what_happened_and_how_to_start_again(workspace, toy_host):
    toy_host.register(CtrlC(), name="ctrl-c")
    out = workspace / "run"
    args = ["edit", "--chain", workspace / "chain.yaml", "--data", workspace / "requests.json", "--out", out]
    result = run(*args)
    assert result.exit_code == INTERRUPTED_EXIT_CODE, result.output
    assert "Traceback" not in result.output and "Aborted" not in result.output
    message = next(line for line in result.output.splitlines() if line.startswith("interrupted:"))
    assert "rolled back" in message and "was not written" in message
    assert message.endswith(shlex.join(["easyetcon", *map(str, args)]))  # the exact command to paste
    assert not out.exists()


def test_info_lines_of_easyetcon_loggers_reach_the_user(toy_host):
    @cli.command("say-hello-for-test")
    def say_hello() -> None:
        logging.getLogger("easyetcon.intrinsic").info("layer: trace chose layer 1")
        logging.getLogger("some.library").info("not for the user")

    try:
        result = run("say-hello-for-test")
    finally:
        cli.commands.pop("say-hello-for-test")
    assert result.exit_code == 0, result.output
    assert "layer: trace chose layer 1" in result.output and "not for the user" not in result.output
