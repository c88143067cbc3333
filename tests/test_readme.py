"""The README's "Use" section runs as written: its commands, its chain file and its Python."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from easyetcon.plugins import set_host

README = Path(__file__).resolve().parents[1] / "README.md"


def use_section_blocks() -> dict[str, list[str]]:
    """``{"bash": [...], "yaml": [...], "json": [...], "python": [...]}`` of the Use section."""
    section = README.read_text(encoding="utf-8").split("\n## Use\n", 1)[1].split("\n## ", 1)[0]
    blocks: dict[str, list[str]] = {}
    for language, body in re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S):
        blocks.setdefault(language, []).append(body)
    return blocks


def commands(block: str) -> list[list[str]]:
    lines = [line.split(" #", 1)[0].strip() for line in block.splitlines()]
    return [shlex.split(line)[1:] for line in lines if line.startswith("easyetcon ")]


@pytest.fixture
def in_empty_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EASYETCON_CACHE", str(tmp_path / "cache"))
    set_host(None)  # the installed plugins, as a user has them
    yield tmp_path
    set_host(None)


def test_the_use_section_runs_as_written(in_empty_folder, capsys):
    blocks = use_section_blocks()
    assert set(blocks) == {"bash", "yaml", "json", "python"}
    (in_empty_folder / "chain.yaml").write_text(blocks["yaml"][0])
    for args in commands(blocks["bash"][0]):  # the installed `easyetcon` command, as a user runs it
        result = subprocess.run([sys.executable, "-c", "from easyetcon.cli import main; main()", *args],
                                capture_output=True, text=True, env={**os.environ, "COLUMNS": "100"}, timeout=600)
        assert result.returncode == 0, f"easyetcon {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    assert "undid 3 step(s)" in result.stdout  # the last command: everything the edit applied
    namespace: dict = {}
    exec(compile(blocks["python"][0], "README.md (Use)", "exec"), namespace)
    requests = namespace["requests"]
    assert requests[0].target_new in capsys.readouterr().out  # the edited model says the new answer
    from easyetcon import load_model

    assert namespace["model"].state_hash() == load_model("default").state_hash()  # and the undo is bit-exact


def test_the_request_example_is_a_valid_request_file(in_empty_folder):
    from easyetcon.requests import load_requests

    (in_empty_folder / "example.json").write_text(use_section_blocks()["json"][0])
    assert load_requests(in_empty_folder / "example.json")[0].target_new == "Rome"
