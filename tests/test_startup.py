"""`easyetcon --help` and `easyetcon plugins` load every installed plugin but not torch (so they
start in a fraction of a second): editors, metrics and adapters are registered by reference."""

import subprocess
import sys

SCRIPT = """
import sys
sys.argv = ["easyetcon", *sys.argv[1:]]
from easyetcon.cli import main
try:
    main()
except SystemExit:
    pass
heavy = sorted(name for name in ("torch", "transformers", "trl", "peft", "datasets") if name in sys.modules)
print("HEAVY", ",".join(heavy), file=sys.stderr)
"""


def heavy_imports(*arguments: str) -> tuple[str, str]:
    result = subprocess.run([sys.executable, "-c", SCRIPT, *arguments], capture_output=True, text=True, timeout=120)
    return result.stdout, result.stderr.rsplit("HEAVY", 1)[1].strip()


def test_help_lists_the_plugins_commands_without_importing_torch():
    out, heavy = heavy_imports("--help")
    assert "eval" in out and "world" in out  # the plugins' commands are there
    assert heavy == "", f"`easyetcon --help` imported {heavy}; import it inside the function that needs it"


def test_plugins_lists_every_builtin_without_importing_torch():
    out, heavy = heavy_imports("plugins")
    for name in ("grace", "retrieval-memory", "lora-merge", "ft-m", "rome", "alphaedit", "tpsft", "grpo", "exact-match", "llama"):
        assert name in out
    assert heavy == "", f"`easyetcon plugins` imported {heavy}; register the object by reference ('module:attribute')"
