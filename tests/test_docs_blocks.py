"""Every code block of README.md and docs/*.md is checked here, so a snippet cannot
drift from the code. One test per block, named after its file and line.

How a block is checked depends on its language, the first word of its info string:

``python``
    Executed. The blocks of one page run in order in one namespace and one working folder, so a
    page may build on its earlier blocks and on the files they write. A block whose first line
    starts with ``>>>`` is a doctest (ELLIPSIS on). Functions marked ``@hookimpl`` are loaded
    as a plugin beside the installed ones and the registry is built, so a misspelled hook, a
    wrong argument or a refused ``register(...)`` call fails; that host then stays the
    process-wide host for the page's later blocks, as if the plugin were installed.
``yaml``
    A chain spec, validated by ``easyetcon.spec.load_chain_spec`` against the installed editors.
``json``
    Edit requests or a dataset file, read by ``easyetcon.dataset_files.load_requests_from``
    (one object is read as a list of one).
``toml``
    An entry-point table: every entry point names a module that can be imported.
``bash``
    Every ``easyetcon ...`` command runs in the page's folder and must exit with 0.
    ``python benchmarks/...`` and ``python -m easyetcon_world.build_default`` commands, and
    every command of a ``parse-only`` block, only have their arguments parsed by the real
    parser (click's or the script's argparse); ``accelerate launch ... -m easyetcon.cli ...``
    (parse-only) by accelerate's parser and the CLI's. Any other command needs ``skip-test``.
``text``
    Output samples, file listings and equations: not code, not collected.

After the language the info string may carry markers, which MyST and GitHub ignore:

``file=NAME``
    The block is also written to ``NAME`` in the page's folder (a chain spec, a request file,
    a plugin module that a later block imports).
``expect-error``
    (yaml) The spec must be refused. When the page's next block is a ``text`` block with an
    ``error: chain spec`` line, its ``- ...`` lines must be the problems reported, with the
    example plugin as the only plugin installed (as the page says).
``parse-only: REASON``
    (bash) The commands are parsed, not run; files they name need not exist.
``skip-test: REASON``
    Not checked; the test is reported as skipped with REASON. Keep these few.
"""

from __future__ import annotations

import argparse
import copy
import doctest
import importlib
import inspect
import json
import os
import re
import runpy
import shlex
import sys
import tomllib
import types
from dataclasses import dataclass, field
from importlib import metadata, util
from pathlib import Path
from typing import Any
from unittest import mock

import click
import pytest
from click.testing import CliRunner
from markdown_it import MarkdownIt

from easyetcon.cli import cli
from easyetcon.errors import ConfigError
from easyetcon.plugins import ENTRY_POINT_GROUP, PluginHost, get_host, set_host

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
CHECKED_LANGUAGES = {"python", "yaml", "json", "toml", *SHELL_LANGUAGES}
NOT_CODE = {"text"}
EXAMPLE_PLUGIN = "example_editor"

#: Blocks another test already runs as written: (page, section heading) -> that test.
COVERED_ELSEWHERE = {("README.md", "Use"): "covered by tests/test_readme.py"}

#: Names a page's sketch leaves to the reader, and what stands in for them here. docs/hooks.md
#: registers "your" editor; the example plugin's editor and config stand in, so the
#: ``register(...)`` call itself is checked.
STAND_INS = {
    "docs/hooks.md": {
        "MyEditor": ("easyetcon_example_editor", "FineTuneLast"),
        "MyConfig": ("easyetcon_example_editor", "FineTuneLastConfig"),
    },
}

MARKER = re.compile(r"(?P<key>skip-test|parse-only):\s*(?P<reason>.+)$")


# ---------------------------------------------------------------------------------------------
# Collecting the blocks
# ---------------------------------------------------------------------------------------------


@dataclass
class Block:
    page: str  # "README.md", "docs/chains.md"
    line: int  # the line of the opening fence, 1-based
    language: str
    text: str
    section: str  # the nearest "## " heading above it
    file: str | None = None
    expect_error: bool = False
    skip: str | None = None
    parse_only: str | None = None

    @property
    def not_checked_reason(self) -> str | None:
        """Why this test leaves the block alone: another test runs it, or it says skip-test."""
        return COVERED_ELSEWHERE.get((self.page, self.section)) or self.skip

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def parse_info(info: str) -> dict[str, Any]:
    """``python file=x.py skip-test: needs a GPU`` -> language and markers."""
    language, _, rest = info.strip().partition(" ")
    markers: dict[str, Any] = {"language": language, "file": None, "expect_error": False, "skip": None, "parse_only": None}
    match = MARKER.search(rest)
    if match:
        markers["skip" if match["key"] == "skip-test" else "parse_only"] = match["reason"].strip()
        rest = rest[: match.start()]
    for word in rest.split():
        if word.startswith("file="):
            markers["file"] = word.removeprefix("file=")
        elif word == "expect-error":
            markers["expect_error"] = True
        else:
            raise ValueError(f"unknown marker {word!r} in the info string {info!r}")
    return markers


def page_blocks(path: Path) -> list[Block]:
    """Every code block of a page, as MyST's parser (markdown-it) sees it; directives
    (```` ```{eval-rst} ````) left out. An indented code block has no language."""
    name = path.relative_to(ROOT).as_posix()
    blocks, section, tokens = [], "", MarkdownIt("commonmark").parse(path.read_text(encoding="utf-8"))
    for index, token in enumerate(tokens):
        if token.type == "heading_open" and token.tag == "h2":
            section = tokens[index + 1].content.strip()
        if token.type not in ("fence", "code_block") or token.info.strip().startswith("{"):
            continue
        blocks.append(Block(name, token.map[0] + 1, text=token.content, section=section, **parse_info(token.info)))
    return blocks


ALL_BLOCKS = [block for page in PAGES for block in page_blocks(page)]
CODE_BLOCKS = [block for block in ALL_BLOCKS if block.language not in NOT_CODE]


def test_every_block_says_what_it_is():
    """An untagged block would be neither checked nor knowingly skipped."""
    unknown = [f"{b.id} ({b.language or 'no language'})" for b in ALL_BLOCKS if b.language not in CHECKED_LANGUAGES | NOT_CODE]
    assert not unknown, f"give these blocks a language (`text` for output, listings, equations): {unknown}"


def test_the_markers_are_used_where_they_mean_something():
    misplaced = [b.id for b in ALL_BLOCKS if (b.parse_only and b.language not in SHELL_LANGUAGES) or (b.expect_error and b.language != "yaml")]
    assert not misplaced, f"parse-only is for shell blocks, expect-error for yaml chain specs: {misplaced}"


# ---------------------------------------------------------------------------------------------
# One page's run: namespace, folder, host
# ---------------------------------------------------------------------------------------------


@dataclass
class PageRun:
    page: str
    folder: Path
    namespace: dict[str, Any] = field(default_factory=dict)
    done: dict[int, BaseException | None] = field(default_factory=dict)  # block line -> error
    plugins: list[types.ModuleType] = field(default_factory=list)
    imported: set[str] = field(default_factory=set)
    request: Any = None  # the running test's, for the fixtures of a test a page shows


class Pages:
    """Runs each page's blocks in order, once, however the tests are selected."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.runs: dict[str, PageRun] = {}
        self.current: str | None = None

    def run(self, page: str) -> PageRun:
        if page not in self.runs:
            folder = self.root / page.replace("/", "_").replace(".", "_")
            folder.mkdir()
            # pages name the repository's files as seen from its root
            for shared in ("examples", "benchmarks", "plugins"):
                (folder / shared).symlink_to(ROOT / shared, target_is_directory=True)
            self.runs[page] = PageRun(page, folder, namespace={"__name__": f"docs_{page}"})
            for name, (module, attribute) in STAND_INS.get(page, {}).items():
                self.runs[page].namespace[name] = getattr(importlib.import_module(module), attribute)
        return self.runs[page]

    def check(self, block: Block, request: Any) -> None:
        """Run ``block``, after the page's earlier blocks if they have not run yet."""
        run = self.run(block.page)
        run.request = request
        if self.current != block.page:  # a page starts with the installed plugins only
            self.current = block.page
            set_host(PluginHost(plugins=run.plugins) if run.plugins else None)
        earlier_blocks = [b for b in CODE_BLOCKS if b.page == block.page and b.line < block.line]
        for earlier in (b for b in earlier_blocks if b.language in CHECKS and not b.not_checked_reason):
            if earlier.line not in run.done:
                run.done[earlier.line] = self._run(earlier, run)
            if run.done[earlier.line] is not None:
                pytest.skip(f"the page's earlier block {earlier.id} failed")
        error = self._run(block, run)
        run.done[block.line] = error
        if error is not None:
            raise error

    def _run(self, block: Block, run: PageRun) -> BaseException | None:
        cwd = Path.cwd()
        os.chdir(run.folder)
        sys.path.insert(0, str(run.folder))
        modules_before = set(sys.modules)
        try:
            if block.file:
                (run.folder / block.file).parent.mkdir(parents=True, exist_ok=True)
                (run.folder / block.file).write_text(block.text, encoding="utf-8")
            CHECKS[block.language](block, run)
        except BaseException as error:  # noqa: BLE001 - reported by the block's own test
            if isinstance(error, KeyboardInterrupt):
                raise
            return error
        finally:
            os.chdir(cwd)
            sys.path.remove(str(run.folder))
            # a module a block wrote into the page's folder (file=my_plugin.py) is the page's own
            run.imported |= {
                name for name in set(sys.modules) - modules_before
                if str(getattr(sys.modules[name], "__file__", "") or "").startswith(str(run.folder))
            }
        return None

    def close(self) -> None:
        for run in self.runs.values():
            for name in run.imported:
                sys.modules.pop(name, None)
        set_host(None)


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EASYETCON_CACHE", str(tmp_path_factory.mktemp("cache")))
        patch.delenv("EASYETCON_BLOCK_PLUGINS", raising=False)
        patch.setenv("COLUMNS", "100")
        runner = Pages(tmp_path_factory.mktemp("pages"))
        yield runner
        runner.close()


def block_id(block: Block) -> str:
    return f"{block.id}-{block.language}"


@pytest.mark.parametrize("block", CODE_BLOCKS, ids=block_id)
def test_the_block_runs_as_written(pages, block, request):
    if block.not_checked_reason:
        pytest.skip(block.not_checked_reason)
    if block.language not in CHECKS:
        pytest.fail(f"no check for a block tagged {block.language!r}: tag it (`text` for output, listings, equations)")
    pages.check(block, request)


# ---------------------------------------------------------------------------------------------
# The checks, by language
# ---------------------------------------------------------------------------------------------


def check_python(block: Block, run: PageRun) -> None:
    namespace = run.namespace
    before = {name: id(value) for name, value in namespace.items()}
    filename = str(ROOT / block.page)  # tracebacks show the page's own lines
    if block.text.lstrip().startswith(">>>"):
        test = doctest.DocTestParser().get_doctest(block.text, namespace, block.id, filename, block.line)
        output: list[str] = []
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        runner.run(test, out=output.append, clear_globs=False)
        if runner.failures:
            raise AssertionError("".join(output))
    else:
        exec(compile("\n" * block.line + block.text, filename, "exec"), namespace)
    defined = {name: value for name, value in namespace.items() if before.get(name) != id(value)}
    hook_functions = {name: value for name, value in defined.items() if hasattr(value, "easyetcon_impl")}
    if hook_functions:
        install_as_plugin(hook_functions, block, run)
    for name, function in defined.items():
        if name.startswith("test_") and callable(function):  # a test a page shows asks for fixtures that exist
            for fixture in inspect.signature(function).parameters:
                run.request.getfixturevalue(fixture)


def install_as_plugin(functions: dict[str, Any], block: Block, run: PageRun) -> None:
    """Load the block's hook implementations as a plugin beside the installed ones and build
    the registry (every ``register(...)`` call runs); the page then keeps that host."""
    module = types.ModuleType(f"docs_block_{block.line}")
    module.__dict__.update(functions)
    host = PluginHost(plugins=[*run.plugins, module])  # pluggy checks hook names and arguments
    host.registry
    host.register_commands(click.Group())
    run.plugins.append(module)
    set_host(host)


def check_yaml(block: Block, run: PageRun) -> None:
    from easyetcon.spec import load_chain_spec

    path = run.folder / block.file if block.file else run.folder / ".blocks" / f"{block.line}.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(block.text, encoding="utf-8")
    if not block.expect_error:
        load_chain_spec(path)
        return
    with pytest.raises(ConfigError) as refused:
        load_chain_spec(path)
    listed = problems_shown_after(block)
    if listed is not None:
        with pytest.raises(ConfigError) as refused_here:
            load_chain_spec(path, host=example_plugin_only())
        assert refused_here.value.problems == listed, "update the error the page shows after this spec"
    assert refused.value.problems


def problems_shown_after(block: Block) -> list[str] | None:
    page = [b for b in ALL_BLOCKS if b.page == block.page]
    following = page[page.index(block) + 1] if page.index(block) + 1 < len(page) else None
    if following is None or following.language != "text" or "error: chain spec" not in following.text:
        return None
    return [line.strip().removeprefix("- ") for line in following.text.splitlines() if line.strip().startswith("- ")]


def example_plugin_only() -> PluginHost:
    names = {entry_point.name for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    return PluginHost(blocked=names - {EXAMPLE_PLUGIN})


def check_json(block: Block, run: PageRun) -> None:
    from easyetcon.dataset_files import load_requests_from

    records = json.loads(block.text)
    if isinstance(records, dict) and "requests" not in records:
        records = [records]
    path = run.folder / ".blocks" / f"{block.line}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(records), encoding="utf-8")
    assert load_requests_from(path)


def check_toml(block: Block, run: PageRun) -> None:
    table = tomllib.loads(block.text)
    entry_points = table["project"]["entry-points"][ENTRY_POINT_GROUP]
    missing = [value for value in entry_points.values() if util.find_spec(value.split(":")[0]) is None]
    assert not missing, f"entry points name modules that do not exist: {missing}"


# ---- shell -----------------------------------------------------------------------------------


def shell_commands(text: str) -> list[list[str]]:
    """The block's commands as argument lists: continuations joined, comments and leading
    ``VAR=value`` assignments dropped."""
    commands = []
    for line in text.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
            words.pop(0)
        if words:
            commands.append(words)
    return commands


def check_shell(block: Block, run: PageRun) -> None:
    commands = shell_commands(block.text)
    assert commands, "a shell block without a command"
    for words in commands:
        if words[0] == "easyetcon":
            if block.parse_only:
                parse_easyetcon(words[1:])
            else:
                run_easyetcon(words[1:])
        elif words[0] == "python" and words[1:2] and words[1].startswith("benchmarks/") and words[1].endswith(".py"):
            assert block.parse_only, f"`{shlex.join(words)}` runs a benchmark: mark the block parse-only"
            parse_script(ROOT / words[1], words[2:])
        elif words[:3] == ["python", "-m", "easyetcon_world.build_default"]:
            assert block.parse_only, f"`{shlex.join(words)}` trains a model: mark the block parse-only"
            parse_script("easyetcon_world.build_default", words[3:])
        elif words[:2] == ["accelerate", "launch"]:
            assert block.parse_only, f"`{shlex.join(words)}` starts several processes: mark the block parse-only"
            parse_accelerate_launch(words[2:])
        else:
            raise AssertionError(f"this test cannot check `{shlex.join(words)}`: mark the block skip-test: REASON")


def easyetcon_command() -> click.Group:
    """``easyetcon`` with the commands of the current host's plugins, as the script builds it."""
    group = copy.copy(cli)
    group.commands = {name: command for name, command in cli.commands.items() if command.callback.__module__ == "easyetcon.cli"}
    get_host().register_commands(group)
    return group


def run_easyetcon(args: list[str]) -> None:
    result = CliRunner().invoke(easyetcon_command(), args, prog_name="easyetcon", terminal_width=100)
    assert result.exit_code == 0, f"easyetcon {shlex.join(args)} exited {result.exit_code}:\n{result.output}\n{result.exception!r}"


def parse_easyetcon(args: list[str]) -> None:
    """Parse like click does before invoking, down to the last subcommand; a path need not exist
    (the commands that would make it are not run)."""
    command: click.Command = lenient_paths(easyetcon_command())
    context = command.make_context("easyetcon", list(args))
    while isinstance(command, click.Group):
        rest = [*context._protected_args, *context.args]  # as click's Group.invoke reads them
        name, command, rest = command.resolve_command(context, rest)
        command = lenient_paths(command)
        context = command.make_context(name, rest, parent=context)


def parse_accelerate_launch(args: list[str]) -> None:
    """``accelerate launch [flags] -m easyetcon.cli ARGS``: the flags by accelerate's own parser,
    ARGS as an ``easyetcon`` command."""
    from accelerate.commands.launch import launch_command_parser

    launch = launch_command_parser().parse_args(args)
    assert launch.module and launch.training_script == "easyetcon.cli", (
        f"accelerate launch runs {launch.training_script!r}; the docs launch `-m easyetcon.cli`"
    )
    parse_easyetcon(launch.training_script_args)


def lenient_paths(command: click.Command) -> click.Command:
    """A copy of ``command`` whose path options and arguments accept paths that do not exist."""
    command = copy.copy(command)
    command.params = [copy.copy(param) for param in command.params]
    for param in command.params:
        if isinstance(param.type, click.Path):
            param.type = copy.copy(param.type)
            param.type.exists = False
    return command


class ArgumentsParsed(Exception):
    """Raised in place of running a script once its arguments are parsed."""


def parse_script(script: Path | str, args: list[str]) -> None:
    """Run ``script`` (a file, or a module name) only until argparse has read ``args``."""
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, arguments=None, namespace=None):
        original(self, arguments, namespace)
        raise ArgumentsParsed

    name = str(script)
    with mock.patch.object(argparse.ArgumentParser, "parse_args", parse_then_stop), mock.patch.object(sys, "argv", [name, *args]):
        try:
            if isinstance(script, Path):
                runpy.run_path(name, run_name="__main__")
            else:
                runpy.run_module(name, run_name="__main__", alter_sys=True)
        except ArgumentsParsed:
            return
        except SystemExit as exit:
            raise AssertionError(f"{name} refused the arguments {args} (exit {exit.code})") from None
    raise AssertionError(f"{name} finished without parsing its arguments")


CHECKS = {"python": check_python, "yaml": check_yaml, "json": check_json, "toml": check_toml, **dict.fromkeys(SHELL_LANGUAGES, check_shell)}


def test_the_command_line_page_names_every_installed_command():
    """docs/cli.md shows the core's help; its text must still name every command an
    installation with the built-in plugins has."""
    set_host(None)
    try:
        commands = easyetcon_command().commands
    finally:
        set_host(None)
    page = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    missing = sorted(name for name in commands if f"`{name}`" not in page)
    assert not missing, f"docs/cli.md does not name these commands: {missing}"
