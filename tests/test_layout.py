"""The plugin design, checked on the source: plugins import the core, never each other, and the core
never names a built-in plugin."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = sorted(path for path in (ROOT / "plugins").iterdir() if (path / "__init__.py").is_file())


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (inside functions too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize("plugin", PLUGINS, ids=lambda path: path.name)
def test_a_built_in_plugin_imports_no_other_plugin(plugin):
    others = {path.name for path in PLUGINS} - {plugin.name}
    crossing = sorted(
        f"{source.relative_to(ROOT)} imports {module}"
        for source in plugin.rglob("*.py")
        for module in imported_modules(source)
        if module.split(".")[0] in others
    )
    assert not crossing, crossing


def test_the_core_imports_no_built_in_plugin():
    plugins = {path.name for path in PLUGINS}
    crossing = sorted(
        f"{source.relative_to(ROOT)} imports {module}"
        for source in (ROOT / "easyetcon").rglob("*.py")
        for module in imported_modules(source)
        if module.split(".")[0] in plugins
    )
    assert not crossing, crossing


def test_a_locate_then_edit_editor_on_the_shared_parts_is_short():
    """EMMET, docstring and options included, is the proof that the shared parts carry a new editor."""
    lines = (ROOT / "plugins" / "easyetcon_intrinsic" / "emmet.py").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 80
