"""docs/cli.md shows each core command's ``--help`` as the command prints it: the page cannot drift."""

import copy
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from easyetcon.cli import cli
from easyetcon.plugins import PluginHost, set_host

PAGE = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def help_blocks() -> dict[str, str]:
    """``{"edit": text, ...}``: every ```text block of the page that is a command's help."""
    blocks = {}
    for block in re.findall(r"```text\n(.*?)```", PAGE.read_text(encoding="utf-8"), flags=re.S):
        block = block.removeprefix("$ easyetcon --help\n")
        match = re.match(r"Usage: easyetcon ([\w-]+)?", block)
        if match:
            blocks[match.group(1) or ""] = block
    return blocks


@pytest.fixture
def core_only(monkeypatch):
    """The core alone: the page documents the commands every install has."""
    monkeypatch.setenv("EASYETCON_BLOCK_PLUGINS", "*")
    set_host(PluginHost())
    yield
    set_host(None)


def core_cli():
    """``cli`` with the core's commands only (other tests may have added plugins' commands to it)."""
    core = copy.copy(cli)
    core.commands = {name: command for name, command in cli.commands.items() if command.callback.__module__ == "easyetcon.cli"}
    return core


@pytest.mark.parametrize("command", sorted(help_blocks()))
def test_the_page_shows_the_help_each_command_prints(core_only, command):
    args = [command, "--help"] if command else ["--help"]
    printed = CliRunner().invoke(core_cli(), args, terminal_width=80, prog_name="easyetcon").output
    assert printed.rstrip() == help_blocks()[command].rstrip(), f"update docs/cli.md for `easyetcon {command} --help`"


def test_every_core_command_has_its_help_on_the_page(core_only):
    assert set(help_blocks()) == {"", *core_cli().commands}
